"""The meta tensors of a model being materialized (:class:`Slot`), which recording decides each, and the report."""

from __future__ import annotations

import weakref
from collections.abc import Collection
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from torchinit._util.tensors import is_uninitialized, tensor_stores
from torchinit._util.warn import quiet, warn
from torchinit.model.policy import (
    InitReport,
    Planned,
    ReportRow,
    named_parameter_owners,
    parameter_shape,
)
from torchinit.model.replay import replay_recording, writers_of
from torchinit.model.standins import meta_like
from torchinit.recording.log import (
    Recording,
    Replay,
    storage_key,
)
from torchinit.rng.sampling import is_dtensor
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
    #: Set by a re-enactment (a model built on meta without ``deferred()``): the ranges of operations of its
    #: recording that modules' ``reset_parameters`` made (all before the model's own init, and those that the
    #: model's init made by calling resets itself). None: construction was recorded.
    reset_spans: list[tuple[int, int]] | None = None
    #: Set by a re-enactment: whether every module above the tensor's owner is one of torch.nn's own, whose
    #: constructors change nothing their children's resets wrote. Otherwise a constructor above it may have
    #: (timm LeViT's ``bn_weight_init=0``), and only the model's own init can decide its value.
    constructors_known: bool = True
    #: For a real parameter of a model built on meta: the real tensor registered in the model, for which
    #: ``tensor`` is a meta stand-in (a legacy constructor such as ``torch.FloatTensor(n)`` ignores
    #: ``torch.device("meta")``: its memory is real but was never written). None for a meta tensor.
    replaces: Tensor | None = None

    @property
    def registered(self) -> Tensor:
        """The tensor registered in the model: the meta tensor, or the real one a stand-in replaces."""
        return self.tensor if self.replaces is None else self.replaces

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


def real_parameter_slots(model: nn.Module, plans: list[Planned]) -> list[Slot]:
    """A slot with a meta stand-in for every real parameter of a model built on meta without ``deferred()`` whose
    values cannot be anyone's: non-finite, or beyond :data:`UNINITIALIZED_MAGNITUDE`.

    A legacy constructor (``nn.Parameter(torch.FloatTensor(n))``: transformers' XLNet, Wav2Vec2's codevectors)
    ignores the device context and leaves its memory uninitialized. Values a user loaded (``load_state_dict(...,
    assign=True)``, accelerate's loading) are real too and must stay: only memory that holds no plausible
    weight is taken for a legacy constructor's. Re-enactment then decides its value as it decides a meta one's
    (:func:`find_unknown` names it when nothing does, and it is kept as it is). Uninitialized memory that happens
    to hold plausible numbers (fresh pages read as zeros) cannot be told from loaded values and is left alone.
    """
    by_param = {id(p.param): p for p in plans}
    slots = []
    for param, owners in named_parameter_owners(model):
        if param.is_meta or is_uninitialized(param) or is_dtensor(param) or id(param) not in by_param:
            continue
        if not _holds_no_weight(param):
            continue
        slots.append(Slot(meta_like(param), [(o.name, o.module, o.attr) for o in owners], True, by_param[id(param)],
                          replaces=param))  # fmt: skip
    return slots


#: The tensors materialize_ registered, by id: values torchinit gave are never taken for uninitialized memory.
_GIVEN: weakref.WeakValueDictionary[int, Tensor] = weakref.WeakValueDictionary()


def note_given(tensors: Collection[Tensor]) -> None:
    """Note that materialize_ registered ``tensors`` (its own values, whatever their version counters say)."""
    for t in tensors:
        _GIVEN[id(t)] = t


def unwritten_real_parameters(model: nn.Module, plans: list[Planned]) -> list[str]:
    """The names of the real parameters of a model built on meta without ``deferred()`` that hold plausible values
    and that nothing wrote in place since they were made (their version counter is still 0).

    A legacy constructor's memory that looks like weights is one of them, and so is a tensor loaded without a copy
    (safetensors, accelerate's ``set_module_tensor_to_device``); torchinit cannot tell which, so it keeps them and
    :func:`warn_unwritten` says so. A parameter written in place (``load_state_dict`` copies; ``torch.load``'s
    tensors were set; a constructor's ``fill_`` on a real tensor wrote real values) is not named.
    """
    by_param = {id(p.param) for p in plans}
    return [owners[0].name for param, owners in named_parameter_owners(model)
            if not (param.is_meta or is_uninitialized(param) or is_dtensor(param)) and id(param) in by_param
            and param._version == 0 and param.numel() > 0 and _GIVEN.get(id(param)) is not param
            and not _holds_no_weight(param)]  # fmt: skip


