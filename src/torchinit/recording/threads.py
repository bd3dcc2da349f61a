"""The recordings open in this thread, and whole-call recording of init functions."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from torchinit.recording.aten import storage_key
from torchinit.recording.owners import claim
from torchinit.rng.private import private_random

if TYPE_CHECKING:
    from torchinit.recording.log import Recording
    from torchinit.recording.mode import RecordingMode

__all__ = ["recorded_call", "recorded_factory", "thread_recordings"]

_LOCAL = threading.local()


def thread_recordings() -> list[tuple[Recording, RecordingMode]]:
    """The (recording, mode) pairs of the ``deferred()`` contexts open in this thread, innermost last."""
    if not hasattr(_LOCAL, "stack"):
        _LOCAL.stack = []
        _LOCAL.calling = False
    stack: list[tuple[Recording, RecordingMode]] = _LOCAL.stack
    return stack


def recorded_call(func: Callable[..., Any]) -> Callable[..., Any]:
    """Make the in-place initializer ``func`` recordable: inside ``deferred()``, on a recorded meta tensor, the
    call is validated (run on the meta tensor, which writes nothing) and appended to the recording whole.

    The validation records nothing and draws nothing: torch 2.2's torch.nn.init functions do not return at once on
    a meta tensor but run their operations on it (the recording is paused), and its ``sparse_`` draws its row
    permutations from the CPU generator even then: from a private copy of it, so the global one does not move.

    Outside a recording, or on any other target, ``func`` runs as usual.
    """

    @functools.wraps(func)
    def wrapper(tensor: Any, *args: Any, **kwargs: Any) -> Any:
        stack = thread_recordings()
        if not stack or _LOCAL.calling or not isinstance(tensor, torch.Tensor) or not tensor.is_meta:
            return func(tensor, *args, **kwargs)
        recording, mode = stack[-1]
        if not recording.knows(tensor):
            return func(tensor, *args, **kwargs)
        _LOCAL.calling, mode.paused = True, True
        try:
            with private_random():  # (not fork_rng: setting the global RNG back would rewind other threads' draws)
                func(tensor, *args, **kwargs)  # argument errors surface now, as in eager construction
        finally:
            _LOCAL.calling, mode.paused = False, False
        recording.record_call(func, tensor, args, kwargs)
        return tensor

    return wrapper


def recorded_factory(func: Callable[..., Any]) -> Callable[..., Any]:
    """Make the data factory ``func`` (:data:`~torchinit.recording.inits.DATA_FACTORIES`) recordable: inside
    ``deferred()``, a meta tensor it returns on a storage no recorded operation made gets its value recorded.

    torch fills such a tensor from Python data below the dispatcher, so the recording mode sees nothing make
    it. The same call is then made on the CPU (the meta device, and a meta tensor that gives a method like
    ``new_tensor`` its dtype, swapped for CPU ones), and a copy of its result becomes the storage's initial value
    (a copy: ``as_tensor`` may share the caller's buffer, which construction may change later). Outside a
    recording, or for any other result, ``func`` runs as usual.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        out = func(*args, **kwargs)
        stack = thread_recordings()
        if not stack or _LOCAL.calling or not isinstance(out, torch.Tensor) or not out.is_meta:
            return out
        recording, mode = stack[-1]
        key = storage_key(out)
        if mode.paused or key in recording.produced or key in {storage_key(t) for t in _meta_tensors(args, kwargs)}:
            return out
        value = _on_cpu_call(func, args, kwargs, mode)
        if value is not None and value.shape == out.shape and value.dtype == out.dtype:
            recording.add_leaf(out, value.detach().clone())
            claim(out, recording)
        return out

    return wrapper


def _meta_tensors(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    return [x for x in (*args, *kwargs.values()) if isinstance(x, torch.Tensor) and x.is_meta]


def _on_cpu_call(func: Callable[..., Any], args: tuple, kwargs: dict, mode: RecordingMode) -> torch.Tensor | None:
    """``func(*args, **kwargs)`` made again on the CPU (not recorded); None where that is not possible."""
    cpu_args, cpu_kwargs = [_on_cpu(x) for x in args], {k: _on_cpu(v) for k, v in kwargs.items()}
    if not any(_is_meta_device(x) for x in (*args, *kwargs.values())) and not _meta_tensors(args, {}):
        cpu_kwargs["device"] = torch.device("cpu")  # the meta device came from a torch.device context
    mode.paused = True  # the CPU call is torchinit's doing, not construction's
    try:
        value = func(*cpu_args, **cpu_kwargs)
    except Exception:  # not a factory of data after all: the storage stays unknown, as before
        return None
    finally:
        mode.paused = False
    return value if isinstance(value, torch.Tensor) else None


def _is_meta_device(x: Any) -> bool:
    if isinstance(x, torch.device):
        return x.type == "meta"
    return isinstance(x, str) and x.split(":")[0] == "meta"


def _on_cpu(x: Any) -> Any:
    """An argument for the same call on the CPU: the meta device as the CPU, a meta tensor as a CPU one of its
    shape and dtype that costs no memory (a data factory takes only a dtype from it: had it taken values, ATen
    would have seen an operation make the result, and it would be recorded already)."""
    if _is_meta_device(x):
        return torch.device("cpu")
    if isinstance(x, torch.Tensor) and x.is_meta:
        return torch.empty((), dtype=x.dtype).expand(x.shape)
    return x
