"""Materializing a model whose meta parameters are DTensors (FSDP2, tensor parallel): each rank allocates its
shards through ``Module._apply``, the own init is replayed one whole tensor at a time and each rank keeps its
part, and rules run locally on the shards (``docs/sharded.md``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from torchinit.model.policy import (
    InitReport,
    Planned,
    run_unit,
)
from torchinit.model.reenact import reenact
from torchinit.model.replay import replay_recording, write_full_value
from torchinit.model.slots import Slot, find_unknown, slot_report, wanted_by_recording
from torchinit.model.snapshot import Snapshot
from torchinit.model.standins import parameter_like
from torchinit.recording.log import (
    recording_of,
    storage_key,
)
from torchinit.rng.sampling import is_dtensor
from torchinit.rng.seeds import derive_seed, stream_kwargs


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
    3. Each own-init value is replayed alone into a full-size temporary, written (a DTensor
       keeps its part) and freed, so the peak is the sharded model plus the largest tensor;
       then the rules run on the DTensors: with ``seed`` an element-wise scheme generates
       only the local shard.

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
                for s, src in zip(uncovered, sources):  # one full-size temporary at a time
                    _write_replayed(_registered(s), src, device, names, base_seed, keyed)
                for p in plans:
                    p.param = getattr(p.owner.module, p.owner.attr)
                _apply_rules_in_place(plans, {s.name for s in slots}, base_seed, keyed)
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


def _write_replayed(t: Tensor, src: Slot, device: torch.device, names: dict[int, str], base_seed: int | None,
                    keyed: bool) -> None:
    """Replay the value of ``src`` into a full-size temporary and write it to ``t`` (a DTensor keeps its part)."""
    assert src.recording is not None  # recorded under deferred(), or re-enacted
    write_full_value(t, replay_recording(src.recording, {src.key}, device, names, base_seed, keyed).tensor(src.tensor))


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
    names = {s.key: s.name for s in slots if s.recording is not None}
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
    names = {storage_key(ghosts[id(s.tensor)]): s.name for s in slots if id(s.tensor) in ghosts}
    return ghost_slots, names


def _apply_rules_in_place(plans: list[Planned], names: set[str], base_seed: int | None, keyed: bool) -> None:
    """Run the rules of the (now allocated) parameters named in ``names``, module-level units first."""
    mine = [p for p in plans if p.initializer is not None and p.name in names]
    done: set[tuple[int, int]] = set()
    for p in mine:
        if p.unit is not None and p.first_of_unit(done):
            run_unit(p, plans, **stream_kwargs(base_seed, p.unit[0], p.param.device, keyed))
    for p in mine:
        if p.unit is None:
            p.run(**stream_kwargs(base_seed, p.name, p.param.device, keyed))
