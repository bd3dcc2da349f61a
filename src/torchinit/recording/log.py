"""Record what construction does to meta tensors, and replay only what decides their final values.

This is the mechanism behind :func:`~torchinit.deferred` and :func:`~torchinit.materialize_`.
While a model is built, every ATen operation that touches a meta tensor is
appended to a :class:`Recording`: the parameter's creation, each module's
``reset_parameters``, the constructor's own ``fill_``/``copy_``/``mul_``, init loops over
``self.modules()``, model-level init such as transformers' ``post_init``. Nothing is
computed: in-place operations on meta tensors return at once.

At materialization, :meth:`Recording.replay` walks the log backwards from the tensors
whose values are wanted and keeps only the operations that decide them. A write is
dead when a later operation overwrites the whole storage without reading it (a
``Linear``'s ``kaiming_uniform_`` before transformers' ``normal_(std=0.02)``), so each
parameter is written about once. Live operations then run in their recorded order on
real tensors, which reproduces eager construction: the same deterministic values
exactly, the same distributions for random ones (and, with no operation dropped, the
same global-RNG draws). Storage identity, not Python identity, links the operations,
so views (``weight[padding_idx].zero_()``), ``.data`` and shared storage replay exactly.

The design follows the idea of torchdistx's ``deferred_init`` (record construction,
replay it at materialization), with a TorchDispatchMode on real meta tensors in place of
its fake-tensor graph, and with dead writes removed.

This module holds the log and its replay; the other modules of :mod:`torchinit.recording` hold the rest,
and every name of the recording is importable from here: :mod:`~torchinit.recording.aten` (storages,
:class:`TensorRef`, what an ATen operation does), :mod:`~torchinit.recording.inits` (the torch.nn.init
functions recorded whole), :mod:`~torchinit.recording.mode` (:class:`RecordingMode`, which records),
:mod:`~torchinit.recording.threads` (the recordings open in a thread, :func:`recorded_call`) and
:mod:`~torchinit.recording.owners` (which recording a meta tensor came from).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._pytree import tree_map

from torchinit.recording.aten import (
    OVERWRITES,
    RANDOM_WITHOUT_GENERATOR,
    UNDEFINED,
    UNDEFINED_FACTORIES,
    TensorRef,
    bind,
    meta_keys,
    mutated,
    op_name,
    reads_only_metadata,
    ref_or_value,
    shape_stand_in,
    storage_key,
    tensors,
)
from torchinit.recording.inits import keyed_twin_name, recorded_name
from torchinit.recording.mode import RecordingMode
from torchinit.recording.owners import claim, recording_of, watch_registration
from torchinit.recording.threads import recorded_call, recorded_factory, thread_recordings
from torchinit.rng.seeds import seeded_torch_rng

__all__ = [
    "Recording", "RecordingMode", "Replay", "TensorRef", "UNDEFINED", "claim", "recording_of", "storage_key",
    "thread_recordings", "recorded_call", "recorded_factory", "watch_registration",
]  # fmt: skip


@dataclass
class Op:
    """One recorded operation: ``func(*args, **kwargs)`` with meta tensors as :class:`TensorRef`."""

    func: Any  # an OpOverload, or "leaf" for a storage whose initial value is given
    args: tuple
    kwargs: dict
    outputs: tuple[TensorRef, ...] = ()  # storages this operation creates
    writes: tuple[TensorRef, ...] = ()  # meta tensors it mutates
    reads: frozenset[int] = frozenset()  # storages whose values it reads
    random: bool = False
    undefined: bool = False  # it creates storage with undefined contents
    whole: bool = False  # a function call that writes every element of its tensor
    shape_only: bool = False  # a factory that takes only the metadata of its tensor arguments (zeros_like)
    out_keys: frozenset[int] = frozenset()  # storages it writes through ``out=`` arguments (schema ``is_out``)

    @property
    def name(self) -> str:
        if isinstance(self.func, str):
            return self.func
        if getattr(self.func, "_schema", None) is None:  # an init function recorded whole
            return recorded_name(self.func)
        return op_name(self.func)

    def overwrites(self) -> set[int]:
        """Storages this operation sets entirely without reading their previous values: every write of an overwrite
        (``fill_``, a whole init call), and the ``out=`` arguments of an ATen ``out`` overload (``eye.out`` of
        ``nn.init.eye_``; its other mutable arguments, a batch norm's running stats, are read as well)."""
        if self.whole or self.name in OVERWRITES:
            candidates = self.writes
        else:
            candidates = tuple(w for w in self.writes if w.key in self.out_keys)
        return {w.key for w in candidates if w.covers_storage() and w.key not in self.reads}

    def read_partial_writes(self) -> None:
        """Count as read every storage it writes but does not overwrite: what it modifies depends on it."""
        overwritten = self.overwrites()
        self.reads = self.reads | {w.key for w in self.writes if w.key not in overwritten}


#: What a random operation draws from, given its index in the log and the op (see :meth:`Recording.replay`).
GeneratorFor = Callable[[int, Op], torch.Generator | None]
#: A fast path that fills a random operation's real target itself (see :meth:`Recording.replay`).
Fill = Callable[[torch.Tensor, Op, torch.Generator | None, int], bool]


@dataclass
class Replay:
    """The result of :meth:`Recording.replay`: real tensors for the requested storages, and the unknowns."""

    storages: dict[int, torch.Tensor]  # storage key -> a real tensor owning the replayed storage
    undefined: set[int]  # requested storage keys whose values construction never defined (now zeros)

    def tensor(self, ref: TensorRef | torch.Tensor) -> torch.Tensor:
        """The real counterpart of a meta tensor: a view of its replayed storage, in its own dtype."""
        if isinstance(ref, torch.Tensor):
            ref = TensorRef.of(ref)
        base = self.storages[ref.key]
        if base.dtype == ref.dtype:
            return base.as_strided(ref.size, ref.stride, ref.offset)
        view = torch.empty(0, dtype=ref.dtype, device=base.device)  # a view that reinterprets the bytes
        return view.set_(base.untyped_storage(), ref.offset, ref.size, ref.stride)


class Recording:
    """An ordered log of the operations construction applied to meta tensors."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.produced: dict[int, int] = {}  # storage key -> index of the op that created it
        self._storages: list[Any] = []  # keeps every recorded meta storage alive, so keys stay unique
        # (converted storage, source storage): a dtype conversion, recorded (_to_copy) or found (record_conversion)
        self.conversions: list[tuple[int, int]] = []
        #: converted storage -> (source dtype, dtype): the conversions found after ``deferred()`` exited, whose
        #: intermediate steps nobody saw (``.half().to(torch.bfloat16)`` looks like one conversion to bfloat16)
        self.found_conversions: dict[int, tuple[torch.dtype, torch.dtype]] = {}
        #: id of a real parameter -> (a weak reference to it, the meta parameter that replaced it), where torch could
        #: not swap it in place (torch < 2.3, a ``_make_subclass`` parameter): a second registration of the same
        #: object (a tie) gets the same meta parameter
        self.replaced: dict[int, tuple[Callable[[], torch.Tensor | None], torch.Tensor]] = {}

    def __repr__(self) -> str:
        return f"Recording({len(self.ops)} operations, {len(self.produced)} storages)"

    def knows(self, t: torch.Tensor) -> bool:
        """Whether ``t``'s storage was created in this recording."""
        return t.is_meta and storage_key(t) in self.produced

    def add_leaf(self, meta: torch.Tensor, value: Any) -> None:
        """``meta``'s storage starts as ``value`` (a real tensor), or undefined (:data:`UNDEFINED`)."""
        self._keep(meta)
        ref = TensorRef.of(meta)
        self.produced[ref.key] = len(self.ops)
        self.ops.append(Op("leaf", (value,), {}, outputs=(ref,), undefined=value is UNDEFINED))

    def _keep(self, t: torch.Tensor) -> None:
        self._storages.append(t.untyped_storage())

    # ---- recording -------------------------------------------------------------------------------------

    def record_call(self, func: Callable[..., Any], tensor: torch.Tensor, args: tuple, kwargs: dict) -> None:
        """Append a whole in-place init function ``func(tensor, *args, **kwargs)`` (one that skips meta tensors).

        Such functions (the torch.nn.init functions of :data:`~torchinit.recording.inits.PATCHED_INITS`, every
        torchinit initializer) write every element of their tensor.
        """
        self._keep(tensor)
        ref = TensorRef.of(tensor)
        # torch.nn.init's random functions took no generator before torch 2.2: they are random all the same
        random = _takes_generator(func) or keyed_twin_name(func) is not None
        op = Op(func, (ref, *args), dict(kwargs), writes=(ref,), random=random, whole=True)
        op.read_partial_writes()
        self.ops.append(op)

    def record_conversion(self, source: TensorRef, converted: torch.Tensor) -> None:
        """Record the meta tensor ``converted`` as ``source`` (a tensor of this recording, as it was when recorded)
        converted to ``converted``'s dtype: a ``model.half()`` after ``deferred()``, which no recording saw."""
        self._keep(converted)
        ref = TensorRef.of(converted)
        self.produced[ref.key] = len(self.ops)
        func = torch.ops.aten._to_copy.default
        self.ops.append(Op(func, (source,), {"dtype": ref.dtype}, outputs=(ref,), reads=frozenset({source.key})))
        self.conversions.append((ref.key, source.key))
        self.found_conversions[ref.key] = (source.dtype, ref.dtype)

    def latest_conversion(self, ref: TensorRef) -> TensorRef:
        """The last conversion of ``ref``'s storage this recording knows (conversions of conversions followed), or
        ``ref``: what a tensor claimed as ``ref`` held after ``model.half()`` inside ``deferred()``."""
        newest = {source: converted for converted, source in self.conversions}  # later conversions win
        key = ref.key
        while key in newest:
            key = newest[key]
        if key == ref.key:
            return ref
        return next(out for out in self.ops[self.produced[key]].outputs if out.key == key)

    def record(self, func: Any, args: tuple, kwargs: dict, result: Any) -> None:
        """Append ``func(*args, **kwargs) -> result`` (called by :class:`RecordingMode`)."""
        schema = func._schema
        name = op_name(func)
        writes, reads = self._arguments(schema, args, kwargs)
        shape_only = not writes and reads_only_metadata(name)
        if shape_only:  # ones_like(p) of an empty parameter is defined: it reads p's shape, not p's values
            reads = set()
        outputs = self._new_storages(result, meta_keys((args, kwargs)))
        op = Op(
            func,
            tree_map(ref_or_value, args),
            tree_map(ref_or_value, kwargs),
            outputs=tuple(outputs),
            writes=tuple(writes),
            reads=frozenset(reads),
            random=_takes_generator(func) or name in RANDOM_WITHOUT_GENERATOR,
            undefined=name in UNDEFINED_FACTORIES,
            shape_only=shape_only,
            out_keys=_out_keys(schema, args, kwargs),
        )
        op.read_partial_writes()  # an in-place op that is not an overwrite reads what it modifies
        for ref in outputs:
            self.produced[ref.key] = len(self.ops)
        if writes or outputs:  # a pure view or a read with no meta result decides nothing
            self.ops.append(op)
        if name == "_to_copy" and len(outputs) == 1 and len(reads) == 1:  # model.half() inside deferred()
            self.conversions.append((outputs[0].key, next(iter(reads))))

    def _arguments(self, schema: Any, args: tuple, kwargs: dict) -> tuple[list[TensorRef], set[int]]:
        """The meta tensors an op writes, and the storages of those it only reads (all kept alive)."""
        written = mutated(schema)
        writes: list[TensorRef] = []
        reads: set[int] = set()
        for i, value in enumerate(bind(schema, args, kwargs)):
            for t in tensors(value):
                if not t.is_meta:
                    continue
                self._keep(t)
                if i in written:
                    writes.append(TensorRef.of(t))
                else:
                    reads.add(storage_key(t))
        return writes, reads

    def _new_storages(self, result: Any, input_keys: set[int]) -> list[TensorRef]:
        """The meta tensors in an op's ``result`` on storages neither its inputs nor earlier ops had (kept alive)."""
        outputs = []
        for t in tensors(result):
            if t.is_meta and storage_key(t) not in input_keys and storage_key(t) not in self.produced:
                self._keep(t)
                outputs.append(TensorRef.of(t))
        return outputs

    # ---- replay ----------------------------------------------------------------------------------------

    def live_ops(self, wanted: Iterable[int]) -> tuple[list[int], set[int]]:
        """Indices of the operations that decide the values of the ``wanted`` storages, and the undefined ones.

        A backward pass: an operation is live when it writes a storage whose current value
        a later live operation (or the caller) reads, or creates a storage that a live
        operation uses. An overwrite of the whole storage ends the need for earlier values.
        """
        need_value = set(wanted)
        need_exists = set(need_value)
        live: list[int] = []
        undefined: set[int] = set()
        for i in range(len(self.ops) - 1, -1, -1):
            op = self.ops[i]
            written = {w.key for w in op.writes}
            created = {o.key for o in op.outputs}
            if not (written & need_value or created & (need_exists | need_value)):
                continue
            live.append(i)
            need_value -= op.overwrites()
            for key in created:
                if key in need_value and op.undefined:
                    undefined.add(key)
                need_value.discard(key)
                need_exists.discard(key)
            if (op.undefined or op.shape_only) and op.outputs:
                continue  # an empty or *_like factory reads no values: its inputs need not exist (shape stand-ins)
            need_value |= op.reads
            need_exists |= op.reads | written
        live.reverse()
        return live, undefined

    def evaluate(self, metas: list[torch.Tensor], device: torch.device) -> list[torch.Tensor] | None:
        """The values the meta tensors ``metas`` hold at this point of the recording, computed on ``device``; None
        when one is not known (not recorded here) or not decided yet without randomness (a random operation or
        undefined memory decides it: computing it now would differ from eager construction).

        What construction needs for real while it runs (a buffer table built with a parameter's device, copied into
        a real buffer); later operations do not change what this computed.
        """
        keys = {storage_key(t) for t in metas}
        if not all(key in self.produced for key in keys):
            return None
        live, undefined = self.live_ops(keys)
        if undefined or any(self.ops[i].random for i in live):
            return None
        replayed = self.replay(keys, device)
        return [replayed.tensor(t).clone() for t in metas]

    def replay(
        self,
        wanted: Iterable[int],
        device: torch.device,
        *,
        generator_for: GeneratorFor | None = None,
        fill: Fill | None = None,
    ) -> Replay:
        """Run the live operations for ``wanted`` storages on ``device``; return the real storages.

        Args:
            wanted: storage keys whose final values are needed.
            device: where storages are created (a recorded ``device="meta"`` becomes this).
            generator_for: given a random operation's index and op, the generator it draws from
                (None keeps the recorded one, usually the global RNG).
            fill: an optional fast path for random operations that write a tensor: called with
                the real target, the op, the generator it would draw from (None: the
                recorded one) and the op's index; returns True when it filled the tensor itself.
        """
        live, undefined = self.live_ops(wanted)
        result = Replay({}, undefined)
        for i in live:
            op = self.ops[i]
            if op.func == "leaf":
                (ref,) = op.outputs
                result.storages[ref.key] = _leaf_storage(ref, op.args[0], device, zero=ref.key in undefined)
            elif op.outputs and op.undefined:  # an empty factory: allocate, zero only what stays undefined
                for ref in op.outputs:  # (an empty_like's input gave only a shape: it need not exist)
                    result.storages[ref.key] = _new_storage(ref, device, zero=ref.key in undefined)
            else:
                _run(i, op, result, device, generator_for, fill)
        return result


def _run(
    i: int, op: Op, result: Replay, device: torch.device, generator_for: GeneratorFor | None, fill: Fill | None
) -> None:
    """Run the live operation ``op`` (the ``i``-th) on real tensors, keeping the storages it creates in ``result``."""
    real = functools.partial(_real, result=result, device=device, shape_only=op.shape_only)
    args, kwargs = tree_map(real, op.args), tree_map(real, op.kwargs)
    gen = generator_for(i, op) if op.random and generator_for is not None else None
    if op.random and fill is not None and op.writes and fill(result.tensor(op.writes[0]), op, gen, i):
        return
    if gen is not None and (op.name in RANDOM_WITHOUT_GENERATOR or not _takes_generator(op.func)):
        with seeded_torch_rng(gen):
            out = op.func(*args, **kwargs)
    else:
        if gen is not None and kwargs.get("seed") is None:  # a call recorded with seed= is keyed already
            kwargs["generator"] = gen
        out = op.func(*args, **kwargs)
    for ref, t in zip(op.outputs, tensors(out)):
        result.storages[ref.key] = t


def _out_keys(schema: Any, args: tuple, kwargs: dict) -> frozenset[int]:
    """The storages of the meta tensors an op is given as its ``out=`` arguments."""
    bound = bind(schema, args, kwargs)
    return frozenset(storage_key(t) for i, a in enumerate(schema.arguments) if getattr(a, "is_out", False)
                     for t in tensors(bound[i]) if t.is_meta)  # fmt: skip


def _takes_generator(func: Any) -> bool:
    """Whether ``func`` takes a ``generator`` argument: an ATen op by its schema, a Python function by its signature."""
    schema = getattr(func, "_schema", None)
    if schema is not None:
        return any(a.name == "generator" for a in schema.arguments)
    try:
        return "generator" in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False


def _real(x: Any, *, result: Replay, device: torch.device, shape_only: bool = False) -> Any:
    """A recorded argument as the replay passes it: a meta tensor as its real counterpart (or, for a factory that
    reads only metadata, an unwritten tensor of its geometry), meta as ``device``."""
    if isinstance(x, TensorRef):
        return shape_stand_in(x, device) if shape_only else result.tensor(x)
    if isinstance(x, torch.device) and x.type == "meta":
        return device
    return x


def _leaf_storage(ref: TensorRef, value: Any, device: torch.device, *, zero: bool) -> torch.Tensor:
    """The real storage of a leaf: a copy of its given ``value``, or, for :data:`UNDEFINED`, a new storage
    (zeroed when ``zero``: no garbage, what construction left undefined is zero)."""
    if value is UNDEFINED:
        return _new_storage(ref, device, zero=zero)
    base = torch.empty_strided(ref.size, ref.stride, dtype=ref.dtype, device=device)
    base.copy_(value)
    return base


def _new_storage(ref: TensorRef, device: torch.device, *, zero: bool) -> torch.Tensor:
    """A real tensor whose storage matches the meta one (its whole extent), as a flat base for views."""
    return (torch.zeros if zero else torch.empty)(ref.nbytes // ref.dtype.itemsize, dtype=ref.dtype, device=device)