def warn_unwritten(names: list[str]) -> None:
    """Name the real parameters :func:`unwritten_real_parameters` found (a warning, strict or not: loaded values are
    the user's and stay)."""
    if not names:
        return
    listed = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    warn(
        f"materialize_: {listed} were real, not meta, in a model built on meta, and nothing wrote them in place "
        "since they were made: they are kept as they are. If you loaded them (safetensors, accelerate), that is "
        "right. If a legacy constructor made them (torch.FloatTensor(n) ignores torch.device('meta')), they hold "
        "uninitialized memory that looks like weights, which torchinit cannot tell from loaded values: build the "
        "model under torchinit.deferred(), or add rules for them.",
        UserWarning,
    )


#: No initialized or trained weight reaches this magnitude; uninitialized float memory often does.
UNINITIALIZED_MAGNITUDE = 1e30


def _holds_no_weight(t: torch.Tensor) -> bool:
    """Whether ``t``'s values cannot be a weight anyone set: a float tensor with a non-finite value or one beyond
    :data:`UNINITIALIZED_MAGNITUDE` (what uninitialized memory often holds)."""
    if t.numel() == 0 or not (t.dtype.is_floating_point or t.dtype.is_complex):
        return False
    values = t.detach()
    return bool(~torch.isfinite(values).all() or values.abs().max() > UNINITIALIZED_MAGNITUDE)


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


#: The source of a real parameter that nothing decides on the meta path: it stays registered as it is.
KEPT = "kept"


@dataclass
class _Doubts:
    """The names of the tensors whose values are not known to equal eager construction's, by kind."""

    unknown: list[str] = field(default_factory=list)  # left undefined: set to zero
    unverified: list[str] = field(default_factory=list)  # a reset's value below a constructor not torch.nn's own
    kept: list[str] = field(default_factory=list)  # real in a model built on meta, and nothing sets them
    replaced: list[str] = field(default_factory=list)  # real in a model built on meta, set by its own init
    #: converted after deferred() exited, each name with its (recorded dtype, dtype now): the steps are unseen
    converted: list[tuple[str, torch.dtype, torch.dtype]] = field(default_factory=list)

    #: named already (replaced after deferred(), or a lost recording), and left undefined: set to zero
    zeroed: list[str] = field(default_factory=list)

    def set_aside(self, said: Collection[str]) -> None:
        """Leave out the names ``said`` already, keeping those that end up zero."""
        if said:
            self.zeroed = [name for name in self.unknown if name in said]
            self.unknown = [name for name in self.unknown if name not in said]
            self.unverified = [name for name in self.unverified if name not in said]

    def note(self, s: Slot, undefined: set[int]) -> None:
        if s.replaces is not None:
            if s.key in undefined:
                s.source = KEPT
                if s.tensor.numel() > 0:
                    self.kept.append(s.name)
            else:
                self.replaced.append(s.name)
        elif s.key in undefined and s.tensor.numel() > 0:  # nothing to know in a zero-element tensor
            s.source = "unknown"
            self.unknown.append(s.name)


def find_unknown(slots: list[Slot], wanted: dict[Recording, set[int]], strict: bool,
                 said: Collection[str] = ()) -> None:
    """Mark the values that are not known to equal eager construction's: an error with ``strict``, else a warning.

    Named separately: values construction left undefined (no rule, no code wrote them: set to zero); on a
    model re-enacted on meta, values that a module's ``reset_parameters`` gave and that a constructor above
    it may have changed in eager construction without the model's own init writing them again (kept:
    :func:`unverified`); and real parameters of a model built on meta (:func:`real_parameter_slots`) that no
    init code sets (their slots' source becomes :data:`KEPT`: the caller leaves them registered as they are).
    A real parameter that the model's own init does set gets its value, and a warning says it was replaced.
    The names ``said`` were named already, as replaced after ``deferred()`` or as having lost their recording in a
    pickle: they are not named again as something they are not, only those that end up zero.
    """
    doubts = _Doubts()
    for rec, keys in wanted.items():
        live, undefined = rec.live_ops(keys)
        writers = writers_of(rec, live)
        for s in slots:
            if s.recording is rec and s.key in keys:
                s.writers = writers.get(s.key, [])
                doubts.note(s, undefined)
                if s.key in rec.found_conversions:
                    doubts.converted.append((s.name, *rec.found_conversions[s.key]))
        doubts.unverified += unverified(rec, live, [s for s in slots if s.recording is rec and s.key in keys
                                                    and s.key not in undefined])
    doubts.set_aside(said)
    _refuse_or_warn(doubts, strict)


def unverified(rec: Recording, live: list[int], slots: list[Slot]) -> list[str]:
    """The names of the re-enacted ``slots`` whose values a module's reset decides, below a constructor that is
    not torch.nn's own: a live write made by a ``reset_parameters`` (before the model's own init, or called by
    it). Eager construction may have changed them after that reset, and only a recording would know (timm's
    LeViT sets BatchNorm weights to 0 in a block's constructor; re-enactment gives BatchNorm's 1)."""
    doubtful = [s for s in slots if s.reset_spans is not None and not s.constructors_known and s.tensor.numel() > 0]
    if not doubtful:
        return []
    spans = doubtful[0].reset_spans  # one re-enactment, one list
    assert spans is not None
    made_by_reset = bytearray(len(rec.ops))
    for lo, hi in spans:
        made_by_reset[lo:hi] = b"\x01" * (hi - lo)
    by_reset = [i for i in live if made_by_reset[i]]
    reset_written = {ref.key for i in by_reset for ref in rec.ops[i].writes}
    return [s.name for s in doubtful if s.key in reset_written]


