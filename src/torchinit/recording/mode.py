"""The dispatch mode that records construction: every operation on meta tensors goes to a recording."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from torchinit.recording.aten import (
    META_SKIPPED,
    METADATA_OPS,
    OVERWRITES,
    UNDEFINED_FACTORIES,
    TensorRef,
    bind,
    device_is_meta,
    mutated,
    on_meta,
    op_name,
    returns_alias,
    storage_key,
    tensors,
)
from torchinit.recording.owners import claim

if TYPE_CHECKING:
    from torchinit.recording.log import Recording

__all__ = ["RecordingMode"]

#: The op of both weight norms. Its meta kernel is missing in torch 2.1, and in torch 2.2 it takes ``dim`` with no
#: default while the dispatcher leaves out a ``dim`` equal to the schema's default (0), even one passed: a weight
#: norm over dim 0 of a meta tensor is a TypeError there. On meta tensors the mode makes its outputs itself
#: (:func:`_weight_norm_on_meta`), on every torch.
_WEIGHT_NORM = torch.ops.aten._weight_norm_interface.default


def _weight_norm_on_meta(v: torch.Tensor, g: torch.Tensor, dim: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The outputs of ``aten._weight_norm_interface(v, g, dim)`` on meta: the weight, like ``v``, and the norms, like
    ``g`` (float32 for 16-bit floats, as the CPU kernel gives them). Only their shapes are recorded: the replay runs
    the real kernel."""
    norms_dtype = torch.float32 if g.dtype in (torch.float16, torch.bfloat16) else g.dtype
    return torch.empty_like(v), torch.empty(g.shape, dtype=norms_dtype, device=g.device)


