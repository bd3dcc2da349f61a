"""Which recording a meta tensor belongs to.

A meta tensor keeps its recording alive (the recording holds storages, never the tensors, so there is no
cycle); the recording is freed with the last meta tensor that came from it, typically at materialization.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any

import torch

from torchinit.recording.aten import storage_key

if TYPE_CHECKING:
    from torchinit.recording.log import Recording

__all__ = ["claim", "recording_of"]

_OWNERS_LOCK = threading.Lock()
_OWNED: dict[int, tuple[weakref.ref, Recording]] = {}  # id(tensor) -> (weak ref to it, its recording)


def claim(t: torch.Tensor, recording: Recording) -> None:
    """Note that the meta tensor ``t`` came from ``recording`` (by identity: tensors compare by value)."""
    ident = id(t)

    def forget(_: Any, ident: int = ident) -> None:
        with _OWNERS_LOCK:
            entry = _OWNED.get(ident)
            if entry is not None and entry[0]() is None:
                del _OWNED[ident]

    with _OWNERS_LOCK:
        _OWNED[ident] = (weakref.ref(t, forget), recording)


def recording_of(t: torch.Tensor) -> Recording | None:
    """The recording that created the meta tensor ``t``'s storage, if it is known."""
    if not t.is_meta:
        return None
    with _OWNERS_LOCK:
        entry = _OWNED.get(id(t))
        if entry is not None and entry[0]() is t and entry[1].knows(t):
            return entry[1]
        key = storage_key(t)  # another tensor object on a recorded storage (Parameter(meta_tensor))
        for rec in {id(e[1]): e[1] for e in _OWNED.values()}.values():
            if key in rec.produced:
                return rec
    return None
