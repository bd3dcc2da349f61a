"""Replaying a recording on real tensors: with the global RNG or a generator as recorded, or keyed.

A keyed replay draws the k-th random operation on the tensor named ``n`` from the stream ``n`` (k = 0) or
``n#k`` (``docs/keyed_rng.md``); recorded ``torch.nn.init`` calls that torchinit has a keyed twin of run as
the twin. :func:`replay_program_` re-runs a module's own init program this way (``torch_reset_(seed=)``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from torchinit._util.tensors import is_uninitialized, tensor_stores
from torchinit._util.warn import quiet
from torchinit.model.construction import (
    weight_norm_hooks,
)
from torchinit.model.deferral import Rehearsal, names_through_copies
from torchinit.model.standins import full_meta_like, meta_like
from torchinit.recording.inits import keyed_twin_name
from torchinit.recording.log import (
    UNDEFINED,
    Op,
    Recording,
    Replay,
    storage_key,
)
from torchinit.rng.fastfill import recorded_fill, replay_fill
from torchinit.rng.sampling import is_dtensor, local_part, make_sampler
from torchinit.rng.seeds import stream_generator
from torchinit.schemes.contract import SCHEMES


def writers_of(rec: Recording, live: list[int]) -> dict[int, list[str]]:
    """For each storage, the names of the live operations that write it (what the report shows)."""
    names: dict[int, list[str]] = {}
    for i in live:
        op = rec.ops[i]
        for ref in op.writes:
            names.setdefault(ref.key, []).append(op.name)
        for ref in op.outputs:
            if op.func == "leaf" and not op.undefined:
                names.setdefault(ref.key, []).append("constructor value")
    return names


def replay_recording(rec: Recording, keys: set[int], device: torch.device, names: dict[int, str], base_seed: int | None,
            keyed: bool) -> Replay:
    """Replay ``rec`` for ``keys``: each random operation draws from the stream of the tensor it writes.

    ``keyed``: ``base_seed`` is the user's seed and the keyed stream is drawn (:class:`_KeyedReplay`);
    otherwise a torch generator per name seeded from ``base_seed`` (None: the global RNG).
    """
    streams: dict[str, torch.Generator | None] = {}
    names = names_through_copies(rec, names)  # a deep copy's original draws as the copy's name: as materializing it

    def target(op: Op) -> int | None:
        return op.writes[0].key if op.writes else op.outputs[0].key if op.outputs else None

    # a random operation on a tensor that is not the model's (a constructor's temporary, a deep-copied template layer)
    # is named by its rank among such operations, so that the model's own tensors created before it do not move it
    unnamed: dict[int, int] = {}
    for j, o in enumerate(rec.ops):
        if o.random and target(o) not in names:
            unnamed[j] = len(unnamed)

    def name_of(i: int, op: Op) -> str:
        key = target(op)
        return (names.get(key) if key is not None else None) or f"#{unnamed.get(i, i)}:{op.name}"

    def generator_for(i: int, op: Op) -> torch.Generator | None:
        if base_seed is None:
            return None
        name = name_of(i, op)
        if name not in streams:
            streams[name] = stream_generator(base_seed, name, device)
        return streams[name]

    if not keyed:
        return rec.replay(keys, device, generator_for=generator_for, fill=replay_fill)
    assert base_seed is not None  # keyed: the user's seed
    return rec.replay(keys, device, generator_for=generator_for, fill=_KeyedReplay(base_seed, name_of).fill)


class _KeyedReplay:
    """The replay hook of ``materialize_(seed=...)``: recorded random fills drawn from the keyed stream.

    The ``k``-th random operation on the tensor named ``n`` draws from the stream named
    ``n`` (``k = 0``) or ``n#k``: ATen ``normal_``/``uniform_`` (on the tensor or a view of
    it), and the whole recorded calls of torchinit's initializers and of torch.nn.init's
    ``trunc_normal_``/``orthogonal_``/``sparse_`` (their torchinit twins, the same
    distributions). Anything else returns False: the replay then uses the op's generator.
    """

    def __init__(self, seed: int, name_of: Callable[[int, Op], str]) -> None:
        self.seed, self.name_of = seed, name_of
        self.counts: dict[str, int] = {}

    def _stream_name(self, i: int, op: Op) -> str:
        name = self.name_of(i, op)
        k = self.counts.get(name, 0)
        self.counts[name] = k + 1
        return name if k == 0 else f"{name}#{k}"

    def fill(self, tensor: Tensor, op: Op, generator: torch.Generator | None, index: int = -1) -> bool:
        fill = recorded_fill(op)
        if fill is not None:
            if not (tensor.dtype.is_floating_point or tensor.dtype.is_complex):
                return False
            kind, (a, b) = fill
            make_sampler(seed=self.seed, name=self._stream_name(index, op)).fill(tensor, kind, a, b)
            return True
        if getattr(op.func, "_schema", None) is not None or not callable(op.func):
            return False
        twin = _keyed_twin(op.func)
        if twin is None:
            return False
        kwargs = {k: v for k, v in op.kwargs.items() if k != "generator"}
        if kwargs.get("seed") is not None:  # the constructor itself asked for a keyed stream: as recorded
            return False
        twin(tensor, *op.args[1:], **kwargs, seed=self.seed, name=self._stream_name(index, op))
        return True


def _keyed_twin(func: Any) -> Any:
    """The function that draws ``func``'s distribution with ``seed=``/``name=``: ``func`` itself for torchinit's
    initializers, the torchinit twin for torch.nn.init's whole recorded calls; None otherwise."""
    if getattr(func, "__module__", "") == "torch.nn.init":
        twin = keyed_twin_name(func)
        return None if twin is None else SCHEMES[twin]
    try:
        takes_seed = "seed" in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return None
    return func if takes_seed and getattr(func, "__module__", "").startswith("torchinit.") else None