_REENACTING = "materialize_: re-enacting the construction of a model built on meta without deferred(): "


def _refuse_or_warn(doubts: _Doubts, strict: bool) -> None:
    if strict and (doubts.unknown or doubts.unverified or doubts.kept or doubts.converted):
        raise ValueError("strict: " + "; ".join(_strict_parts(doubts)) + "; add rules for them, or build the model "
                         "under torchinit.deferred()")
    if doubts.unknown:
        warn(
            f"materialize_: construction left {', '.join(doubts.unknown)} uninitialized and no rule covers them; "
            "they are set to zero. Add rules for them (e.g. a LayerScale gamma: Constant(1e-5)).",
            UserWarning,
        )
    if doubts.unverified:
        warn(
            f"{_REENACTING}{', '.join(doubts.unverified)} come from their modules' reset_parameters. What the "
            "constructors above them did to them is not known (an init loop in a model with no init method, as "
            "torchvision's models and timm's EfficientNet have; timm's LeViT sets BatchNorm weights to 0 in its "
            "blocks' constructors), and the model's own init (init_weights, initialize_weights), if it has one, "
            "does not set them: they may differ from eager construction. Build the model under torchinit.deferred() "
            "to get the constructors' values, or add rules for them.",
            UserWarning,
        )
    if doubts.kept:
        warn(
            f"{_REENACTING}{', '.join(doubts.kept)} were real, not meta, and no init code sets them: they are kept "
            "as they are, but may be uninitialized memory (a legacy constructor such as torch.FloatTensor(n) "
            "ignores torch.device('meta')). Check them, add rules for them, or build the model under "
            "torchinit.deferred().",
            UserWarning,
        )
    if doubts.converted:
        warn(f"materialize_: {_converted_part(doubts.converted)}.", UserWarning)
    if doubts.zeroed:
        warn(f"materialize_: {', '.join(doubts.zeroed)}, named above, are set by no module's init method and no "
             "rule: they are set to zero. Add rules for them, or convert inside deferred().", UserWarning)
    if doubts.replaced:
        warn(
            f"{_REENACTING}{', '.join(doubts.replaced)} were real, not meta (a legacy constructor such as "
            "torch.FloatTensor(n) ignores torch.device('meta') and leaves memory uninitialized); the model's own "
            "init sets them, so they get the values eager construction gives them. Values loaded into them before "
            "materialize_ are replaced: load them afterwards.",
            UserWarning,
        )


def _strict_parts(doubts: _Doubts) -> list[str]:
    parts = []
    if doubts.unknown:
        parts.append(f"the values of {len(doubts.unknown)} tensor(s) cannot be known (no rule, and construction "
                     f"left them uninitialized): {', '.join(doubts.unknown)}")
    if doubts.unverified:
        parts.append(f"{len(doubts.unverified)} tensor(s) of a model built on meta without deferred() are not known "
                     "to equal eager construction's (a constructor may have changed them after their module's "
                     f"reset_parameters, and the model's own init does not set them): {', '.join(doubts.unverified)}")
    if doubts.kept:
        parts.append(f"{len(doubts.kept)} parameter(s) were real in a model built on meta and no init code sets "
                     "them, so their values may be uninitialized memory (a legacy constructor such as "
                     f"torch.FloatTensor(n) ignores torch.device('meta')): {', '.join(doubts.kept)}")
    if doubts.converted:
        parts.append(_converted_part(doubts.converted))
    return parts


def _converted_part(converted: list[tuple[str, torch.dtype, torch.dtype]]) -> str:
    """What happened to tensors converted after ``deferred()`` exited, and what to do."""
    by_dtypes: dict[tuple[torch.dtype, torch.dtype], list[str]] = {}
    for name, recorded, now in converted:
        by_dtypes.setdefault((recorded, now), []).append(name)
    groups = "; ".join(f"{', '.join(names)} ({_dtype(a)} -> {_dtype(b)})" for (a, b), names in by_dtypes.items())
    return (
        f"{len(converted)} tensor(s) were converted after deferred() exited: {groups}. They get the recorded values "
        "converted once to the dtype they have now; a conversion in several steps (.half() then "
        ".to(torch.bfloat16)) rounds in between, which torchinit cannot see. To be exact, convert inside the "
        "`with torchinit.deferred():` block, where every step is recorded, or after materialize_"
    )


def _dtype(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


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