class RecordingMode(TorchDispatchMode):
    """Appends every operation on meta tensors to a :class:`~torchinit.recording.log.Recording`; mutations of meta
    tensors are skipped.

    It also tracks which real storages hold uninitialized memory (``torch.empty`` not
    written since), so that a parameter registered from one is known to be undefined.
    """

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # torch wraps a mode's __torch_dispatch__ in torch._dynamo.disable unless this says no; that wrapper
        # imports torch._dynamo (and sympy) on the first operation, ~1.4 s per process, measured here.
        # Recording is never compiled, so it has nothing to disable.
        return False

    def __init__(self, recording: Recording) -> None:
        super().__init__()
        self.recording = recording
        # Real storages that hold uninitialized memory: made by an empty factory (or computed from one) and not
        # overwritten since. The tensors are held so their addresses cannot be reused by an allocation this mode
        # does not see (torch.tensor, torch.from_numpy); untouched pages of an empty tensor cost no memory.
        self.fresh: dict[int, torch.Tensor] = {}
        self._pause = [False]  # one flag, shared with the modes of nested contexts (join)

    @property
    def paused(self) -> bool:
        """Set while torchinit itself runs operations that are not construction's (creating a stand-in, validating
        a whole init call): none of them is recorded."""
        return self._pause[0]

    @paused.setter
    def paused(self, value: bool) -> None:
        self._pause[0] = value

    def join(self, outer: RecordingMode) -> None:
        """Record as the mode ``outer`` of an enclosing ``deferred()``, on its recording: the same fresh storages
        and the same pause. Every operation goes through both modes, so a pause set on this one alone (the
        innermost, which torchinit's helpers find) would let ``outer`` record what torchinit itself runs (the aten
        operations of a torch.nn.init function validated on a meta tensor, which torch 2.2 runs)."""
        self.fresh = outer.fresh
        self._pause = outer._pause

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if self.paused:
            return self._call(func, args, kwargs)
        name = op_name(func)
        if not (any(t.is_meta for t in tensors((args, kwargs))) or device_is_meta(kwargs)):
            return self._run_real(func, name, args, kwargs)
        if name in METADATA_OPS:
            return func(*args, **kwargs)
        targets = _meta_targets(func._schema, args, kwargs)
        if targets is not None:
            return self._record_in_place(func, name, args, kwargs, targets)
        if _needs_real_values(func._schema, args, kwargs):
            return self._run_on_values(func, name, args, kwargs)
        out = self._call(func, args, kwargs)
        self.recording.record(func, args, kwargs, out)
        for t in tensors(out):
            if t.is_meta:
                claim(t, self.recording)
        return out

    def _call(self, func: Any, args: tuple, kwargs: dict) -> Any:
        """``func(*args, **kwargs)``; a weight norm of meta tensors by :func:`_weight_norm_on_meta`, with this
        thread's modes paused while it makes its outputs."""
        if func is not _WEIGHT_NORM or not all(isinstance(t, torch.Tensor) and t.is_meta for t in args[:2]):
            return func(*args, **kwargs)
        was, self.paused = self.paused, True
        try:
            return _weight_norm_on_meta(*args, **kwargs)
        finally:
            self.paused = was

    def _run_real(self, func: Any, name: str, args: tuple, kwargs: dict) -> Any:
        """Run an operation that touches no meta tensor, following uninitialized memory through it."""
        out = func(*args, **kwargs)
        if self.fresh or name in UNDEFINED_FACTORIES:
            self._track_fresh(func, name, args, kwargs, out)
        return out

    def _run_on_values(self, func: Any, name: str, args: tuple, kwargs: dict) -> Any:
        """Run an operation that writes a real tensor from meta ones (a buffer table built on a parameter's device
        and copied into a real buffer) on the meta tensors' values, computed now from the recording.

        Only values that construction decided so far without drawing random numbers can be computed here (drawing
        now would take other numbers from the global RNG than eager construction does); for any other, torch's own
        error propagates, with a note saying why.
        """
        metas = [t for t in tensors((args, kwargs)) if t.is_meta]
        self.paused = True  # computing the values is torchinit's doing, not construction's
        try:
            device = next(t.device for t in tensors((args, kwargs)) if not t.is_meta)
            values = self.recording.evaluate(metas, device)
        finally:
            self.paused = False
        if values is None:
            try:
                return func(*args, **kwargs)
            except NotImplementedError as err:  # torch's "Cannot copy out of meta tensor", said in full
                raise NotImplementedError(
                    f"{err} (torchinit.deferred(): this operation writes a real tensor from meta tensors whose values "
                    "are random, undefined or not recorded, so they cannot be computed during construction; build "
                    "this module outside deferred())"
                ) from err
        swapped = {id(t): v for t, v in zip(metas, values)}

        def real(x: Any) -> Any:
            return swapped.get(id(x), x) if isinstance(x, torch.Tensor) else x

        return self._run_real(func, name, tree_map(real, args), tree_map(real, kwargs))

    def _record_in_place(self, func: Any, name: str, args: tuple, kwargs: dict, targets: list[Any]) -> Any:
        """Record an in-place operation on meta tensors without running it; return what it would return."""
        if name not in META_SKIPPED:  # a meta kernel checks shapes and dtypes, so errors surface now
            func(*tree_map(on_meta, args), **tree_map(on_meta, kwargs))
        self.recording.record(func, args, kwargs, None)
        return targets[0] if len(targets) == 1 else tuple(targets)

    def _track_fresh(self, func: Any, name: str, args: tuple, kwargs: dict, out: Any) -> None:
        schema = func._schema
        bound = bind(schema, args, kwargs)
        inputs = tensors((args, kwargs))
        read_fresh = any(storage_key(t) in self.fresh for t in inputs)
        for i in mutated(schema):
            for t in tensors(bound[i]):
                key = storage_key(t)
                if key in self.fresh and name in OVERWRITES and TensorRef.of(t).covers_storage():
                    reads = {storage_key(x) for x in inputs if x is not t}
                    if key not in reads:
                        del self.fresh[key]  # set entirely: defined now (a partial write leaves it undefined)
        for t in tensors(out):
            if any(t is x for x in inputs):
                continue
            if name in UNDEFINED_FACTORIES or read_fresh:  # made empty, or computed from uninitialized memory
                self.fresh[storage_key(t)] = t
            else:
                self.fresh.pop(storage_key(t), None)

    def is_undefined(self, t: torch.Tensor) -> bool:
        """Whether the real tensor ``t`` still holds (some of) the uninitialized memory it was created with."""
        return storage_key(t) in self.fresh

    def release(self, t: torch.Tensor) -> None:
        """Stop tracking ``t``'s storage (it was registered as a parameter and replaced by a meta one)."""
        self.fresh.pop(storage_key(t), None)


def _needs_real_values(schema: Any, args: tuple, kwargs: dict) -> bool:
    """Whether an operation on meta tensors writes a real tensor (``real_buffer.copy_(meta_table)``)."""
    bound = bind(schema, args, kwargs)
    return any(not t.is_meta for i in mutated(schema) for t in tensors(bound[i]))


def _meta_targets(schema: Any, args: tuple, kwargs: dict) -> list[Any] | None:
    """The arguments an in-place operation writes, when all of them are meta tensors (or absent) and it returns
    them: such an operation is recorded, not run. None for any other operation."""
    written = mutated(schema)
    if not written or not all(returns_alias(schema)):
        return None
    bound = bind(schema, args, kwargs)
    if all(isinstance(bound[i], torch.Tensor) and bound[i].is_meta for i in written if bound[i] is not None):
        return [bound[i] for i in written]
    return None
