"""``deferred()``: build a model with its parameters on meta while recording what construction does to them.

Inside the context, ``nn.Module.register_parameter`` moves every new parameter to the meta device and
claims it for this thread's :class:`~torchinit.recording.log.Recording`; the torch.nn.init functions that
return at once on meta tensors are patched so that their calls are recorded whole. The patches are
installed once for any number of nested or concurrent ``deferred()`` blocks and removed when the last ends.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from torchinit.recording.log import (
    UNDEFINED,
    Recording,
    RecordingMode,
    claim,
    recorded_call,
    thread_recordings,
)


@contextlib.contextmanager
def deferred() -> Iterator[Recording]:
    """Within this context, parameters are created on the meta device and construction is recorded.

    Constructors run as usual, so buffers (RoPE frequencies, position ids) and any
    Python-side state are computed for real. Each ``nn.Parameter`` is moved to meta
    when it is registered (its value, when the constructor gave it one, is kept for
    :func:`materialize_`), and every operation on meta tensors is recorded instead of
    run: no parameter memory is used and no random numbers are drawn. Recording is per
    thread: modules built by other threads while the context is open are built
    normally. Contexts nest (an inner one joins the outer recording).

    ``nn.Module.register_parameter`` is patched process-wide while any context is
    open (as accelerate's ``init_empty_weights`` does); the patch acts only in threads
    inside a context, and torch is restored when the last context exits.

    Yields:
        The :class:`~torchinit.recording.log.Recording` of this construction.

    Example:
        >>> with deferred():
        ...     layer = nn.Linear(4096, 4096)
        >>> layer.weight.is_meta
        True
        >>> _ = materialize_(layer)
        >>> layer.weight.is_meta, bool(layer.weight.abs().max() <= 4096 ** -0.5)
        (False, True)
    """
    stack = _thread_stack()
    if stack:  # nested: join the outer recording (contexts may even exit out of order)
        recording, outer = stack[-1]
        mode = RecordingMode(recording)
        mode.fresh = outer.fresh
    else:
        recording = Recording()
        mode = RecordingMode(recording)
    with recording_into(recording, mode), mode:
        yield recording


@contextlib.contextmanager
def recording_into(recording: Recording, mode: RecordingMode) -> Iterator[None]:
    """Make this thread record into ``recording``: the process-wide patches (counted), and the thread's stack."""
    stack = _thread_stack()
    entry = (recording, mode)
    with _PATCH_LOCK:
        if _PATCH["depth"] == 0:
            _PATCH["saved"] = nn.Module.register_parameter
            nn.Module.register_parameter = _deferring(_PATCH["saved"])  # type: ignore[method-assign]
            _PATCH["init"] = _patch_meta_skipping_inits()
        _PATCH["depth"] += 1
    stack.append(entry)
    try:
        yield
    finally:
        stack[:] = [e for e in stack if e is not entry]
        with _PATCH_LOCK:
            _PATCH["depth"] -= 1
            if _PATCH["depth"] == 0:
                nn.Module.register_parameter = _PATCH.pop("saved")  # type: ignore[method-assign]
                for holder, key, original in _PATCH.pop("init"):
                    _set_entry(holder, key, original)


# The patch is process-wide (a class attribute) and counted under a lock; whether it defers is per thread.
_PATCH_LOCK = threading.Lock()


_PATCH: dict[str, Any] = {"depth": 0}


_thread_stack = thread_recordings


def _deferring(original: Any) -> Any:
    """``nn.Module.register_parameter`` that, in a thread inside ``deferred()``, makes the parameter meta first.

    The original is captured here, once per installation, so a thread still running an old
    patched method after the last context closed calls the right one.
    """

    def register_parameter(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        stack = _thread_stack()
        lazy = isinstance(param, nn.parameter.UninitializedTensorMixin)
        if stack and param is not None and not lazy:
            recording, mode = stack[-1]
            if not param.is_meta:
                param = _make_meta(param, recording, mode)
            if recording.knows(param):
                claim(param, recording)
        original(self, name, param)

    return register_parameter


def _make_meta(param: nn.Parameter, recording: Recording, mode: RecordingMode) -> nn.Parameter:
    """Turn the real ``param`` into a meta one, in place where torch allows it, and record its value.

    In place (``torch.utils.swap_tensors``, torch >= 2.3) the constructor's own references
    and a second registration of the same parameter (a tie) see the meta tensor too;
    where swapping is refused, a new Parameter with the same class and attributes is made.
    """
    mode.paused = True  # creating the stand-in is torchinit's doing, not construction's
    try:
        undefined = mode.is_undefined(param)
        meta = meta_like(param)
        swap = getattr(torch.utils, "swap_tensors", None)
        if swap is not None and type(meta) is type(param):
            try:
                attributes = dict(param.__dict__)
                swap(param, meta)  # now ``param`` is the meta tensor and ``meta`` holds the real data
                param.__dict__.update(attributes)
                meta, param = param, meta
            except RuntimeError:  # other references to the tensor at the C++ level: keep the new object
                pass
        value = UNDEFINED if undefined else param.detach()
        mode.release(param)
        recording.add_leaf(meta, value)
    finally:
        mode.paused = False
    return meta


#: torch.nn.init functions that return at once on a meta tensor (torch 2.13), so their effect never reaches
#: ATen: within deferred() they are recorded whole. trunc_normal_ is patched at its helper, which it looks up
#: at call time; the others where they are looked up: torch.nn.init itself, and the table transformers
#: captured at import (``transformers.initialization.TORCH_INIT_FUNCTIONS``).
META_SKIPPING_INITS = ("_no_grad_trunc_normal_", "orthogonal_", "sparse_", "dirac_")


def _patch_meta_skipping_inits() -> list[tuple[Any, str, Any]]:
    import sys

    saved = []
    for name in META_SKIPPING_INITS:
        original = getattr(nn.init, name)
        saved.append((nn.init, name, original))
        setattr(nn.init, name, recorded_call(original))
    table = getattr(sys.modules.get("transformers.initialization"), "TORCH_INIT_FUNCTIONS", None)
    if isinstance(table, dict):
        for key, fn in list(table.items()):
            for holder, name, original in saved[1:]:
                if fn is original:
                    saved.append((table, key, fn))
                    table[key] = getattr(holder, name)
    return saved


def _set_entry(holder: Any, key: str, value: Any) -> None:
    if isinstance(holder, dict):
        holder[key] = value
    else:
        setattr(holder, key, value)


def meta_like(t: Tensor) -> Tensor:
    """A meta tensor with ``t``'s shape, strides and dtype; a parameter like ``t`` if ``t`` is one."""
    meta = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")
    return parameter_like(t, meta) if isinstance(t, nn.Parameter) else meta


def parameter_like(old: Tensor, data: Tensor) -> nn.Parameter:
    """A parameter holding ``data`` with ``old``'s class (where it can), ``requires_grad`` and Python attributes."""
    try:
        new = type(old)(data, requires_grad=old.requires_grad)
    except Exception:  # noqa: BLE001 - a Parameter subclass with another constructor
        new = nn.Parameter(data, requires_grad=old.requires_grad)
    new.__dict__.update(getattr(old, "__dict__", {}))
    return new
