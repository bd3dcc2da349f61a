"""The meta tensors of a model being materialized (:class:`Slot`), which recording decides each, and the report."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from torchinit._util.tensors import tensor_stores
from torchinit._util.warn import quiet, warn
from torchinit.model.policy import (
    InitReport,
    Planned,
    ReportRow,
    named_parameter_owners,
    parameter_shape,
)
from torchinit.model.replay import replay_recording, writers_of
from torchinit.recording.log import (
    Recording,
    Replay,
    storage_key,
)
from torchinit.rng.seeds import canonical_name


@dataclass
class Slot:
    """One distinct meta tensor of the model (a parameter or a buffer) and every place it is registered."""

    tensor: Tensor
    places: list[tuple[str, nn.Module, str]]  # (qualified name, module, attribute)
    is_parameter: bool
    plan: Planned | None = None
    recording: Recording | None = None
    real: Tensor | None = None
    source: str = ""
    detail: str = ""
    writers: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.places[0][0]

    @property
    def key(self) -> int:
        return storage_key(self.tensor)

    @property
    def staged(self) -> Tensor:
        """The new tensor :func:`stage` made for this slot."""
        assert self.real is not None, f"{self.name} is not staged"
        return self.real

    def register(self, tensor: Tensor) -> None:
        """Register ``tensor`` in every place the slot has, in place of its tensor (ties stay tied)."""
        for _, module, attr in self.places:
            parameters, buffers = tensor_stores(module)
            (parameters if self.is_parameter else buffers)[attr] = tensor


def meta_slots(model: nn.Module, plans: list[Planned]) -> list[Slot]:
    """Every distinct meta parameter and buffer, with its plan (parameters) and registrations."""
    by_param = {id(p.param): p for p in plans}
    slots: list[Slot] = []
    for param, owners in named_parameter_owners(model):
        if param.is_meta:
            plan = by_param[id(param)]
            slots.append(Slot(param, [(o.name, o.module, o.attr) for o in owners], True, plan))
    seen: dict[int, Slot] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for attr, buf in module._buffers.items():
            if buf is None or not buf.is_meta:
                continue
            name = f"{module_name}.{attr}" if module_name else attr
            if id(buf) in seen:
                if all(p[0] != name for p in seen[id(buf)].places):
                    seen[id(buf)].places.append((name, module, attr))
                continue
            seen[id(buf)] = Slot(buf, [(name, module, attr)], False)
            slots.append(seen[id(buf)])
    return slots


def stream_names(slots: list[Slot], root: nn.Module | None) -> dict[int, str]:
    """The stream name of each slot's storage, as a replay wants it: its canonical name in ``root``
    (:func:`~torchinit.rng.seeds.canonical_name`: wrapper segments removed)."""
    names: dict[int, str] = {}
    for s in slots:
        names.setdefault(s.key, canonical_name(s.name, root))
    return names


def wanted_by_recording(slots: list[Slot]) -> dict[Recording, set[int]]:
    """For each recording, the storages whose recorded history decides a final value (no rule covers them)."""
    wanted: dict[Recording, set[int]] = {}
    for s in slots:
        assert s.recording is not None
        keys = wanted.setdefault(s.recording, set())
        if s.plan is None or s.plan.initializer is None:
            keys.add(s.key)
    return wanted


def find_unknown(slots: list[Slot], wanted: dict[Recording, set[int]], strict: bool) -> None:
    """Mark the values no rule covers and construction left undefined: an error with ``strict``, else a warning."""
    unknown: list[str] = []
    for rec, keys in wanted.items():
        live, undefined = rec.live_ops(keys)
        writers = writers_of(rec, live)
        for s in slots:
            if s.recording is rec and s.key in keys:
                s.writers = writers.get(s.key, [])
                if s.key in undefined and s.tensor.numel() > 0:  # nothing to know in a zero-element tensor
                    s.source = "unknown"
                    unknown.append(s.name)
    if strict and unknown:
        raise ValueError(
            f"strict: the values of {len(unknown)} tensor(s) cannot be known (no rule, and construction left them "
            f"uninitialized): {', '.join(unknown)}; add rules for them"
        )
    if unknown:
        warn(
            f"materialize_: construction left {', '.join(unknown)} uninitialized and no rule covers them; they are "
            "set to zero. Add rules for them (e.g. a LayerScale gamma: Constant(1e-5)).",
            UserWarning,
        )


def stage(slots: list[Slot], wanted: dict[Recording, set[int]], device: torch.device, base_seed: int | None,
           *, keyed: bool = False, root: nn.Module | None = None) -> None:
    """Replay each recording into new tensors; nothing in the model changes yet."""
    names = stream_names(slots, root)
    replays: dict[Recording, Replay] = {}
    # A replayed call gave its warnings when it ran at construction (on meta, or re-enacted): a replay adds none.
    # A torch.nn.init.trunc_normal_(std=0.02) that a library called gave none, and its keyed twin, torchinit's
    # trunc_normal_, must not add torchinit's "nothing is truncated" warning, which is for a user's own call.
    with quiet():
        for rec, keys in wanted.items():
            replays[rec] = replay_recording(rec, keys, device, names, base_seed, keyed)
    for s in slots:
        assert s.recording is not None  # wanted_by_recording made sure of it
        replay = replays[s.recording]
        if s.key in replay.storages:
            s.real = replay.tensor(s.tensor)
        else:  # a rule-covered parameter whose history nobody needs
            s.real = torch.empty_strided(s.tensor.shape, s.tensor.stride(), dtype=s.tensor.dtype, device=device)
        if not s.source:
            s.source = "construction"


def slot_report(plans: list[Planned], slots: list[Slot]) -> InitReport:
    by_param = {id(s.plan.param): s for s in slots if s.plan is not None}
    rows = []
    for p in plans:
        s = by_param.get(id(p.param))
        if s is None:  # already real: left as it was
            source, detail = "untouched", "already real"
        elif p.initializer is not None:
            source, detail = p.source, repr(p.initializer)
        elif s.source == "unknown":
            source, detail = "unknown", "zeros (uninitialized by construction, no rule)"
        else:
            source, detail = s.source, ", ".join(dict.fromkeys(s.writers)) or "—"
        aliases = [o.name for o in p.owners[1:]]
        rows.append(ReportRow(p.name, parameter_shape(p.param), source, detail, p.param, aliases))
    return InitReport(rows)
