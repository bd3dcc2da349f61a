"""Deferred construction and eager-equivalent materialization.

::

    with torchinit.deferred():
        model = Transformer(config)            # parameters on meta: no memory, construction recorded
    report = torchinit.materialize_(model)     # what Transformer(config) would have given, each value written once

Inside :func:`deferred`, every parameter a module registers is moved to the meta
device as it is registered, and every operation construction applies to it is
recorded (:mod:`torchinit.recording.log`): ``reset_parameters``, the constructor's own
``fill_``/``copy_``/``mul_``, init loops, transformers' ``post_init``, timm's weight
init, torchvision's constructor loops. Buffers are computed for real.
:func:`materialize_` then replays, for each parameter, only the operations that decide
its final value, so the model gets what eager construction gives it: deterministic
values exactly, random values from the same distributions.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from torchinit._util.tensors import is_uninitialized, keeps_thread_modes, tensor_stores
from torchinit.model.construction import (
    weight_norm_hooks,
)
from torchinit.model.deferral import deferred, note_materialized, refuse_emptied, refuse_lost_recordings
from torchinit.model.policy import (
    InitReport,
    Planned,
    Policy,
    check_on_meta,
    run_unit,
)
from torchinit.model.reenact import reenact, retie
from torchinit.model.sharded import materialize_sharded
from torchinit.model.slots import (
    KEPT,
    Slot,
    find_unknown,
    meta_slots,
    note_given,
    real_parameter_slots,
    slot_report,
    stage,
    unwritten_real_parameters,
    wanted_by_recording,
    warn_unwritten,
)
from torchinit.model.snapshot import Snapshot
from torchinit.model.standins import module_stand_in, module_tree_stand_in, parameter_like
from torchinit.recording.log import (
    Recording,
    recording_of,
)
from torchinit.rng.sampling import is_dtensor, make_sampler
from torchinit.rng.seeds import derive_seed, stream_kwargs

__all__ = ["deferred", "materialize_"]


@keeps_thread_modes
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
       result is replayed the same way. A real parameter of such a model whose values no
       weight can hold (non-finite, or beyond 1e30: a legacy ``torch.FloatTensor(n)`` ignores
       ``torch.device("meta")`` and leaves its memory unwritten) is re-enacted like a meta
       one: set where the model's init or a rule sets it (a warning says it was replaced),
       else kept; real parameters with plausible values (loaded ones) are left as they are;
    4. every value not known to equal eager construction's is named (``docs/materialize.md``,
       "Unknown values"): with ``strict=True`` in a ValueError, before anything changes;
       otherwise in a warning. Undefined values (a ``torch.empty`` no code wrote, a buffer
       no init recomputes) are then zero, never silently; on the meta paths, a reset's value
       below a constructor that is not torch.nn's own and that the model's own init does not
       set again is kept (a constructor may have changed it: timm LeViT's
       ``bn_weight_init=0``), and so is a real parameter nothing sets.

    The call is all-or-nothing: every check runs before any memory is allocated, values are computed into
    new tensors, and the registrations are replaced only once all are ready; if anything raises
    (``KeyboardInterrupt`` included) the model and ``generator`` are put back as they were. Ties stay tied,
    Python attributes on parameters are kept, already-real tensors are left as they are (moved to ``device``
    when it is given), but for the real parameters of a model built on meta (point 3). The guarantees in
    full: ``docs/materialize.md``, "All or nothing".

    Args:
        model: a model built under :func:`deferred` or on the meta device.
        policy: rules that take precedence over construction.
        device: where to allocate (default: the CPU): a ``torch.device``, a string such as
            ``"cuda:0"`` or a device index; one this process cannot allocate on is a ValueError.
        strict: raise, before anything changes, for every value not known to equal eager
            construction's (point 4), instead of warning.
        generator: the seed source. One number is drawn from it per call; every random
            value drawn at materialization then comes from a stream keyed by that number
            and the parameter's qualified name (:func:`~torchinit.rng.seeds.stream_seed`), so
            re-seeding the generator reproduces the weights and two calls with one
            generator differ. (Values a constructor drew for real before registering them,
            ``nn.Parameter(torch.randn(d))``, were drawn at construction.) None: the
            global RNG, in construction order, as eager construction draws (on a sharded
            model too: every rank must then start from the same global RNG state). Large random
            fills run chunked in threads from the keyed Philox stream
            (:mod:`torchinit.rng.fastfill`): the same distribution as torch's, another stream;
            either way the weights are a function of the seed.
        seed: draw every random value from the keyed stream instead (:mod:`torchinit.rng.keyed`;
            not with ``generator``): a parameter's values then depend only on
            ``(seed, its canonical name, shape, initializer)``, never on the call order, the
            other parameters, the device or the world size. The canonical name is the
            qualified name without the segments torch's wrappers insert (``_orig_mod`` of
            ``torch.compile``, ``_checkpoint_wrapped_module`` of ``checkpoint_wrapper``, the
            leading ``module`` of DDP/``DataParallel``: :func:`~torchinit.rng.seeds.canonical_name`),
            so a wrapped model gets the unwrapped model's weights. Policy rules get
            ``init(t, seed=seed, name=qualified_name)``; a recorded ``normal_``/``uniform_``
            (a module's ``reset_parameters``), ``trunc_normal_``, ``orthogonal_`` or
            ``sparse_`` of parameter ``n`` draws from the stream named ``n`` (its ``k``-th
            random operation, ``k >= 1``, from ``n#k``); the rare random operations with no
            keyed form (``bernoulli_``, ``random_``, ``randn`` factories) draw from a torch
            generator seeded by a hash of ``(seed, n)``.

    Returns:
        An :class:`~torchinit.model.policy.InitReport`; the rule column says where each value
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
    _check_arguments(model, policy, strict)
    make_sampler(generator, seed)  # types; not both
    moved_to = None if device is None else _device(device, generator)  # where real tensors move too
    device = moved_to or _device(None, generator)

    plans = (policy if policy is not None else Policy([])).plan(model, strict=strict)
    slots = meta_slots(model, plans)
    for slot in slots:  # every rule's arguments, checked on meta before anything is allocated
        if slot.plan is not None and slot.plan.initializer is not None:
            check_on_meta(slot.plan)
    refuse_emptied(model, strict, whole=not slots)  # to_empty() before materialize_: nothing to give values to
    if any(is_dtensor(s.tensor) for s in slots):
        report = materialize_sharded(model, plans, slots, moved_to, strict, generator, seed)
    else:
        report = _materialize_plain(model, plans, slots, device, moved_to, strict, generator, seed)
    if slots:  # given values (a call with nothing to materialize gave none)
        note_materialized(model)
    return report


def _check_arguments(model: Any, policy: Any, strict: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module; got {type(model).__name__}")
    if policy is not None and not isinstance(policy, Policy):
        raise TypeError(f"policy must be a torchinit.Policy or None; got {type(policy).__name__}")
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be a bool; got {type(strict).__name__}")


def _materialize_plain(model: nn.Module, plans: list[Planned], slots: list[Slot], device: torch.device,
                       moved_to: torch.device | None, strict: bool, generator: torch.Generator | None,
                       seed: int | None) -> InitReport:
    """:func:`materialize_` of a model without DTensors: stage every value in new memory, then commit."""
    for slot in slots:
        slot.recording = recording_of(slot.tensor)
    unrecorded = [s for s in slots if s.recording is None]
    said = refuse_lost_recordings(model, [(s.name, s.tensor) for s in unrecorded], strict)  # replaced, pickled
    if unrecorded:  # built on meta without deferred(): a real parameter there is suspect (real_parameter_slots)
        real = real_parameter_slots(model, plans)
        slots, unrecorded = slots + real, unrecorded + real
    snapshot = Snapshot(model, generator=generator)  # registrations only: no tensor of the model is written
    with snapshot.on_failure():
        _reenact_unrecorded(model, unrecorded)
        find_unknown(slots, wanted_by_recording(slots), strict, said)
        if unrecorded:
            warn_unwritten(unwritten_real_parameters(model, plans))
        slots = [s for s in slots if s.source != KEPT]  # real parameters nothing sets stay as they are
        wanted = wanted_by_recording(slots)
        base_seed = derive_seed(generator) if seed is None else seed  # the one draw from the caller's generator
        with torch.no_grad():
            # the fallible work: every new tensor, moved tensor and weight_norm weight, into new memory
            stage(slots, wanted, device, base_seed, keyed=seed is not None, root=model)
            _apply_rules(slots, device, base_seed, keyed=seed is not None, root=model)
            new = _replacements(model, slots, moved_to)
            computed = _weight_norm_weights(model, new)
            _commit(model, new, computed)  # assignments only
            note_given(new.values())
            if unrecorded:
                retie(model)
        for p in plans:
            p.param = new.get(id(p.param), p.param)
        return slot_report(plans, slots)


def _reenact_unrecorded(model: nn.Module, unrecorded: list[Slot]) -> None:
    """Give the slots no recording covers the recording of a re-enacted construction (rules cover the rest)."""
    if not unrecorded:
        return
    needed = [s for s in unrecorded if s.plan is None or s.plan.initializer is None]
    reenacted = reenact(model, needed) if needed else Recording()
    for s in unrecorded:
        s.recording, s.source = reenacted, "reset_parameters"


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
    except Exception as err:  # torch raises RuntimeError, AssertionError, NotImplementedError...
        raise ValueError(f"device {str(device)!r} cannot be used here: {str(err).splitlines()[0]}") from None
    return device


def _apply_rules(slots: list[Slot], device: torch.device, base_seed: int | None, *, keyed: bool = False,
                 root: nn.Module | None = None) -> None:
    """Run the policy's initializers on the staged tensors; the model itself is not touched.

    Layout-aware initializers see a shallow stand-in of the owning layer holding the staged
    tensors; module-level ones (``presets.torch_default``) a deep stand-in of their unit.
    Module-level units run first, so the per-parameter rules, which override them, win.
    """
    staged = {id(s.tensor): s.staged for s in slots}
    plans = [s.plan for s in slots if s.plan is not None and s.plan.initializer is not None]
    done: set[tuple[int, int]] = set()
    for p in plans:
        if p.unit is not None and p.first_of_unit(done):
            run_unit(p, plans, target=module_tree_stand_in(p.unit[1], staged), values=lambda o: staged.get(id(o)),
                     **stream_kwargs(base_seed, p.unit[0], device, keyed, root))
    for s in slots:
        plan = s.plan
        if plan is not None and plan.initializer is not None:
            if plan.unit is None:
                owner = plan.target()
                target = (module_stand_in(owner, lambda t: staged.get(id(t), t)) if isinstance(owner, nn.Module)
                          else s.staged)
                plan.initializer.init(target, **stream_kwargs(base_seed, plan.name, device, keyed, root))
            s.source = plan.source


def _replacements(model: nn.Module, slots: list[Slot], device: torch.device | None) -> dict[int, Tensor]:
    """The tensor to register in place of each one that changes, by the old one's id (one per distinct tensor).

    Every meta slot gets its staged tensor (a parameter like the old one, Python attributes
    kept); with ``device``, every real parameter and buffer elsewhere gets a copy there.
    """
    new: dict[int, Tensor] = {}
    for s in slots:
        new[id(s.registered)] = parameter_like(s.registered, s.staged) if s.is_parameter else s.staged
    if device is None:
        return new
    for module in model.modules():
        for store, is_parameter in zip(tensor_stores(module), (True, False)):
            for t in store.values():
                if t is None or id(t) in new or t.is_meta or t.device == device or is_uninitialized(t):
                    continue
                new[id(t)] = parameter_like(t, t.detach().to(device)) if is_parameter else t.to(device)
    return new


def _weight_norm_weights(model: nn.Module, new: dict[int, Tensor]) -> list[tuple[nn.Module, str, Tensor]]:
    """torch.nn.utils.weight_norm keeps the weight it computes as a plain attribute: computed from the new tensors."""
    return [(module, hook.name, hook.compute_weight(module_stand_in(module, lambda t: new.get(id(t), t))))
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
        for store in tensor_stores(module):
            for attr, t in store.items():
                if t is not None and id(t) in new:
                    store[attr] = new[id(t)]
                    changed = True
        if changed and isinstance(module, nn.RNNBase):
            module._init_flat_weights()
    for module, attr, value in computed:
        setattr(module, attr, value)
