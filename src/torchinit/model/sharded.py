"""Materializing a model whose meta parameters are DTensors (FSDP2, tensor parallel): each rank allocates its
shards through ``Module._apply``, the own init is replayed one whole tensor at a time and each rank keeps its
part, and rules run locally on the shards (``docs/sharded.md``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from torchinit.model.deferred import parameter_like
from torchinit.model.policy import (
    InitReport,
    Planned,
    run_unit,
)
from torchinit.model.reenact import reenact
from torchinit.model.replay import replay_recording
from torchinit.model.slots import Slot, find_unknown, slot_report, wanted_by_recording
from torchinit.model.snapshot import Snapshot
from torchinit.recording.log import (
    recording_of,
    storage_key,
)
from torchinit.rng.sampling import is_dtensor, local_part
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
    allocated: set[int] = set()

    def allocate(t: Tensor) -> Tensor:
        if not (t.is_meta and is_dtensor(t)):
            return t
        new = torch.empty_like(t, device=device)
        allocated.update((id(t), id(new)))
        return new

    snapshot = Snapshot(model, generator=generator)
    with snapshot.on_failure():
        try:
            sources, names = _own_init_sources(model, slots, uncovered, strict)  # recorded or re-enacted, on meta
            attributes = {s.name: dict(vars(s.tensor)) for s in slots if is_dtensor(s.tensor)}
            with torch.no_grad():
                model._apply(allocate)
                _allocate_plain(slots, device)
                for s in slots:
                    if s.name in attributes:
                        _keep_attributes(_registered(s), attributes[s.name])
                for s, src in zip(uncovered, sources):  # one full-size temporary at a time
                    value = replay_recording(src.recording, {src.key}, device, names, base_seed, keyed).tensor(src.tensor)
                    t = _registered(s)
                    (t.to_local() if is_dtensor(t) else t).copy_(local_part(t, value) if is_dtensor(t) else value)
                    del value
                for p in plans:
                    p.param = getattr(p.owner.module, p.owner.attr)
                _apply_rules_in_place(plans, {s.name for s in slots}, base_seed, keyed)
        except BaseException:
            model._apply(lambda t: torch.empty_like(t, device="meta") if id(t) in allocated else t)
            raise
    for s in slots:
        if s.plan is not None and s.plan.initializer is not None:
            s.source = s.plan.source
    return slot_report(plans, slots)


def _mesh_device(slots: list[Slot]) -> torch.device:
    """Where a sharded model's memory goes by default: its meshes' device type (the current device for CUDA)."""
    kind = next(s.tensor.device_mesh.device_type for s in slots if is_dtensor(s.tensor))
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
        if s.is_parameter:
            new = parameter_like(s.tensor, new)
        for _, module, attr in s.places:
            (module._parameters if s.is_parameter else module._buffers)[attr] = new


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
        swap = Snapshot(model)
        ghosts: dict[int, Tensor] = {}
        wanted_ids = {id(s) for s in unrecorded}
        try:
            for s in slots:  # every meta DTensor: the init code must see plain tensors of the full shape
                if is_dtensor(s.tensor) or id(s) in wanted_ids:
                    ghost = torch.empty(s.tensor.shape, dtype=s.tensor.dtype, device="meta")
                    if isinstance(s.tensor, nn.Parameter):
                        ghost = nn.Parameter(ghost, requires_grad=s.tensor.requires_grad)
                    ghosts[id(s.tensor)] = ghost
                    for _, module, attr in s.places:
                        (module._parameters if s.is_parameter else module._buffers)[attr] = ghost
            ghost_slots = [Slot(ghosts[id(s.tensor)], s.places, s.is_parameter, s.plan) for s in unrecorded]
            recording = reenact(model, ghost_slots)
        finally:
            swap.restore()
        for g, s in zip(ghost_slots, unrecorded):
            g.recording = recording
            by_id[id(s)] = g
        names.update({storage_key(ghost): s.name for s in slots if id(s.tensor) in ghosts
                      for ghost in [ghosts[id(s.tensor)]]})  # fmt: skip
    sources = [by_id.get(id(s), s) for s in uncovered]
    find_unknown(sources, wanted_by_recording(sources), strict)
    for src, s in zip(sources, uncovered):
        s.source, s.writers = src.source or ("reset_parameters" if src is not s else "construction"), src.writers
    return sources, names


def _apply_rules_in_place(plans: list[Planned], names: set[str], base_seed: int | None, keyed: bool) -> None:
    """Run the rules of the (now allocated) parameters named in ``names``, module-level units first."""
    mine = [p for p in plans if p.initializer is not None and p.name in names]
    done: set[tuple[int, int]] = set()
    for p in mine:
        if p.unit is not None and (p.rule.index, id(p.unit[1])) not in done:  # type: ignore[union-attr]
            done.add((p.rule.index, id(p.unit[1])))  # type: ignore[union-attr]
            run_unit(p, plans, **stream_kwargs(base_seed, p.unit[0], p.param.device, keyed))
    for p in mine:
        if p.unit is None:
            p.initializer.init(p.target(), **stream_kwargs(base_seed, p.name, p.param.device, keyed))  # type: ignore
