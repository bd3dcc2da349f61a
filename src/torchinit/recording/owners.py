"""Which recording a meta tensor belongs to.

A meta tensor keeps its recording alive (the recording holds storages, never the tensors, so there is no
cycle); the recording is freed with the last meta tensor that came from it, typically at materialization.

A claimed tensor object that holds another meta storage of its shape when it is looked up was converted after
``deferred()`` exited: ``model.half()``, ``.to(torch.bfloat16)``, ``.float()`` set each parameter's ``.data`` to
a converted meta copy (``torch.nn.Module._apply``), which no recording saw. Its recording then records the
conversion (the new storage is the recorded one converted to the new dtype), so it materializes as the
unconverted tensor would, then converted. Only the last dtype is seen: ``.half()`` then ``.to(torch.bfloat16)``
materializes as one conversion to bfloat16 (without the float16 rounding in between).
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any

import torch

from torchinit.recording.aten import TensorRef, storage_key

if TYPE_CHECKING:
    from torchinit.recording.log import Recording

__all__ = ["claim", "recording_of"]

_OWNERS_LOCK = threading.Lock()
# id(tensor) -> (weak ref to it, its recording, the storage it was claimed with)
_OWNED: dict[int, tuple[weakref.ref, Recording, TensorRef]] = {}


def claim(t: torch.Tensor, recording: Recording) -> None:
    """Note that the meta tensor ``t`` came from ``recording`` (by identity: tensors compare by value)."""
    ident = id(t)

    def forget(_: Any, ident: int = ident) -> None:
        with _OWNERS_LOCK:
            entry = _OWNED.get(ident)
            if entry is not None and entry[0]() is None:
                del _OWNED[ident]

    with _OWNERS_LOCK:
        _OWNED[ident] = (weakref.ref(t, forget), recording, TensorRef.of(t))


def recording_of(t: torch.Tensor) -> Recording | None:
    """The recording that created the meta tensor ``t``'s storage, if it is known."""
    if not t.is_meta:
        return None
    with _OWNERS_LOCK:
        entry = _OWNED.get(id(t))
        if entry is not None and entry[0]() is t:
            if not entry[1].knows(t) and _converted(entry[2], t):
                entry[1].record_conversion(entry[2], t)
                _OWNED[id(t)] = (entry[0], entry[1], TensorRef.of(t))
            if entry[1].knows(t):
                return entry[1]
        key = storage_key(t)  # another tensor object on a recorded storage (Parameter(meta_tensor))
        for rec in _recordings():
            if key in rec.produced:
                return rec
    return None


def _converted(claimed: TensorRef, t: torch.Tensor) -> bool:
    """Whether ``t`` (the object claimed with storage ``claimed``) now holds a new meta storage of its shape in another
    dtype that no recording made: the ``.data`` of a conversion (``Module._apply``), whose values are the claimed
    ones converted. (The same dtype on a new storage is not a conversion of the claimed values: ``.half().float()``
    rounded them, ``.data = ...`` replaced them; such a tensor stays unknown.)"""
    return (
        tuple(t.shape) == claimed.size
        and t.dtype != claimed.dtype
        and storage_key(t) != claimed.key
        and not any(storage_key(t) in rec.produced for rec in _recordings())
    )


def _recordings() -> list[Recording]:
    """Every recording a live claimed tensor came from (the caller holds the lock)."""
    return list({id(e[1]): e[1] for e in _OWNED.values()}.values())
