"""The recordings open in this thread, and whole-call recording of init functions."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from torchinit.recording.log import Recording
    from torchinit.recording.mode import RecordingMode

__all__ = ["recorded_call", "thread_recordings"]

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
            func(tensor, *args, **kwargs)  # argument errors surface now, as in eager construction
        finally:
            _LOCAL.calling, mode.paused = False, False
        recording.record_call(func, tensor, args, kwargs)
        return tensor

    return wrapper
