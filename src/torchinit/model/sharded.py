"""Materializing a model whose meta parameters are DTensors (FSDP2, tensor parallel): each rank allocates its
shards through ``Module._apply``, the own init writes each rank's shard directly where it is a whole-tensor fill
(else it is replayed one whole tensor at a time and each rank keeps its part), and rules run locally on the
shards (``docs/sharded.md``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from torchinit._util.warn import quiet
from torchinit.model.policy import (
    InitReport,
    Planned,
    run_unit,
)
from torchinit.model.reenact import reenact
from torchinit.model.replay import _keyed_twin, replay_recording, write_full_value
from torchinit.model.slots import Slot, find_unknown, slot_report, stream_names, wanted_by_recording
from torchinit.model.snapshot import Snapshot
from torchinit.model.standins import parameter_like
from torchinit.recording.log import (
    Op,
    Recording,
    TensorRef,
    recording_of,
    storage_key,
)
from torchinit.rng.fastfill import recorded_fill
from torchinit.rng.sampling import is_dtensor, local_region, make_sampler
from torchinit.rng.seeds import canonical_name, derive_seed, stream_kwargs


def materialize_sharded(model: nn.Module, plans: list[Planned], slots: list[Slot], device: torch.device | None,
                         strict: bool, generator: torch.Generator | None, seed: int | None) -> InitReport:
    """:func:`materialize_` for a model with meta DTensor parameters: each rank gets memory for its shards only.

    1. The values of the tensors no rule covers: a plain tensor recorded under
       :func:`deferred` keeps its recording; the others (every DTensor: ``fully_shard``
       replaces the recorded parameters) are re-enacted on meta (each module's
       ``reset_parameters``, the model's init method) on plain stand-ins of their full shapes.
       Nothing is computed yet.
    2. Every meta DTensor gets memory through ``Module._apply``, as ``to_empty`` does, so
       FSDP2 re-registers its sharded parameters; every plain meta tensor gets one new
       tensor, registered wherever the old one was (ties and shared buffers stay shared).
       Parameters keep their class, ``requires_grad`` and Python attributes.
    3. The own-init values are written. A DTensor whose value is one whole-tensor fill (``fill_``,
       ``zero_``, ``ones_``/``zeros_``/``constant_``, and with ``seed`` a ``normal_``/``uniform_``
       or a recorded call with a keyed twin such as ``trunc_normal_``) gets it on its local shard
       only, bit for bit the part of the whole tensor. Any other value is replayed into a full-size
       temporary, written (a DTensor keeps its part) and freed, so the peak is the sharded model
       plus the largest such tensor. Without ``seed`` or ``generator``, the global RNG is drawn in
       the recorded construction order, as one process draws it. Then the rules run on the
       DTensors: with ``seed`` an element-wise scheme generates only the local shard.

    If anything raises, the new memory is released (the tensors are meta again) and the
    registrations are restored.
    """
    keyed = seed is not None
    base_seed = derive_seed(generator) if seed is None else seed
    if device is None:
        device = _mesh_device(slots)
    uncovered = [s for s in slots if s.plan is None or s.plan.initializer is None]
    for s in slots:
        s.recording = None if is_dtensor(s.tensor) else recording_of(s.tensor)
    allocator = _ShardAllocator(device)
    snapshot = Snapshot(model, generator=generator)
    with snapshot.on_failure():
        try:
            sources, names = _own_init_sources(model, slots, uncovered, strict)  # recorded or re-enacted, on meta
            with torch.no_grad():
                _allocate(model, slots, allocator)
                _write_own_init(list(zip(uncovered, sources)), device, names, base_seed, keyed)
                for p in plans:
                    p.param = getattr(p.owner.module, p.owner.attr)
                _apply_rules_in_place(plans, {s.name for s in slots}, base_seed, keyed, model)
        except BaseException:
            model._apply(allocator.release)
            raise
    for s in slots:
        if s.plan is not None and s.plan.initializer is not None:
            s.source = s.plan.source
    return slot_report(plans, slots)


class _ShardAllocator:
    """``Module._apply`` functions that give each meta DTensor memory on ``device`` (its local shard), and take it
    back (meta again) after a failure."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.allocated: set[int] = set()

    def allocate(self, t: Tensor) -> Tensor:
        if not (t.is_meta and is_dtensor(t)):
            return t
        new = torch.empty_like(t, device=self.device)
        self.allocated.update((id(t), id(new)))
        return new

    def release(self, t: Tensor) -> Tensor:
        return torch.empty_like(t, device="meta") if id(t) in self.allocated else t


def _allocate(model: nn.Module, slots: list[Slot], allocator: _ShardAllocator) -> None:
    """Memory for every meta tensor: DTensors through ``Module._apply`` (FSDP2 re-registers them; their Python
    attributes are carried over), plain ones registered wherever they were."""
    attributes = {s.name: dict(vars(s.tensor)) for s in slots if is_dtensor(s.tensor)}
    model._apply(allocator.allocate)
    _allocate_plain(slots, allocator.device)
    for s in slots:
        if s.name in attributes:
            _keep_attributes(_registered(s), attributes[s.name])


def _write_own_init(pairs: list[tuple[Slot, Slot]], device: torch.device, names: dict[int, str],
                    base_seed: int | None, keyed: bool) -> None:
    """Write the own-init value of each ``(slot, source)``: on the local shard where it is a whole-tensor fill,
    else replayed into full-size temporaries (one group at a time), each rank keeping its part."""
    lives = {rec: rec.live_ops(_keys_of(pairs, rec))[0] for rec in _recordings(pairs)}
    for group in _replay_groups(pairs, in_recorded_order=base_seed is None):
        s, src = group[0]
        assert src.recording is not None  # recorded under deferred(), or re-enacted
        if len(group) == 1 and _fill_locally(_registered(s), src, lives[src.recording], names, base_seed, keyed):
            continue
        with quiet():  # a replayed call warned when it ran at construction
            replay = replay_recording(src.recording, {g.key for _, g in group}, device, names, base_seed, keyed)
        for s, src in group:
            write_full_value(_registered(s), replay.tensor(src.tensor))
        del replay  # the temporaries go before the next group's


def _recordings(pairs: list[tuple[Slot, Slot]]) -> list[Recording]:
    """The recordings of the sources, in the order the slots first name them (as a one-process replay runs them)."""
    return list(dict.fromkeys(src.recording for _, src in pairs if src.recording is not None))


def _keys_of(pairs: list[tuple[Slot, Slot]], rec: Recording) -> set[int]:
    return {src.key for _, src in pairs if src.recording is rec}


def _replay_groups(pairs: list[tuple[Slot, Slot]], in_recorded_order: bool) -> list[list[tuple[Slot, Slot]]]:
    """The replays to run, in order: one slot each, except that with the global RNG (``in_recorded_order``) the
    slots of one recording run in the order of their first random operation, and slots whose random operations
    interleave (or share one) run together, so the global RNG is drawn exactly in the recorded order."""
    if not in_recorded_order:
        return [[pair] for pair in pairs]
    groups: list[list[tuple[Slot, Slot]]] = []
    for rec in _recordings(pairs):
        spans = []
        for pair in (p for p in pairs if p[1].recording is rec):
            randoms = [i for i in rec.live_ops({pair[1].key})[0] if rec.ops[i].random]
            spans.append((min(randoms, default=-1), max(randoms, default=-1), pair))
        spans.sort(key=lambda span: span[0])  # stable: slots without random operations keep their order
        last = -1
        for first, end, pair in spans:
            if first < 0 or first > last:
                groups.append([pair])
            else:
                groups[-1].append(pair)
            last = max(last, end) if first >= 0 else last
    return groups


#: Recorded operations whose value on a whole tensor is the same at every element: run on the local shard as is.
_CONSTANT_FILLS = frozenset({"fill_", "zero_", "ones_", "zeros_", "constant_"})


def _fill_locally(t: Tensor, src: Slot, live: list[int], names: dict[int, str], base_seed: int | None,
                  keyed: bool) -> bool:
    """Write the own-init value of the DTensor ``t`` on its local shard only, when that value is the last of a
    few whole-tensor fills (see :func:`_local_fill`); False (nothing written) otherwise.

    The stream of a random fill is the one a replay of the whole recording would give it: the ``k``-th
    random operation on the tensor named ``n`` draws from ``n`` or ``n#k``, ``k`` counted over the live
    operations of the recording (``docs/keyed_rng.md``).
    """
    assert src.recording is not None
    ops = _writes_after_creation(src.recording, live, src.key) if is_dtensor(t) else None
    if ops is None or not all(_local_fill(op, src.tensor, t, keyed) for op in ops):
        return False
    if not ops:  # construction left it undefined: zeros, as a replay gives (find_unknown named it)
        t.to_local().zero_()  # type: ignore[attr-defined]
        return True
    op, k = ops[-1], sum(o.random for o in ops[:-1])  # the earlier fills are overwritten: only the last is run
    name = names.get(src.key, src.name)
    _run_fill(op, t, base_seed, name if k == 0 else f"{name}#{k}")
    return True


def _writes_after_creation(rec: Recording, live: list[int], key: int) -> list[Op] | None:
    """The live operations that write storage ``key`` after the one that creates it with undefined contents (a
    re-enactment's stand-in, an empty factory); None when another kind of operation creates it."""
    mine = [rec.ops[i] for i in live if any(ref.key == key for ref in (*rec.ops[i].writes, *rec.ops[i].outputs))]
    if not mine or not (mine[0].undefined and len(mine[0].outputs) == 1 and not mine[0].writes):
        return None
    return None if any(op.outputs for op in mine[1:]) else mine[1:]


def _local_fill(op: Op, ghost: Tensor, t: Tensor, keyed: bool) -> bool:
    """Whether ``op`` writes every element of ``ghost`` (``t``'s full-shape stand-in) with values that the local
    shard can compute alone: a constant fill, or with ``keyed`` a keyed-stream fill of a real floating dtype."""
    if len(op.writes) != 1 or op.writes[0] != TensorRef.of(ghost) or op.reads - {op.writes[0].key}:
        return False
    if any(isinstance(a, (TensorRef, Tensor)) for a in (*op.args[1:], *op.kwargs.values())):
        return False
    if op.name in _CONSTANT_FILLS and not op.random:
        return True
    if not (keyed and op.random and ghost.dtype.is_floating_point and local_region(t) is not None):
        return False
    if recorded_fill(op) is not None:
        return True
    return _keyed_twin(op.func) is not None and op.kwargs.get("seed") is None


def _run_fill(op: Op, t: Tensor, seed: int | None, name: str) -> None:
    """Run the whole-tensor fill ``op`` on the DTensor ``t``'s local shard (a random one from the keyed stream
    ``(seed, name)`` at the shard's global indices)."""
    if not op.random:
        op.func(t.to_local(), *op.args[1:], **op.kwargs)  # type: ignore[attr-defined]
        return
    fill = recorded_fill(op)
    if fill is not None:
        kind, (a, b) = fill
        make_sampler(seed=seed, name=name).fill(t, kind, a, b)
        return
    kwargs = {k: v for k, v in op.kwargs.items() if k != "generator"}
    with quiet():  # a replayed call warned when it ran at construction
        _keyed_twin(op.func)(t, *op.args[1:], **kwargs, seed=seed, name=name)


def _mesh_device(slots: list[Slot]) -> torch.device:
    """Where a sharded model's memory goes by default: its meshes' device type (the current device for CUDA)."""
    kind = next(s.tensor.device_mesh.device_type for s in slots if is_dtensor(s.tensor))  # type: ignore[attr-defined]
    if kind == "cuda" and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(kind)


def _registered(s: Slot) -> Tensor:
    _, module, attr = s.places[0]
    return getattr(module, attr)


def _allocate_plain(slots: list[Slot], device: torch.device) -> None:
    """One new tensor for each plain meta slot, registered in every place the slot had (ties stay tied)."""
    for s in slots:
        if is_dtensor(s.tensor) or not s.tensor.is_meta:
            continue
        new = torch.empty_strided(s.tensor.shape, s.tensor.stride(), dtype=s.tensor.dtype, device=device)
        s.register(parameter_like(s.tensor, new) if s.is_parameter else new)


def _keep_attributes(param: Tensor, saved: dict[str, Any]) -> None:
    """Give ``param`` the Python attributes it had before ``Module._apply`` replaced it (``no_decay`` flags...)."""
    for key, value in saved.items():
        if key not in vars(param):
            setattr(param, key, value)


def _own_init_sources(model: nn.Module, slots: list[Slot], uncovered: list[Slot],
                      strict: bool) -> tuple[list[Slot], dict[int, str]]:
    """For each uncovered slot, the slot whose recording gives its value: itself when it was recorded under
    :func:`deferred`, else a plain meta stand-in of its full shape in a re-enactment of the model's own init; and
    the qualified name of every storage the recordings know (the names of the random streams)."""
    names = stream_names([s for s in slots if s.recording is not None], model)
    if not uncovered:
        return [], names
    unrecorded = [s for s in uncovered if s.recording is None]
    by_id: dict[int, Slot] = {}
    if unrecorded:
        ghost_slots, ghost_names = _reenact_on_full_shapes(model, slots, unrecorded)
        by_id = {id(s): g for s, g in zip(unrecorded, ghost_slots)}
        names.update(ghost_names)
    sources = [by_id.get(id(s), s) for s in uncovered]
    find_unknown(sources, wanted_by_recording(sources), strict)
    for src, s in zip(sources, uncovered):
        s.source, s.writers = src.source or ("reset_parameters" if src is not s else "construction"), src.writers
    return sources, names


def _reenact_on_full_shapes(model: nn.Module, slots: list[Slot],
                            unrecorded: list[Slot]) -> tuple[list[Slot], dict[int, str]]:
    """Re-enact the model's own init with every meta DTensor and every ``unrecorded`` slot replaced by a plain meta
    tensor of its full shape (the init code must see plain tensors); the model is put back afterwards.

    Returns a slot of the re-enactment for each of ``unrecorded``, and the names of the stand-ins' storages.
    """
    swap = Snapshot(model)
    ghosts: dict[int, Tensor] = {}
    wanted_ids = {id(s) for s in unrecorded}
    try:
        for s in slots:
            if is_dtensor(s.tensor) or id(s) in wanted_ids:
                ghost = torch.empty(s.tensor.shape, dtype=s.tensor.dtype, device="meta")
                if isinstance(s.tensor, nn.Parameter):
                    ghost = nn.Parameter(ghost, requires_grad=s.tensor.requires_grad)
                ghosts[id(s.tensor)] = ghost
                s.register(ghost)
        ghost_slots = [Slot(ghosts[id(s.tensor)], s.places, s.is_parameter, s.plan) for s in unrecorded]
        recording = reenact(model, ghost_slots)
    finally:
        swap.restore()
    for g in ghost_slots:
        g.recording = recording
    names = {storage_key(ghosts[id(s.tensor)]): canonical_name(s.name, model) for s in slots if id(s.tensor) in ghosts}
    return ghost_slots, names


def _apply_rules_in_place(plans: list[Planned], names: set[str], base_seed: int | None, keyed: bool,
                          root: nn.Module) -> None:
    """Run the rules of the (now allocated) parameters named in ``names``, module-level units first."""
    mine = [p for p in plans if p.initializer is not None and p.name in names]
    done: set[tuple[int, int]] = set()
    for p in mine:
        if p.unit is not None and p.first_of_unit(done):
            run_unit(p, plans, **stream_kwargs(base_seed, p.unit[0], p.param.device, keyed, root))
    for p in mine:
        if p.unit is None:
            p.run(**stream_kwargs(base_seed, p.name, p.param.device, keyed, root))