def replay_program_(module: nn.Module, program: Any, seed: int | None, prefix: str = "") -> nn.Module:
    """Run ``program(module)`` on meta stand-ins, then replay it into ``module``'s tensors; in place.

    The program is recorded on meta stand-ins of ``module``'s parameters and buffers (full
    shapes for DTensors; the module itself is not touched while it runs), then replayed as
    :func:`materialize_` replays construction. With ``seed``, the ``k``-th random operation
    on the tensor named ``n`` (its qualified name under ``prefix``) draws from the keyed
    stream ``n`` or ``n#k``; with None, from the global RNG in the program's order. The
    results are copied into the module's tensors, a DTensor keeping its part; a failure
    leaves them as they were.
    """
    with Rehearsal(module) as rehearsal:
        metas, names = _swap_in_program_stand_ins(module, rehearsal.recording, prefix)
        with rehearsal.running():
            program(module)
        # a parametrization's right_inverse moves its originals to new storages (set_): name them where they are now
        names.update({storage_key(meta): names[key] for key, (_, meta) in zip(list(names), metas.values())})
    if not metas:
        return module
    device = next(iter(metas.values()))[0].device
    wanted = {storage_key(meta) for _, meta in metas.values()}
    with quiet():  # the program's calls warned when they ran on the stand-ins
        replay = replay_recording(rehearsal.recording, wanted, device, names, seed, seed is not None)
    with torch.no_grad():
        values = [(t, replay.tensor(meta)) for t, meta in metas.values() if storage_key(meta) in replay.storages]
        for t, value in values:
            write_full_value(t, value)
    return module


def write_full_value(t: Tensor, value: Tensor) -> None:
    """Copy ``value``, the whole tensor, into ``t``; a DTensor keeps its rank's part (no communication)."""
    if is_dtensor(t):
        t.to_local().copy_(local_part(t, value))  # type: ignore[attr-defined]
    else:
        t.copy_(value)


def _swap_in_program_stand_ins(module: nn.Module, recording: Recording,
                               prefix: str) -> tuple[dict[int, tuple[Tensor, Tensor]], dict[int, str]]:
    """Register a meta stand-in for each real tensor of ``module`` (a DTensor: its full shape, value undefined),
    its value a leaf of ``recording``. Returns {id: (tensor, stand-in)} and the stand-ins' qualified names by
    storage."""
    metas: dict[int, tuple[Tensor, Tensor]] = {}
    names: dict[int, str] = {}
    for module_name, sub in module.named_modules(remove_duplicate=False):
        for store in tensor_stores(sub):
            for attr, t in list(store.items()):
                if t is None or is_uninitialized(t) or t.is_meta:
                    continue
                if id(t) not in metas:
                    sharded = is_dtensor(t)  # a stand-in of its full shape; its values are not read
                    meta = full_meta_like(t) if sharded else meta_like(t)
                    recording.add_leaf(meta, UNDEFINED if sharded else t.detach())
                    metas[id(t)] = (t, meta)
                    names[storage_key(meta)] = ".".join(x for x in (prefix, module_name, attr) if x)
                store[attr] = metas[id(t)][1]
        for hook in weight_norm_hooks(sub):  # torch.nn.utils.weight_norm keeps the computed weight as an attribute
            if isinstance(sub.__dict__.get(hook.name), Tensor):
                sub.__dict__[hook.name] = torch.empty_like(sub.__dict__[hook.name], device="meta")
    return metas, names
