"""Record what construction does to meta tensors, and replay only what decides their final values.

This is the mechanism behind :func:`~torchinit.deferred` and :func:`~torchinit.materialize_`
(issue 11). While a model is built, every ATen operation that touches a meta tensor is
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
"""

from __future__ import annotations

import functools
import inspect
import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from torchinit.recording.inits import RECORDED_NAMES, recorded_name
from torchinit.rng.seeds import seeded_global_rng

__all__ = [
    "Recording", "RecordingMode", "Replay", "TensorRef", "UNDEFINED", "claim", "recording_of", "storage_key",
    "thread_recordings", "recorded_call",
]  # fmt: skip

#: In-place operations whose result does not depend on the tensor's previous values: when they
#: cover the whole storage, every earlier write to it is dead.
#: The torch.nn.init functions recorded whole (Recording.record_call: they return at once on meta tensors) are
#: among them.
_OVERWRITES = {
    "uniform_", "normal_", "fill_", "zero_", "copy_", "random_", "bernoulli_", "exponential_",
    "geometric_", "cauchy_", "log_normal_",
} | RECORDED_NAMES  # fmt: skip

#: Factories whose values are undefined (uninitialized memory).
_UNDEFINED_FACTORIES = {"empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided", "empty_permuted"}

#: In-place operations that change a tensor's metadata (its storage, shape or strides), not values:
#: they run on meta while recording and need no replay, since operations refer to storages.
_METADATA_OPS = {"set_", "resize_", "resize_as_", "as_strided_", "squeeze_", "unsqueeze_", "transpose_", "t_",
                 "swapdims_", "swapaxes_", "_coalesced_"}  # fmt: skip


def storage_key(t: torch.Tensor) -> int:
    """The identity of ``t``'s storage (shared by its views and by ``.data``)."""
    return t.untyped_storage()._cdata


@dataclass(frozen=True)
class TensorRef:
    """A meta tensor in the log: its storage and geometry (never the tensor, so parameters can die)."""

    key: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int
    dtype: torch.dtype
    nbytes: int  # of the whole storage

    @classmethod
    def of(cls, t: torch.Tensor) -> TensorRef:
        return cls(storage_key(t), tuple(t.shape), tuple(t.stride()), t.storage_offset(), t.dtype,
                   t.untyped_storage().nbytes())  # fmt: skip

    def covers_storage(self) -> bool:
        """Whether the tensor spans every byte of its storage exactly once."""
        numel = 1
        for s in self.size:
            numel *= s
        if numel * self.dtype.itemsize != self.nbytes or self.offset != 0:
            return False
        expected = 1  # dense and non-overlapping: sorted strides form a contiguous layout
        for size, stride in sorted(zip(self.size, self.stride), key=lambda p: p[1]):
            if size != 1 and stride != expected:
                return False
            expected *= size
        return True


