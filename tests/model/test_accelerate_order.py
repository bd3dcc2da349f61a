"""deferred() never makes accelerate's patching worse, in any open/close order and across threads.

accelerate's ``init_empty_weights()`` replaces ``nn.Module.register_parameter`` (and, with ``include_buffers``,
``register_buffer`` and ``torch.empty/zeros/ones/full``) process-wide, and on exit puts back what it found on
entry. deferred() replaces none of these (it uses torch's global parameter-registration hook, installed once and
inert outside a context), so what a neutral thread gets from ``nn.Linear(2, 2)`` at every step, and after all
contexts have closed, is exactly what the same steps give with accelerate alone.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from itertools import permutations
from typing import Any

import pytest
import torch
from torch import nn

import torchinit as ti

accelerate = pytest.importorskip("accelerate")

Step = tuple[str, str]  # (context label, "enter" or "exit")


def _orders(a: str, b: str) -> list[list[Step]]:
    """The four ways two contexts open and close: either opens first, either closes first."""
    return [[(first, "enter"), (second, "enter"), (closing, "exit"), (other, "exit")]
            for first, second in permutations((a, b)) for closing, other in permutations((a, b))]  # fmt: skip


class _Worker:
    """A thread that runs the callables it is given, one at a time, and hands back their results."""

    def __init__(self) -> None:
        self._calls: queue.Queue = queue.Queue()
        self._results: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (call := self._calls.get()) is not None:
            try:
                self._results.put((True, call()))
            except BaseException as err:
                self._results.put((False, err))

    def run(self, call: Callable[[], Any]) -> Any:
        self._calls.put(call)
        ok, value = self._results.get(timeout=30)
        if not ok:
            raise value
        return value

    def stop(self) -> None:
        self._calls.put(None)
        self._thread.join(timeout=30)


def _devices() -> tuple[str, str]:
    """The device of a new Linear's weight and of ``torch.empty(1)``, in this thread."""
    return nn.Linear(2, 2).weight.device.type, torch.empty(1).device.type


def _probe() -> tuple[str, str]:
    """What a thread outside every context gets (:func:`_devices`)."""
    result: list[tuple[str, str]] = []
    thread = threading.Thread(target=lambda: result.append(_devices()))
    thread.start()
    thread.join(timeout=30)
    return result[0]


def _patched() -> tuple[Any, ...]:
    return nn.Module.register_parameter, nn.Module.register_buffer, torch.empty, torch.zeros, torch.ones, torch.full


def _play(steps: list[Step], *, with_deferred: bool, threads: bool, include_buffers: bool) -> list[tuple[str, str]]:
    """Run ``steps`` (a context of each label: "A..." accelerate, "D" deferred() or, without it, nothing), each label
    in its own thread or all in one; return what a neutral thread gets after each step, then what the threads that
    ran the contexts get, and whether torch's functions are back. Restores torch at the end (accelerate alone can
    leave its patch installed)."""
    saved = _patched()
    labels = list(dict.fromkeys(label for label, _ in steps))
    workers = {label: _Worker() for label in labels} if threads else dict.fromkeys(labels, _Worker())
    contexts: dict[str, Any] = {}
    for label in labels:
        if label.startswith("A"):
            contexts[label] = accelerate.init_empty_weights(include_buffers=include_buffers)
        else:
            contexts[label] = ti.deferred() if with_deferred else contextlib.nullcontext()
    seen = []
    try:
        for label, action in steps:
            ctx = contexts[label]
            workers[label].run(ctx.__enter__ if action == "enter" else lambda ctx=ctx: ctx.__exit__(None, None, None))
            seen.append(_probe())
        seen += [workers[label].run(_devices) for label in labels]
        seen.append(("register_parameter restored", str(nn.Module.register_parameter is saved[0])))
        seen.append(("everything restored", str(_patched() == saved)))
        return seen
    finally:
        (nn.Module.register_parameter, nn.Module.register_buffer, torch.empty, torch.zeros, torch.ones,
         torch.full) = saved  # fmt: skip
        for worker in set(workers.values()):
            worker.stop()


@pytest.mark.parametrize("include_buffers", [False, True], ids=["params", "buffers"])
@pytest.mark.parametrize("threads", [False, True], ids=["one-thread", "two-threads"])
@pytest.mark.parametrize("steps", _orders("A", "D"), ids=lambda s: " ".join(f"{a} {l}" for l, a in s))
def test_deferred_and_accelerate_in_any_order(steps, threads, include_buffers):
    with ti.deferred():
        pass  # the registration hook is installed by the first context and stays: it is not what is tested here
    alone = _play(steps, with_deferred=False, threads=threads, include_buffers=include_buffers)
    both = _play(steps, with_deferred=True, threads=threads, include_buffers=include_buffers)
    assert both == alone
    # accelerate alone, closed: a new Linear is real again in every thread and every patch is gone
    restored = [("register_parameter restored", "True"), ("everything restored", "True")]
    assert alone[-5:] == [("cpu", "cpu")] * 3 + restored
    if not include_buffers:  # its patch of register_parameter is process-wide: seen from a neutral thread while open
        assert ("meta", "cpu") in alone[:4]


@pytest.mark.parametrize("threads", [False, True], ids=["one-thread", "three-threads"])
def test_deferred_does_not_worsen_accelerates_own_leak(threads):
    """Two accelerate contexts that do not close in reverse order leave accelerate's patch installed (the second to
    close puts back the first one's patch): a deferred() opened and closed in between changes nothing of that."""
    steps = [("A1", "enter"), ("D", "enter"), ("A2", "enter"), ("A1", "exit"), ("D", "exit"), ("A2", "exit")]
    alone = _play(steps, with_deferred=False, threads=threads, include_buffers=False)
    both = _play(steps, with_deferred=True, threads=threads, include_buffers=False)
    assert both == alone
    assert alone[5] == ("meta", "cpu") and alone[-2] == ("register_parameter restored", "False")  # accelerate's leak
    assert nn.Linear(2, 2).weight.device.type == "cpu"  # _play put torch back
