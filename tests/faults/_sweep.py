"""Deterministic interrupts at every point of a call, and the all-or-nothing check.

A real Ctrl-C reaches Python code where CPython checks for a pending signal: at the entry
of a Python function, after a call to a C function returns, and at a loop's back edge.
A timer cannot choose that moment; :class:`InterruptAt` makes it exact. It is a profile
function (``sys.setprofile``) that counts the ``call`` and ``c_return`` events of the
calling thread (torchinit's frames, torch's and the standard library's alike) and raises
``KeyboardInterrupt`` at event ``at``, as a signal handler would there. Sweeping ``at``
over ``1 .. events + 1`` interrupts a call at each of those points, then once after it
returned. The helper threads are not profiled: they never receive a KeyboardInterrupt,
as with a real Ctrl-C. (A ``sys.settrace`` line event is no such point: raising there
can leave a ``with lock:`` block without releasing the lock, which no signal can do.)

``TORCHINIT_FUZZ=large`` (``make fuzz``) sweeps every point; ``make test`` a fixed,
evenly spread subset of :data:`POINTS` points per call, always with the first and the last.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

import torch

LARGE = os.environ.get("TORCHINIT_FUZZ", "").strip().lower() == "large"
#: Interrupt points per swept call in ``make test`` (all of them under ``make fuzz``).
POINTS = 40


class InterruptAt:
    """A profile function raising ``KeyboardInterrupt`` at the ``at``-th call or c_return event (never if
    ``at < 1``)."""

    def __init__(self, at: int) -> None:
        self.at, self.events = at, 0

    def __call__(self, frame: Any, event: str, arg: Any) -> None:
        if event in ("call", "c_return"):
            self.events += 1
            if self.events == self.at:
                raise KeyboardInterrupt(f"interrupt at event {self.at}")


def traced(call: Callable[[], Any], at: int) -> bool:
    """Run ``call`` with an interrupt at event ``at``; True if a KeyboardInterrupt reached us."""
    tracer = InterruptAt(at)
    previous = sys.getprofile()
    sys.setprofile(tracer)
    try:
        call()
    except KeyboardInterrupt:
        return True
    finally:
        sys.setprofile(previous)
    return False


def event_count(call: Callable[[], Any]) -> int:
    """How many call and c_return events ``call`` runs in this thread."""
    tracer = InterruptAt(0)
    previous = sys.getprofile()
    sys.setprofile(tracer)
    try:
        call()
    finally:
        sys.setprofile(previous)
    return tracer.events


def points(events: int, budget: int = POINTS) -> list[int]:
    """Where to interrupt: every event and one past the end under ``make fuzz``, else ``budget`` of them, evenly."""
    last = events + 1
    if LARGE or last <= budget:
        return list(range(1, last + 1))
    return sorted({1 + round(i * (last - 1) / (budget - 1)) for i in range(budget)})


def sweep(make: Callable[[], Any], call: Callable[[Any], Any], state: Callable[[Any], Any],
          same: Callable[[Any, Any], bool], settle: float = 0.0, budget: int = POINTS) -> dict[str, int]:
    """Interrupt ``call(make())`` at every chosen point; the target must be unchanged or complete.

    ``state(target)`` snapshots what the call may write, ``same(a, b)`` compares two snapshots
    bit for bit. The complete state is the one an uninterrupted call leaves (``make`` must give
    the same target and RNG state each time). ``settle`` seconds after an interrupted call, the
    state is compared again: nothing may write after a call has raised. Returns counts of
    interrupted, untouched and complete runs; a run that is neither fails the assertion, as does one
    that leaves the thread's grad mode or dispatch-mode stack changed.
    """
    target = make()
    call(target)
    complete = state(target)
    counts = {"interrupted": 0, "untouched": 0, "complete": 0}
    warm = make()
    for at in points(event_count(lambda: call(warm))):
        target = make()
        before = state(target)
        modes = thread_modes()
        interrupted = traced(functools.partial(call, target), at)
        now = thread_modes()
        assert now == modes, f"grad mode or dispatch modes changed (interrupt at event {at}): {modes} -> {now}"
        after = state(target)
        if interrupted and settle:
            threading.Event().wait(settle)
            assert same(state(target), after), f"written after the call raised (interrupt at event {at})"
        untouched, done = same(after, before), same(after, complete)
        assert untouched or done, f"half-written: interrupted at event {at} of the call"
        counts["interrupted"] += interrupted
        counts["untouched"] += untouched and not done
        counts["complete"] += done
    return counts


def thread_modes() -> tuple[Any, ...]:
    """The grad mode, the dispatch and torch-function mode stacks, and torchinit's own per-thread state (its
    warnings not silenced, no open recording, no patch installed).

    Not torch's Python-level record of a dispatch mode being active (``is_in_torch_dispatch_mode``):
    ``TorchDispatchMode.__enter__`` sets it in Python before it pushes the mode, so an interrupt in
    between leaves it set with no mode pushed, which no caller can repair (torch's code, not ours).
    """
    from torchinit._util.warn import _QUIET
    from torchinit.model.deferral import _PATCH
    from torchinit.recording.threads import thread_recordings

    functions = tuple(id(torch._C._get_function_stack_at(i)) for i in range(torch._C._len_torch_function_stack()))
    torchinits = _QUIET.get(), len(thread_recordings()), _PATCH["depth"]  # warnings on, no recording or patch left
    return torch.is_grad_enabled(), torch._C._len_torch_dispatch_stack(), functions, torchinits


def tensor_state(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone()


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-for-bit equality (NaNs and signed zeros included)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point() or a.is_complex():
        a = torch.view_as_real(a) if a.is_complex() else a
        b = torch.view_as_real(b) if b.is_complex() else b
        width = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        return torch.equal(a.contiguous().view(width), b.contiguous().view(width))
    return torch.equal(a, b)
