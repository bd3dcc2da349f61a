"""Deferred construction and eager-equivalent materialization (issue 11).

::

    with torchinit.deferred():
        model = Transformer(config)            # parameters on meta: no memory, construction recorded
    report = torchinit.materialize_(model)     # what Transformer(config) would have given, each value written once

Inside :func:`deferred`, every parameter a module registers is moved to the meta
device as it is registered, and every operation construction applies to it is
recorded (:mod:`torchinit.recording`): ``reset_parameters``, the constructor's own
``fill_``/``copy_``/``mul_``, init loops, transformers' ``post_init``, timm's weight
init, torchvision's constructor loops. Buffers are computed for real.
:func:`materialize_` then replays, for each parameter, only the operations that decide
its final value, so the model gets what eager construction gives it: deterministic
values exactly, random values from the same distributions.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from torchinit.fastfill import recorded_fill, replay_fill
from torchinit.construction import is_torch_module, own_init, reset_method, weight_norm_hooks
from torchinit.policy import (
    InitReport,
    Planned,
    Policy,
    ReportRow,
    Snapshot,
    check_on_meta,
    derive_seed,
    named_parameter_owners,
    parameter_shape,
    run_unit,
    stand_in,
    stream_generator,
)
from torchinit.sampling import is_dtensor, local_part, make_sampler
from torchinit.recording import (
    UNDEFINED,
    Op,
    Recording,
    RecordingMode,
    Replay,
    claim,
    recorded_call,
    recording_of,
    storage_key,
    thread_recordings,
)

__all__ = ["deferred", "materialize_"]


# ---- deferred construction ---------------------------------------------------------------------------------


@contextlib.contextmanager
def deferred() -> Iterator[Recording]:
    """Within this context, parameters are created on the meta device and construction is recorded.

    Constructors run as usual, so buffers (RoPE frequencies, position ids) and any
    Python-side state are computed for real. Each ``nn.Parameter`` is moved to meta
    when it is registered (its value, when the constructor gave it one, is kept for
    :func:`materialize_`), and every operation on meta tensors is recorded instead of
    run: no parameter memory is used and no random numbers are drawn. Recording is per
    thread: modules built by other threads while the context is open are built
    normally. Contexts nest (an inner one joins the outer recording).

    ``nn.Module.register_parameter`` is patched process-wide while any context is
    open (as accelerate's ``init_empty_weights`` does); the patch acts only in threads
    inside a context, and torch is restored when the last context exits.

    Yields:
        The :class:`~torchinit.recording.Recording` of this construction.

    Example:
        >>> with deferred():
        ...     layer = nn.Linear(4096, 4096)
        >>> layer.weight.is_meta
        True
        >>> _ = materialize_(layer)
        >>> layer.weight.is_meta, bool(layer.weight.abs().max() <= 4096 ** -0.5)
        (False, True)
    """
    stack = _thread_stack()
    if stack:  # nested: join the outer recording (contexts may even exit out of order)
        recording, outer = stack[-1]
        mode = RecordingMode(recording)
        mode.fresh = outer.fresh
    else:
        recording = Recording()
        mode = RecordingMode(recording)
    with _recording_into(recording, mode), mode:
        yield recording


@contextlib.contextmanager
def _recording_into(recording: Recording, mode: RecordingMode) -> Iterator[None]:
    """Make this thread record into ``recording``: the process-wide patches (counted), and the thread's stack."""
    stack = _thread_stack()
    entry = (recording, mode)
    with _PATCH_LOCK:
        if _PATCH["depth"] == 0:
            _PATCH["saved"] = nn.Module.register_parameter
            nn.Module.register_parameter = _deferring(_PATCH["saved"])  # type: ignore[method-assign]
            _PATCH["init"] = _patch_meta_skipping_inits()
        _PATCH["depth"] += 1
    stack.append(entry)
    try:
        yield
    finally:
        stack[:] = [e for e in stack if e is not entry]
        with _PATCH_LOCK:
            _PATCH["depth"] -= 1
            if _PATCH["depth"] == 0:
                nn.Module.register_parameter = _PATCH.pop("saved")  # type: ignore[method-assign]
                for holder, key, original in _PATCH.pop("init"):
                    _set_entry(holder, key, original)


# The patch is process-wide (a class attribute) and counted under a lock; whether it defers is per thread.
_PATCH_LOCK = threading.Lock()
_PATCH: dict[str, Any] = {"depth": 0}
_thread_stack = thread_recordings


def _deferring(original: Any) -> Any:
    """``nn.Module.register_parameter`` that, in a thread inside ``deferred()``, makes the parameter meta first.

    The original is captured here, once per installation, so a thread still running an old
    patched method after the last context closed calls the right one.
    """

    def register_parameter(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        stack = _thread_stack()
        lazy = isinstance(param, nn.parameter.UninitializedTensorMixin)
        if stack and param is not None and not lazy:
            recording, mode = stack[-1]
            if not param.is_meta:
                param = _make_meta(param, recording, mode)
            if recording.knows(param):
                claim(param, recording)
        original(self, name, param)

    return register_parameter


def _make_meta(param: nn.Parameter, recording: Recording, mode: RecordingMode) -> nn.Parameter:
    """Turn the real ``param`` into a meta one, in place where torch allows it, and record its value.

    In place (``torch.utils.swap_tensors``, torch >= 2.3) the constructor's own references
    and a second registration of the same parameter (a tie) see the meta tensor too;
    where swapping is refused, a new Parameter with the same class and attributes is made.
    """
    mode.paused = True  # creating the stand-in is torchinit's doing, not construction's
    try:
        undefined = mode.is_undefined(param)
        meta = _meta_like(param)
        swap = getattr(torch.utils, "swap_tensors", None)
        if swap is not None and type(meta) is type(param):
            try:
                attributes = dict(param.__dict__)
                swap(param, meta)  # now ``param`` is the meta tensor and ``meta`` holds the real data
                param.__dict__.update(attributes)
                meta, param = param, meta
            except RuntimeError:  # other references to the tensor at the C++ level: keep the new object
                pass
        value = UNDEFINED if undefined else param.detach()
        mode.release(param)
        recording.add_leaf(meta, value)
    finally:
        mode.paused = False
    return meta


#: torch.nn.init functions that return at once on a meta tensor (torch 2.13), so their effect never reaches
#: ATen: within deferred() they are recorded whole. trunc_normal_ is patched at its helper, which it looks up
#: at call time; the others where they are looked up: torch.nn.init itself, and the table transformers
#: captured at import (``transformers.initialization.TORCH_INIT_FUNCTIONS``).
_META_SKIPPING_INITS = ("_no_grad_trunc_normal_", "orthogonal_", "sparse_", "dirac_")


def _patch_meta_skipping_inits() -> list[tuple[Any, str, Any]]:
    import sys

    saved = []
    for name in _META_SKIPPING_INITS:
        original = getattr(nn.init, name)
        saved.append((nn.init, name, original))
        setattr(nn.init, name, recorded_call(original))
    table = getattr(sys.modules.get("transformers.initialization"), "TORCH_INIT_FUNCTIONS", None)
    if isinstance(table, dict):
        for key, fn in list(table.items()):
            for holder, name, original in saved[1:]:
                if fn is original:
                    saved.append((table, key, fn))
                    table[key] = getattr(holder, name)
    return saved


def _set_entry(holder: Any, key: str, value: Any) -> None:
    if isinstance(holder, dict):
        holder[key] = value
    else:
        setattr(holder, key, value)


def _meta_like(t: Tensor) -> Tensor:
    """A meta tensor with ``t``'s shape, strides and dtype; a parameter like ``t`` if ``t`` is one."""
    meta = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")
    return _parameter_like(t, meta) if isinstance(t, nn.Parameter) else meta


def _parameter_like(old: Tensor, data: Tensor) -> nn.Parameter:
    """A parameter holding ``data`` with ``old``'s class (where it can), ``requires_grad`` and Python attributes."""
    try:
        new = type(old)(data, requires_grad=old.requires_grad)
    except Exception:  # noqa: BLE001 - a Parameter subclass with another constructor
        new = nn.Parameter(data, requires_grad=old.requires_grad)
    new.__dict__.update(getattr(old, "__dict__", {}))
    return new


# ---- materialization ---------------------------------------------------------------------------------------


@dataclass
class _Slot:
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


def materialize_(
    model: nn.Module,
    policy: Policy | None = None,
    *,
    device: torch.device | str | None = None,
    strict: bool = False,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> InitReport:
    """Give every meta parameter and buffer of ``model`` real memory and the values eager construction gives it.

    The values come from, in order of precedence:

    1. the ``policy``, where a rule matches (a preset is a policy);
    2. what construction did, recorded by :func:`deferred`: each module's
       ``reset_parameters``, the constructor's own ``fill_``/``copy_``/init loops,
       model-level init (transformers' ``post_init``, timm's and torchvision's loops).
       Only the operations that decide a final value are replayed, in construction
       order, so each value is written about once;
    3. for a model built on meta without :func:`deferred` (``with torch.device("meta")``,
       ``.to("meta")``, accelerate's ``init_empty_weights()``), nothing was recorded;
       construction is re-enacted on meta instead: every module's ``reset_parameters``
       (children first, as constructors run), then the model's own init
       (transformers' ``initialize_weights``, or an ``init_weights()`` method), and the
       result is replayed the same way;
    4. anything still undefined (a ``torch.empty`` no code wrote, a buffer no init
       recomputes) is unknown: with ``strict=True`` a ValueError names it; otherwise a
       warning names it and it is set to zero. It is never silently zero.

    The call is all-or-nothing: every check (the arguments, unknown values, each
    policy initializer's arguments) runs before any memory is allocated, values are
    computed into new tensors, and the model's registrations are replaced only once
    all of them are ready (assignments only). If anything raises (``KeyboardInterrupt``
    included), the model is put back as it was: registrations, ties, ``requires_grad``,
    Python attributes, and the state of ``generator`` (a :class:`~torchinit.policy.Snapshot`
    of registrations: no tensor is copied). Tied parameters stay tied, Python attributes
    on parameters are kept, already-real parameters and buffers are left as they are
    (moved to ``device`` when it is given: a copy there, made before anything is replaced).

    Args:
        model: a model built under :func:`deferred` or on the meta device.
        policy: rules that take precedence over construction.
        device: where to allocate (default: the CPU): a ``torch.device``, a string such as
            ``"cuda:0"`` or a device index; one this process cannot allocate on is a ValueError.
        strict: raise instead of zero-filling values that cannot be known.
        generator: the seed source. One number is drawn from it per call; every random
            value drawn at materialization then comes from a stream keyed by that number
            and the parameter's qualified name (:func:`~torchinit.policy.stream_seed`), so
            re-seeding the generator reproduces the weights and two calls with one
            generator differ. (Values a constructor drew for real before registering them,
            ``nn.Parameter(torch.randn(d))``, were drawn at construction.) None: the
            global RNG, in construction order, as eager construction draws. Large random
            fills run chunked in threads from the keyed Philox stream
            (:mod:`torchinit.fastfill`): the same distribution as torch's, another stream;
            either way the weights are a function of the seed.
        seed: draw every random value from the keyed stream instead (:mod:`torchinit.keyed`;
            not with ``generator``): a parameter's values then depend only on
            ``(seed, its qualified name, shape, initializer)``, never on the call order, the
            other parameters, the device or the world size. Policy rules get
            ``init(t, seed=seed, name=qualified_name)``; a recorded ``normal_``/``uniform_``
            (a module's ``reset_parameters``), ``trunc_normal_``, ``orthogonal_`` or
            ``sparse_`` of parameter ``n`` draws from the stream named ``n`` (its ``k``-th
            random operation, ``k >= 1``, from ``n#k``); the rare random operations with no
            keyed form (``bernoulli_``, ``random_``, ``randn`` factories) draw from a torch
            generator seeded by a hash of ``(seed, n)``.

    Returns:
        An :class:`~torchinit.policy.InitReport`; the rule column says where each value
        came from (a rule, ``construction``, ``reset_parameters`` or ``unknown``).

    Example:
        >>> with deferred():
        ...     model = nn.Sequential(nn.Linear(8, 8), nn.Embedding(10, 4, padding_idx=0))
        >>> report = materialize_(model, generator=torch.Generator().manual_seed(0))
        >>> [row.rule for row in report]
        ['construction', 'construction', 'construction']
        >>> bool(model[1].weight[0].eq(0).all())
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module; got {type(model).__name__}")
    if policy is not None and not isinstance(policy, Policy):
        raise TypeError(f"policy must be a torchinit.Policy or None; got {type(policy).__name__}")
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be a bool; got {type(strict).__name__}")
    make_sampler(generator, seed)  # types; not both
    explicit_device = device is not None
    device = _device(device, generator)

    plans = (policy if policy is not None else Policy([])).plan(model, strict=strict)
    slots = _meta_slots(model, plans)
    for slot in slots:  # every rule's arguments, checked on meta before anything is allocated
        if slot.plan is not None and slot.plan.initializer is not None:
            check_on_meta(slot.plan)
    if any(is_dtensor(s.tensor) for s in slots):
        return _materialize_sharded(model, plans, slots, device if explicit_device else None, strict, generator, seed)
    for slot in slots:
        slot.recording = recording_of(slot.tensor)
    unrecorded = [s for s in slots if s.recording is None]
    snapshot = Snapshot(model, generator=generator)  # registrations only: no tensor of the model is written
    with snapshot.on_failure():
        if unrecorded:
            needed = [s for s in unrecorded if s.plan is None or s.plan.initializer is None]  # rules cover the rest
            reenacted = _reenact(model, needed) if needed else Recording()
            for s in unrecorded:
                s.recording, s.source = reenacted, "reset_parameters"
        wanted = _wanted_by_recording(slots)
        _find_unknown(slots, wanted, strict)
        base_seed = derive_seed(generator) if seed is None else seed  # the one draw from the caller's generator
        with torch.no_grad():
            # the fallible work: every new tensor, moved tensor and weight_norm weight, into new memory
            _stage(slots, wanted, device, base_seed, keyed=seed is not None)
            _apply_rules(slots, device, base_seed, keyed=seed is not None)
            new = _replacements(model, slots, device if explicit_device else None)
            computed = _weight_norm_weights(model, new)
            _commit(model, new, computed)  # assignments only
            if unrecorded:
                _retie(model)
        for p in plans:
            p.param = new.get(id(p.param), p.param)  # type: ignore[assignment]
        return _report(plans, slots)


# ---- models whose parameters are DTensors (FSDP2, tensor parallel) -------------------------------------------


def _materialize_sharded(model: nn.Module, plans: list[Planned], slots: list[_Slot], device: torch.device | None,
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
                    value = _replay(src.recording, {src.key}, device, names, base_seed, keyed).tensor(src.tensor)
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
    return _report(plans, slots)


def _mesh_device(slots: list[_Slot]) -> torch.device:
    """Where a sharded model's memory goes by default: its meshes' device type (the current device for CUDA)."""
    kind = next(s.tensor.device_mesh.device_type for s in slots if is_dtensor(s.tensor))
    if kind == "cuda" and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(kind)


def _registered(s: _Slot) -> Tensor:
    _, module, attr = s.places[0]
    return getattr(module, attr)


def _allocate_plain(slots: list[_Slot], device: torch.device) -> None:
    """One new tensor for each plain meta slot, registered in every place the slot had (ties stay tied)."""
    for s in slots:
        if is_dtensor(s.tensor) or not s.tensor.is_meta:
            continue
        new = torch.empty_strided(s.tensor.shape, s.tensor.stride(), dtype=s.tensor.dtype, device=device)
        if s.is_parameter:
            new = _parameter_like(s.tensor, new)
        for _, module, attr in s.places:
            (module._parameters if s.is_parameter else module._buffers)[attr] = new


def _keep_attributes(param: Tensor, saved: dict[str, Any]) -> None:
    """Give ``param`` the Python attributes it had before ``Module._apply`` replaced it (``no_decay`` flags...)."""
    for key, value in saved.items():
        if key not in vars(param):
            setattr(param, key, value)


def _own_init_sources(model: nn.Module, slots: list[_Slot], uncovered: list[_Slot],
                      strict: bool) -> tuple[list[_Slot], dict[int, str]]:
    """For each uncovered slot, the slot whose recording gives its value: itself when it was recorded under
    :func:`deferred`, else a plain meta stand-in of its full shape in a re-enactment of the model's own init; and
    the qualified name of every storage the recordings know (the names of the random streams)."""
    names = {s.key: s.name for s in slots if s.recording is not None}
    if not uncovered:
        return [], names
    unrecorded = [s for s in uncovered if s.recording is None]
    by_id: dict[int, _Slot] = {}
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
            ghost_slots = [_Slot(ghosts[id(s.tensor)], s.places, s.is_parameter, s.plan) for s in unrecorded]
            recording = _reenact(model, ghost_slots)
        finally:
            swap.restore()
        for g, s in zip(ghost_slots, unrecorded):
            g.recording = recording
            by_id[id(s)] = g
        names.update({storage_key(ghost): s.name for s in slots if id(s.tensor) in ghosts
                      for ghost in [ghosts[id(s.tensor)]]})  # fmt: skip
    sources = [by_id.get(id(s), s) for s in uncovered]
    _find_unknown(sources, _wanted_by_recording(sources), strict)
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
            run_unit(p, plans, **_randomness(base_seed, p.unit[0], p.param.device, keyed))
    for p in mine:
        if p.unit is None:
            p.initializer.init(p.target(), **_randomness(base_seed, p.name, p.param.device, keyed))  # type: ignore


def _device(device: Any, generator: torch.Generator | None) -> torch.device:
    """``device`` as a ``torch.device`` this process can allocate on (and draw on, with a generator)."""
    if device is None:
        return torch.device("cpu")
    if isinstance(device, bool) or not isinstance(device, (torch.device, str, int)):
        raise TypeError(f"device must be a torch.device, a str or an int; got {type(device).__name__}")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise ValueError(f"device {device!r}: {err}") from None
    if device.type == "meta":
        raise ValueError("device must be a real device (cpu, cuda, ...); got meta")
    try:
        torch.empty(0, device=device)
        if generator is not None:
            torch.Generator(device=device)
    except Exception as err:  # noqa: BLE001 - torch raises RuntimeError, AssertionError, NotImplementedError...
        raise ValueError(f"device {str(device)!r} cannot be used here: {str(err).splitlines()[0]}") from None
    return device


def _find_unknown(slots: list[_Slot], wanted: dict[Recording, set[int]], strict: bool) -> None:
    """Mark the values no rule covers and construction left undefined: an error with ``strict``, else a warning."""
    unknown: list[str] = []
    for rec, keys in wanted.items():
        live, undefined = rec.live_ops(keys)
        writers = _writers(rec, live)
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
        warnings.warn(
            f"materialize_: construction left {', '.join(unknown)} uninitialized and no rule covers them; they are "
            "set to zero. Add rules for them (e.g. a LayerScale gamma: Constant(1e-5)).",
            UserWarning,
            stacklevel=3,
        )


def _meta_slots(model: nn.Module, plans: list[Planned]) -> list[_Slot]:
    """Every distinct meta parameter and buffer, with its plan (parameters) and registrations."""
    by_param = {id(p.param): p for p in plans}
    slots: list[_Slot] = []
    for param, owners in named_parameter_owners(model):
        if param.is_meta:
            plan = by_param[id(param)]
            slots.append(_Slot(param, [(o.name, o.module, o.attr) for o in owners], True, plan))
    seen: dict[int, _Slot] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for attr, buf in module._buffers.items():
            if buf is None or not buf.is_meta:
                continue
            name = f"{module_name}.{attr}" if module_name else attr
            if id(buf) in seen:
                if all(p[0] != name for p in seen[id(buf)].places):
                    seen[id(buf)].places.append((name, module, attr))
                continue
            seen[id(buf)] = _Slot(buf, [(name, module, attr)], False)
            slots.append(seen[id(buf)])
    return slots


def _wanted_by_recording(slots: list[_Slot]) -> dict[Recording, set[int]]:
    """For each recording, the storages whose recorded history decides a final value (no rule covers them)."""
    wanted: dict[Recording, set[int]] = {}
    for s in slots:
        assert s.recording is not None
        keys = wanted.setdefault(s.recording, set())
        if s.plan is None or s.plan.initializer is None:
            keys.add(s.key)
    return wanted


def _writers(rec: Recording, live: list[int]) -> dict[int, list[str]]:
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


def _stage(slots: list[_Slot], wanted: dict[Recording, set[int]], device: torch.device, base_seed: int | None,
           *, keyed: bool = False) -> None:
    """Replay each recording into new tensors; nothing in the model changes yet."""
    names = {}
    for s in slots:
        names.setdefault(s.key, s.name)
    replays: dict[Recording, Replay] = {}
    for rec, keys in wanted.items():
        replays[rec] = _replay(rec, keys, device, names, base_seed, keyed)
    for s in slots:
        replay = replays[s.recording]  # type: ignore[index]
        if s.key in replay.storages:
            s.real = replay.tensor(s.tensor)
        else:  # a rule-covered parameter whose history nobody needs
            s.real = torch.empty_strided(s.tensor.shape, s.tensor.stride(), dtype=s.tensor.dtype, device=device)
        if not s.source:
            s.source = "construction"


def _replay(rec: Recording, keys: set[int], device: torch.device, names: dict[int, str], base_seed: int | None,
            keyed: bool) -> Replay:
    """Replay ``rec`` for ``keys``: each random operation draws from the stream of the tensor it writes.

    ``keyed``: ``base_seed`` is the user's seed and the keyed stream is drawn (:class:`_KeyedReplay`);
    otherwise a torch generator per name seeded from ``base_seed`` (None: the global RNG).
    """
    streams: dict[str, torch.Generator] = {}

    def target(op: Op) -> int | None:
        return op.writes[0].key if op.writes else op.outputs[0].key if op.outputs else None

    # a random operation on a tensor that is not the model's (a constructor's temporary, a deep-copied template layer)
    # is named by its rank among such operations, so that the model's own tensors created before it do not move it
    unnamed: dict[int, int] = {}
    for j, o in enumerate(rec.ops):
        if o.random and target(o) not in names:
            unnamed[j] = len(unnamed)

    def name_of(i: int, op: Op) -> str:
        return names.get(target(op)) or f"#{unnamed.get(i, i)}:{op.name}"

    def generator_for(i: int, op: Op) -> torch.Generator | None:
        if base_seed is None:
            return None
        name = name_of(i, op)
        if name not in streams:
            streams[name] = stream_generator(base_seed, name, device)
        return streams[name]

    fill = _KeyedReplay(base_seed, name_of).fill if keyed else replay_fill  # type: ignore[arg-type]
    return rec.replay(keys, device, generator_for=generator_for, fill=fill)


class _KeyedReplay:
    """The replay hook of ``materialize_(seed=...)``: recorded random fills drawn from the keyed stream.

    The ``k``-th random operation on the tensor named ``n`` draws from the stream named
    ``n`` (``k = 0``) or ``n#k``: ATen ``normal_``/``uniform_`` (on the tensor or a view of
    it), and the whole recorded calls of torchinit's initializers and of torch.nn.init's
    ``trunc_normal_``/``orthogonal_``/``sparse_`` (their torchinit twins, the same
    distributions). Anything else returns False: the replay then uses the op's generator.
    """

    def __init__(self, seed: int, name_of: Any) -> None:
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
    from torchinit.structured import orthogonal_, sparse_
    from torchinit.truncnorm import trunc_normal_

    name = getattr(func, "__name__", "")
    if getattr(func, "__module__", "") == "torch.nn.init":
        return {"_no_grad_trunc_normal_": trunc_normal_, "trunc_normal_": trunc_normal_, "orthogonal_": orthogonal_,
                "sparse_": sparse_}.get(name)
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
    recording = Recording()
    mode = RecordingMode(recording)
    snapshot = Snapshot(module)
    metas: dict[int, tuple[Tensor, Tensor]] = {}
    names: dict[int, str] = {}
    try:
        mode.paused = True
        for module_name, sub in module.named_modules(remove_duplicate=False):
            for store in (sub._parameters, sub._buffers):
                for attr, t in list(store.items()):
                    if t is None or isinstance(t, nn.parameter.UninitializedTensorMixin) or t.is_meta:
                        continue
                    if id(t) not in metas:
                        sharded = is_dtensor(t)  # a stand-in of its full shape; its values are not read
                        meta = _meta_like(t) if not sharded else _parameter_like(t, torch.empty(
                            t.shape, dtype=t.dtype, device="meta")) if isinstance(t, nn.Parameter) else torch.empty(
                            t.shape, dtype=t.dtype, device="meta")  # fmt: skip
                        recording.add_leaf(meta, UNDEFINED if sharded else t.detach())
                        metas[id(t)] = (t, meta)
                        names[storage_key(meta)] = ".".join(x for x in (prefix, module_name, attr) if x)
                    store[attr] = metas[id(t)][1]
            for hook in weight_norm_hooks(sub):  # torch.nn.utils.weight_norm keeps the computed weight as an attribute
                if isinstance(sub.__dict__.get(hook.name), Tensor):
                    sub.__dict__[hook.name] = torch.empty_like(sub.__dict__[hook.name], device="meta")
        mode.paused = False
        with _recording_into(recording, mode), mode, torch.no_grad():
            program(module)
        # a parametrization's right_inverse moves its originals to new storages (set_): name them where they are now
        names.update({storage_key(meta): names[key] for key, (_, meta) in zip(list(names), metas.values())})
    finally:
        mode.paused = False
        snapshot.restore()
    if not metas:
        return module
    device = next(iter(metas.values()))[0].device
    wanted = {storage_key(meta) for _, meta in metas.values()}
    replay = _replay(recording, wanted, device, names, seed, seed is not None)
    with torch.no_grad():
        values = [(t, replay.tensor(meta)) for t, meta in metas.values() if storage_key(meta) in replay.storages]
        for t, value in values:
            if is_dtensor(t):  # each rank keeps its part
                t.to_local().copy_(local_part(t, value))
            else:
                t.copy_(value)
    return module


def _apply_rules(slots: list[_Slot], device: torch.device, base_seed: int | None, *, keyed: bool = False) -> None:
    """Run the policy's initializers on the staged tensors; the model itself is not touched.

    Layout-aware initializers see a shallow stand-in of the owning layer holding the staged
    tensors; module-level ones (``presets.torch_default``) a deep stand-in of their unit.
    Module-level units run first, so the per-parameter rules, which override them, win.
    """
    staged = {id(s.tensor): s.real for s in slots}
    plans = [s.plan for s in slots if s.plan is not None and s.plan.initializer is not None]
    done: set[tuple[int, int]] = set()
    for p in plans:
        if p.unit is None or (p.rule.index, id(p.unit[1])) in done:  # type: ignore[union-attr]
            continue
        done.add((p.rule.index, id(p.unit[1])))  # type: ignore[union-attr]
        unit = p.unit[1]
        mine = {id(q.param) for q in plans if q.rule is p.rule and q.unit is not None and q.unit[1] is unit}
        keep = [(t, t.clone()) for o in unit.parameters() if id(o) in staged and id(o) not in mine
                for t in [staged[id(o)]]]  # fmt: skip
        p.initializer.init(_stand_in_tree(unit, staged), **_randomness(base_seed, p.unit[0], device, keyed))
        for t, saved in keep:
            t.copy_(saved)
    for s in slots:
        p = s.plan
        if p is None or p.initializer is None:
            continue
        if p.unit is None:
            target = p.target()
            if isinstance(target, nn.Module):
                target = stand_in(target, lambda t: staged.get(id(t), t))
            else:
                target = s.real
            p.initializer.init(target, **_randomness(base_seed, p.name, device, keyed))
        s.source = p.source


def _randomness(base_seed: int | None, name: str, device: torch.device, keyed: bool) -> dict[str, Any]:
    """The randomness arguments of a rule's ``init`` for the tensor (or unit) ``name``."""
    if keyed:
        return {"seed": base_seed, "name": name}
    return {"generator": stream_generator(base_seed, name, device)}


def _stand_in_tree(unit: nn.Module, staged: dict[int, Tensor]) -> nn.Module:
    """A deep copy of ``unit`` whose parameters are the staged tensors (writes to it land in them)."""
    ghost = copy.deepcopy(unit)  # meta parameters copy for free; real ones are copies, so they stay untouched
    wrappers: dict[int, nn.Parameter] = {}
    pairs = zip(ghost.modules(), unit.modules())  # the same traversal order: deepcopy keeps the structure
    for g, o in pairs:
        for k, v in o._parameters.items():
            if v is not None and id(v) in staged:
                if id(v) not in wrappers:
                    wrappers[id(v)] = nn.Parameter(staged[id(v)], requires_grad=v.requires_grad)
                g._parameters[k] = wrappers[id(v)]
        if isinstance(g, nn.RNNBase):
            g._init_flat_weights()
    return ghost


def _replacements(model: nn.Module, slots: list[_Slot], device: torch.device | None) -> dict[int, Tensor]:
    """The tensor to register in place of each one that changes, by the old one's id (one per distinct tensor).

    Every meta slot gets its staged tensor (a parameter like the old one, Python attributes
    kept); with ``device``, every real parameter and buffer elsewhere gets a copy there.
    """
    new: dict[int, Tensor] = {}
    for s in slots:
        assert s.real is not None
        new[id(s.tensor)] = _parameter_like(s.tensor, s.real) if s.is_parameter else s.real
    if device is None:
        return new
    for module in model.modules():
        for store, is_parameter in ((module._parameters, True), (module._buffers, False)):
            for t in store.values():
                if t is None or id(t) in new or t.is_meta or t.device == device \
                        or isinstance(t, nn.parameter.UninitializedTensorMixin):  # fmt: skip
                    continue
                new[id(t)] = _parameter_like(t, t.detach().to(device)) if is_parameter else t.to(device)
    return new


def _weight_norm_weights(model: nn.Module, new: dict[int, Tensor]) -> list[tuple[nn.Module, str, Tensor]]:
    """torch.nn.utils.weight_norm keeps the weight it computes as a plain attribute: computed from the new tensors."""
    return [(module, hook.name, hook.compute_weight(stand_in(module, lambda t: new.get(id(t), t))))
            for module in model.modules() for hook in weight_norm_hooks(module)]  # fmt: skip


def _commit(model: nn.Module, new: dict[int, Tensor], computed: list[tuple[nn.Module, str, Tensor]]) -> None:
    """Register the new tensors in place of the old ones, and set the computed attributes: assignments only.

    Every registration of one old tensor gets the same new one, so ties stay tied. An RNN
    also keeps a list of its weights, refreshed here: torch 2.13's RNN forward notices
    replaced weights by itself; the refresh keeps older releases (the package accepts
    torch >= 2.1) from running on stale tensors.
    """
    for module in model.modules():
        changed = False
        for store in (module._parameters, module._buffers):
            for attr, t in store.items():
                if t is not None and id(t) in new:
                    store[attr] = new[id(t)]
                    changed = True
        if changed and isinstance(module, nn.RNNBase):
            module._init_flat_weights()
    for module, attr, value in computed:
        setattr(module, attr, value)


def _report(plans: list[Planned], slots: list[_Slot]) -> InitReport:
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


# ---- re-enacting construction for models built on meta without deferred() -----------------------------------


def _reenact(model: nn.Module, unrecorded: list[_Slot]) -> Recording:
    """Record, on meta, what construction would have done to the ``unrecorded`` tensors; change nothing.

    Every real parameter and buffer is swapped for a meta stand-in holding its value, so
    the init code can run on the whole model without touching a real tensor; the
    model is restored afterwards from a :class:`~torchinit.policy.Snapshot` (registrations, attributes,
    transformers' ``_is_hf_initialized`` marks, which are cleared for the duration).
    A tied parameter (one tensor, or one storage, in several places) keeps its first
    registration (the input embedding, before the output head) and the later ones get
    stand-ins of their own, because eager construction
    initializes them before tying: the output head's init must not overwrite the
    embedding's (transformers ties after ``initialize_weights``; BERT's padding row).
    """
    recording = Recording()
    mode = RecordingMode(recording)
    targets = {id(s.tensor) for s in unrecorded}
    snapshot = Snapshot(model)
    owners_of_targets = set()
    try:
        _clear_init_flags(model)
        mode.paused = True
        swapped: dict[int, Tensor] = {}
        first_seen: set[int] = set()
        for module in model.modules():
            for store in (module._parameters, module._buffers):
                for k, v in store.items():
                    if v is None:
                        continue
                    if id(v) in targets:
                        owners_of_targets.add(id(module))
                        if storage_key(v) in first_seen:  # a tie: untied for the re-enactment (see below)
                            store[k] = _meta_like(v)
                            recording.add_leaf(store[k], UNDEFINED)
                            continue
                        first_seen.add(storage_key(v))
                        recording.add_leaf(v, UNDEFINED)
                    elif not v.is_meta:
                        if id(v) not in swapped:
                            swapped[id(v)] = _meta_like(v)
                            recording.add_leaf(swapped[id(v)], v.detach())
                        store[k] = swapped[id(v)]
        for module in model.modules():
            # a reparametrized module resets the tensors its parametrizations hold; a Transformer owns
            # nothing but re-initializes every matrix below it
            below = module.parametrizations if parametrize.is_parametrized(module) else \
                module if isinstance(module, nn.Transformer) else None  # fmt: skip
            if below is not None and any(id(t) in targets for t in below.parameters()):
                owners_of_targets.add(id(module))
        mode.paused = False
        failures = []
        with _recording_into(recording, mode), mode, torch.no_grad():
            for name, module in _post_order(model):
                method = reset_method(module)
                if method is not None and id(module) in owners_of_targets:
                    try:
                        own_init(module, only_torch=False)
                    except Exception as err:  # noqa: BLE001 - reported by name; the values stay unknown
                        failures.append(f"{name or type(model).__name__}.{method.__name__}(): {err}")
            model_init = _model_init(model)
            if model_init is None and reset_method(model) is None and not is_torch_module(model):
                failures.append(
                    f"{type(model).__name__} has no init method (init_weights, initialize_weights): its values "
                    "come from each module's reset_parameters, and whatever its constructor does to them itself "
                    "(an init loop, as torchvision's models and timm's EfficientNet have) is not known; build it "
                    "under torchinit.deferred() to get it"
                )
            if model_init is not None:
                try:
                    model_init()
                except Exception as err:  # noqa: BLE001
                    failures.append(f"{type(model).__name__}.{getattr(model_init, '__name__', 'init')}(): {err}")
        if failures:
            warnings.warn(
                "materialize_: re-enacting the construction of a model built on meta without deferred(): "
                + "; ".join(failures),
                UserWarning,
                stacklevel=3,
            )
    finally:
        mode.paused = False
        snapshot.restore()
    return recording


def _retie(model: nn.Module) -> None:
    """Re-tie a transformers model's weights, as its ``post_init`` does last (``.to("meta")`` unties them)."""
    tie = getattr(model, "tie_weights", None)
    if callable(tie) and getattr(model, "all_tied_weights_keys", None):
        try:
            tie()
        except Exception as err:  # noqa: BLE001 - the values are complete either way
            warnings.warn(f"materialize_: {type(model).__name__}.tie_weights() failed: {err}", UserWarning, stacklevel=3)


def _post_order(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Children before parents, as constructors run (a MultiheadAttention's out_proj before its own reset)."""
    seen: set[int] = set()

    def visit(name: str, module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
        if id(module) in seen:
            return
        seen.add(id(module))
        for child_name, child in module.named_children():
            yield from visit(f"{name}.{child_name}" if name else child_name, child)
        yield name, module

    yield from visit("", model)


def _model_init(model: nn.Module) -> Any:
    """The model's own whole-model init: transformers' ``initialize_weights``, or an ``init_weights()`` method."""
    for name in ("initialize_weights", "init_weights"):
        method = getattr(model, name, None)
        if not callable(method):
            continue
        try:
            required = [p for p in inspect.signature(method).parameters.values()
                        if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        except (TypeError, ValueError):
            continue
        if not required:
            return method
    return None


def _clear_init_flags(model: nn.Module) -> None:
    """Clear transformers' ``_is_hf_initialized`` marks (set under init_empty_weights): the caller restores them."""
    for obj in [*model.modules(), *model.parameters(), *model.buffers()]:
        getattr(obj, "__dict__", {}).pop("_is_hf_initialized", None)
