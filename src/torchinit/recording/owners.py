"""Which recording a meta tensor belongs to.

A meta tensor keeps its recording alive (the recording holds storages, never the tensors, so there is no
cycle); the recording is freed with the last meta tensor that came from it, typically at materialization.

A claimed tensor object that holds another meta storage of its shape when it is looked up was converted after
``deferred()`` exited: ``model.half()``, ``.to(torch.bfloat16)``, ``.float()`` set each parameter's ``.data`` to
a converted meta copy (``torch.nn.Module._apply``), which no recording saw. Its recording then records the
conversion (the new storage is the recorded one converted to the new dtype), so it materializes as the
unconverted tensor would, then converted. A buffer is converted into a new tensor object: a recorded meta tensor
registered under ``deferred()`` is watched in its place (:func:`watch_registration`), and a new meta tensor of its
shape found there in another dtype is recorded as its conversion the same way. Only the last dtype is seen:
``.half()`` then ``.to(torch.bfloat16)`` looks like one conversion to bfloat16 (the float16 rounding in between is
unseen), so every conversion found this way is noted (``Recording.found_conversions``) and ``materialize_`` names it
(a warning; an error with ``strict=True``). A conversion inside ``deferred()`` is recorded step by step and exact.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any

import torch

from torchinit.recording.aten import TensorRef, storage_key

if TYPE_CHECKING:
    from torchinit.recording.log import Recording

__all__ = ["claim", "recording_of", "watch_registration"]

_OWNERS_LOCK = threading.Lock()
# id(tensor) -> (weak ref to it, its recording, the storage it was claimed with)
_OWNED: dict[int, tuple[weakref.ref, Recording, TensorRef]] = {}


def claim(t: torch.Tensor, recording: Recording) -> None:
    """Note that the meta tensor ``t`` came from ``recording`` (by identity: tensors compare by value)."""
    ident = id(t)

    # the lock and the table are bound now: at interpreter shutdown the module's globals may already be None
    def forget(_: Any, ident: int = ident, lock: Any = _OWNERS_LOCK, owned: dict = _OWNED) -> None:
        with lock:
            entry = owned.get(ident)
            if entry is not None and entry[0]() is None:
                del owned[ident]

    with _OWNERS_LOCK:
        _OWNED[ident] = (weakref.ref(t, forget), recording, TensorRef.of(t))


#: For each module that registered a recorded meta tensor under deferred(): its name -> (the storage registered, its
#: recording, held weakly so that a model outliving its materialization does not keep the recording alive).
_WATCHED: weakref.WeakKeyDictionary[Any, dict[str, tuple[TensorRef, weakref.ref]]] = weakref.WeakKeyDictionary()


def watch_registration(module: Any, name: str, t: torch.Tensor, recording: Recording) -> None:
    """Note that ``module`` registered the recorded meta tensor ``t`` as ``name``: a conversion that replaces the
    tensor object (``Module._apply`` does so for buffers) is then recognized by the place it takes."""
    with _OWNERS_LOCK:
        _WATCHED.setdefault(module, {})[name] = (TensorRef.of(t), weakref.ref(recording))


def recording_of(t: torch.Tensor) -> Recording | None:
    """The recording that created the meta tensor ``t``'s storage, if it is known."""
    if not t.is_meta:
        return None
    with _OWNERS_LOCK:
        found = _claimed(t)
        if found is not None:
            return found
        key = storage_key(t)  # another tensor object on a recorded storage (Parameter(meta_tensor))
        for rec in _recordings():
            if key in rec.produced:
                return rec
        watched = _watched_at(t)
    return _converted_in_place(t, watched)


def _watched_at(t: torch.Tensor) -> list[tuple[TensorRef, weakref.ref]]:
    """The watched places that hold ``t`` now, with what was registered there (the caller holds the lock). Places
    whose recording is gone (materialized) are dropped, so the search covers only models still waiting."""
    found = []
    shape = tuple(t.shape)
    for module, names in list(_WATCHED.items()):
        for name, (ref, rec_ref) in list(names.items()):
            if rec_ref() is None:
                del names[name]
            elif ref.size == shape and _registered(module, name) is t:
                found.append((ref, rec_ref))
    return found


def _claimed(t: torch.Tensor) -> Recording | None:
    """The recording ``t`` itself was claimed for, a conversion of its ``.data`` recorded first (the caller holds the
    lock)."""
    entry = _OWNED.get(id(t))
    if entry is None or entry[0]() is not t:
        return None
    rec, ref = entry[1], entry[2]
    if not rec.knows(t):
        ref = rec.latest_conversion(ref)  # converted inside deferred() too: the conversion after starts from there
    if not rec.knows(t) and _converted(ref, t):
        rec.record_conversion(ref, t)
        _OWNED[id(t)] = (entry[0], rec, TensorRef.of(t))
    return rec if rec.knows(t) else None


def _converted_in_place(t: torch.Tensor, watched: list[tuple[TensorRef, weakref.ref]]) -> Recording | None:
    """The recording of the tensor ``t`` replaced in one of the ``watched`` places (a buffer converted by
    ``Module._apply``), its conversion recorded; None if it is not such a conversion."""
    for ref, rec_ref in watched:
        rec: Recording | None = rec_ref()
        if rec is None or ref.key not in rec.produced:
            continue
        with _OWNERS_LOCK:
            known = rec.knows(t)  # another thread recorded the conversion first
            ref = ref if known else rec.latest_conversion(ref)
            if not known and _converted(ref, t):
                rec.record_conversion(ref, t)
                known = True
        if known:
            claim(t, rec)
            return rec
    return None


def _registered(module: Any, name: str) -> Any:
    """What ``module`` holds as the parameter or buffer ``name`` now (None if neither)."""
    found = module.__dict__.get("_parameters", {}).get(name)
    return found if found is not None else module.__dict__.get("_buffers", {}).get(name)


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