UNDEFINED = object()  # the value of a parameter created from uninitialized memory


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

    @property
    def name(self) -> str:
        if isinstance(self.func, str):
            return self.func
        schema = getattr(self.func, "_schema", None)
        if schema is None:  # an init function recorded whole
            return recorded_name(self.func)
        return schema.name.split("::")[-1]

    def overwrites(self) -> set[int]:
        """Storages this operation sets entirely without reading their previous values."""
        if not self.whole and self.name not in _OVERWRITES:
            return set()
        return {w.key for w in self.writes if w.covers_storage() and w.key not in self.reads}


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
        random = "generator" in inspect.signature(func).parameters
        op = Op(func, (ref, *args), dict(kwargs), writes=(ref,), random=random, whole=True)
        if ref.key not in op.overwrites():
            op.reads = frozenset({ref.key})
        self.ops.append(op)

    def record(self, func: Any, args: tuple, kwargs: dict, result: Any) -> None:
        """Append ``func(*args, **kwargs) -> result`` (called by :class:`RecordingMode`)."""
        schema = func._schema
        written = _mutated(schema)
        bound = _bind(schema, args, kwargs)
        writes, reads = [], set()
        for i, value in enumerate(bound):
            for t in _tensors(value):
                if not t.is_meta:
                    continue
                self._keep(t)
                if i in written:
                    writes.append(TensorRef.of(t))
                else:
                    reads.add(storage_key(t))
        name = schema.name.split("::")[-1]
        outputs = []
        input_keys = {storage_key(t) for t in _tensors((args, kwargs)) if t.is_meta}
        for t in _tensors(result):
            if t.is_meta and storage_key(t) not in input_keys and storage_key(t) not in self.produced:
                self._keep(t)
                outputs.append(TensorRef.of(t))
        op = Op(
            func,
            tree_map(_ref_or_value, args),
            tree_map(_ref_or_value, kwargs),
            outputs=tuple(outputs),
            writes=tuple(writes),
            reads=frozenset(reads),
            random=any(a.name == "generator" for a in schema.arguments) or name in _RANDOM_WITHOUT_GENERATOR,
            undefined=name in _UNDEFINED_FACTORIES,
        )
        for w in writes:  # an in-place op that is not an overwrite reads what it modifies
            if w.key not in op.overwrites():
                op.reads = op.reads | {w.key}
        for ref in outputs:
            self.produced[ref.key] = len(self.ops)
        if writes or outputs:  # a pure view or a read with no meta result decides nothing
            self.ops.append(op)

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
            if op.undefined and op.outputs:
                continue  # an empty factory reads nothing, and needs its inputs only for their shapes
            need_value |= op.reads
            need_exists |= op.reads | written
        live.reverse()
        return live, undefined

    def replay(
        self,
        wanted: Iterable[int],
        device: torch.device,
        *,
        generator_for: Callable[[int, Op], torch.Generator | None] | None = None,
        fill: Callable[[torch.Tensor, Op, torch.Generator | None, int], bool] | None = None,
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
        storages: dict[int, torch.Tensor] = {}
        result = Replay(storages, undefined)

        def real(x: Any) -> Any:
            if isinstance(x, TensorRef):
                return result.tensor(x)
            if isinstance(x, torch.device) and x.type == "meta":
                return device
            return x

        for i in live:
            op = self.ops[i]
            if op.func == "leaf":
                (ref,) = op.outputs
                value = op.args[0]
                if value is UNDEFINED:
                    zeros = ref.key in undefined  # no garbage: what construction left undefined is zero
                    base = _new_storage(ref, device, zero=zeros)
                else:
                    base = torch.empty_strided(ref.size, ref.stride, dtype=ref.dtype, device=device)
                    base.copy_(value)
                storages[ref.key] = base
                continue
            if op.outputs and op.undefined:  # an empty factory: allocate, zero only what stays undefined
                for ref in op.outputs:  # (an empty_like's input gave only a shape: it need not exist)
                    storages[ref.key] = _new_storage(ref, device, zero=ref.key in undefined)
                continue
            args, kwargs = tree_map(real, op.args), tree_map(real, op.kwargs)
            if op.random:
                gen = generator_for(i, op) if generator_for is not None else None
                if fill is not None and op.writes and fill(result.tensor(op.writes[0]), op, gen, i):
                    continue
                if gen is not None and op.name in _RANDOM_WITHOUT_GENERATOR:
                    with seeded_global_rng(gen):
                        out = op.func(*args, **kwargs)
                    _keep_outputs(storages, op, out)
                    continue
                if gen is not None and kwargs.get("seed") is None:  # a call recorded with seed= is keyed already
                    kwargs["generator"] = gen
            out = op.func(*args, **kwargs)
            _keep_outputs(storages, op, out)
        return result


def _keep_outputs(storages: dict[int, torch.Tensor], op: Op, out: Any) -> None:
    if op.outputs:
        for ref, t in zip(op.outputs, _tensors(out)):
            storages[ref.key] = t


def _new_storage(ref: TensorRef, device: torch.device, *, zero: bool) -> torch.Tensor:
    """A real tensor whose storage matches the meta one (its whole extent), as a flat base for views."""
    return (torch.zeros if zero else torch.empty)(ref.nbytes // ref.dtype.itemsize, dtype=ref.dtype, device=device)


def _mutated(schema: Any) -> tuple[int, ...]:
    """The positions (in schema order) of the arguments an op writes."""
    return tuple(i for i, a in enumerate(schema.arguments) if a.alias_info is not None and a.alias_info.is_write)


def _bind(schema: Any, args: tuple, kwargs: dict) -> list[Any]:
    """The value of each schema argument, in schema order (defaults as None)."""
    values = []
    for i, a in enumerate(schema.arguments):
        if i < len(args):
            values.append(args[i])
        else:
            values.append(kwargs.get(a.name))
    return values


def _tensors(value: Any, found: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """The tensors in an op's arguments or results, in order (ATen nests only tuples, lists and dicts)."""
    found = [] if found is None else found
    if isinstance(value, torch.Tensor):
        found.append(value)
    elif isinstance(value, (tuple, list)):
        for v in value:
            _tensors(v, found)
    elif isinstance(value, dict):
        for v in value.values():
            _tensors(v, found)
    return found


def _ref_or_value(x: Any) -> Any:
    if isinstance(x, torch.Tensor):  # a real tensor is taken by value: construction may change it later
        return TensorRef.of(x) if x.is_meta else x.detach().clone()
    return x


#: Random ops whose schema (or one of whose overloads) has no generator argument: replayed under a seeded global
#: RNG (see Recording.replay).
_RANDOM_WITHOUT_GENERATOR = {"rand_like", "randn_like", "randint_like", "rand", "randn", "randint", "randperm",
                             "normal", "bernoulli", "multinomial", "poisson"}


class RecordingMode(TorchDispatchMode):
    """Appends every operation on meta tensors to a :class:`Recording`; mutations of meta tensors are skipped.

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
        self.paused = False  # set while torchinit itself creates tensors that are not construction's

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if self.paused:
            return func(*args, **kwargs)
        name = func._schema.name.split("::")[-1]
        tensors = _tensors((args, kwargs))
        touches_meta = any(t.is_meta for t in tensors) or _device_is_meta(kwargs)
        if not touches_meta:
            out = func(*args, **kwargs)
            if self.fresh or name in _UNDEFINED_FACTORIES:
                self._track_fresh(func, name, args, kwargs, out)
            return out
        if name in _METADATA_OPS:
            return func(*args, **kwargs)
        schema = func._schema
        mutated = _mutated(schema)
        if mutated and all(_returns_alias(schema)):
            bound = _bind(schema, args, kwargs)
            if all(isinstance(bound[i], torch.Tensor) and bound[i].is_meta for i in mutated if bound[i] is not None):
                if name not in _META_SKIPPED:  # a meta kernel checks shapes and dtypes, so errors surface now
                    func(*tree_map(_on_meta, args), **tree_map(_on_meta, kwargs))
                self.recording.record(func, args, kwargs, None)
                returned = [bound[i] for i in mutated]
                return returned[0] if len(returned) == 1 else tuple(returned)
        out = func(*args, **kwargs)
        self.recording.record(func, args, kwargs, out)
        for t in _tensors(out):
            if t.is_meta:
                claim(t, self.recording)
        return out

    def _track_fresh(self, func: Any, name: str, args: tuple, kwargs: dict, out: Any) -> None:
        schema = func._schema
        bound = _bind(schema, args, kwargs)
        inputs = _tensors((args, kwargs))
        read_fresh = any(storage_key(t) in self.fresh for t in inputs)
        for i in _mutated(schema):
            for t in _tensors(bound[i]):
                key = storage_key(t)
                if key in self.fresh and name in _OVERWRITES and TensorRef.of(t).covers_storage():
                    reads = {storage_key(x) for x in inputs if x is not t}
                    if key not in reads:
                        del self.fresh[key]  # set entirely: defined now (a partial write leaves it undefined)
        for t in _tensors(out):
            if any(t is x for x in inputs):
                continue
            if name in _UNDEFINED_FACTORIES or read_fresh:  # made empty, or computed from uninitialized memory
                self.fresh[storage_key(t)] = t
            else:
                self.fresh.pop(storage_key(t), None)

    def is_undefined(self, t: torch.Tensor) -> bool:
        """Whether the real tensor ``t`` still holds (some of) the uninitialized memory it was created with."""
        return storage_key(t) in self.fresh

    def release(self, t: torch.Tensor) -> None:
        """Stop tracking ``t``'s storage (it was registered as a parameter and replaced by a meta one)."""
        self.fresh.pop(storage_key(t), None)


#: In-place ops whose meta kernel torch 2.13 implements in Python (importing its meta registrations costs ~2 s on
#: first use): they are recorded without running on meta. They only fill values, so there is nothing to check.
_META_SKIPPED = {"normal_", "uniform_", "erfinv_", "exponential_", "log_normal_", "geometric_", "cauchy_",
                 "random_", "bernoulli_"}  # fmt: skip


def _on_meta(x: Any) -> Any:
    """A real tensor argument as a meta tensor (for a meta kernel's checks); anything else as it is."""
    if isinstance(x, torch.Tensor) and not x.is_meta and x.dim() > 0:
        return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device="meta")
    return x


def _device_is_meta(kwargs: dict) -> bool:
    device = kwargs.get("device")
    return device is not None and torch.device(device).type == "meta"


def _returns_alias(schema: Any) -> list[bool]:
    return [r.alias_info is not None for r in schema.returns] or [True]


# ---- the recordings open in this thread, and whole-call recording of init functions ---------------------

_LOCAL = threading.local()


def thread_recordings() -> list[tuple[Recording, RecordingMode]]:
    """The (recording, mode) pairs of the ``deferred()`` contexts open in this thread, innermost last."""
    if not hasattr(_LOCAL, "stack"):
        _LOCAL.stack = []
        _LOCAL.calling = False
    return _LOCAL.stack


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


# ---- which recording a meta tensor belongs to -----------------------------------------------------------

# A meta tensor keeps its recording alive (the recording holds storages, never the tensors, so no cycle);
# the recording is freed with the last meta tensor that came from it, typically at materialization.
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

