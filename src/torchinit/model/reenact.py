"""Re-enactment: run a model's own init (``reset_parameters``, ``init_weights``, ``post_init``) on meta stand-ins
of the tensors that no recording covers (a model built under ``torch.device("meta")``), and record it."""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator
from typing import Any

from torch import Tensor, nn

from torchinit._util.tensors import tensor_stores
from torchinit._util.warn import warn
from torchinit.model.construction import (
    is_torch_module,
    own_init,
    parametrizations_of,
    reset_method,
)
from torchinit.model.deferral import Rehearsal
from torchinit.model.slots import Slot
from torchinit.model.standins import meta_like
from torchinit.recording.log import (
    UNDEFINED,
    Recording,
    storage_key,
)


def reenact(model: nn.Module, unrecorded: list[Slot]) -> Recording:
    """Record, on meta, what construction would have done to the ``unrecorded`` tensors; change nothing.

    Every real parameter and buffer is swapped for a meta stand-in holding its value, so
    the init code can run on the whole model without touching a real tensor; the
    model is restored afterwards (a :class:`~torchinit.model.deferral.Rehearsal`: registrations,
    attributes, transformers' ``_is_hf_initialized`` marks, which are cleared for the duration).
    A tied parameter (one tensor, or one storage, in several places) keeps its first
    registration (the input embedding, before the output head) and the later ones get
    stand-ins of their own, because eager construction
    initializes them before tying: the output head's init must not overwrite the
    embedding's (transformers ties after ``initialize_weights``; BERT's padding row).
    """
    targets = {id(s.tensor) for s in unrecorded}
    with Rehearsal(model) as rehearsal:
        _clear_init_flags(model)
        stand_ins = {id(s.replaces): s.tensor for s in unrecorded if s.replaces is not None}
        owners = _swap_in_stand_ins(model, targets, rehearsal.recording, stand_ins)
        owners |= _owners_from_above(model, targets)
        with rehearsal.running():
            failures = _run_own_inits(model, owners)
            resets = [(0, len(rehearsal.recording.ops))]
            with _noting_resets(model, rehearsal.recording, resets, _resets_again(model)):
                failures += _run_model_init(model)
        if failures:
            warn(
                "materialize_: re-enacting the construction of a model built on meta without deferred(): "
                + "; ".join(failures),
                UserWarning,
            )
    for s in unrecorded:
        s.reset_spans = resets
        s.constructors_known = _constructors_known(model, s)
    return rehearsal.recording


def _constructors_known(model: nn.Module, slot: Slot) -> bool:
    """Whether every module above the slot's owners (the root included) is one of torch.nn's own: their
    constructors change nothing that their children's resets wrote, so a reset's value is eager's."""
    for name, _, _ in slot.places:
        owner = name.split(".")[:-1]
        for depth in range(len(owner)):  # the owner's ancestors: the root, then each prefix above the owner
            if not is_torch_module(model.get_submodule(".".join(owner[:depth]))):
                return False
    return True


def _resets_again(model: nn.Module) -> bool:
    """Whether the model's own init, called as re-enactment calls it, resets modules that eager construction
    did not reset again: timm's ``init_weights(needs_reset=True)``, which timm's constructors call with
    ``needs_reset=False`` (their modules have reset themselves). A reset that another model's init calls
    (transformers' Wav2Vec2 resets its projections in ``_init_weights``) is what eager construction does."""
    method = _model_init(model)
    try:
        parameter = inspect.signature(method).parameters.get("needs_reset") if method is not None else None
    except (TypeError, ValueError):
        return False
    return parameter is not None and parameter.default is True


@contextlib.contextmanager
def _noting_resets(model: nn.Module, recording: Recording, spans: list[tuple[int, int]],
                   active: bool) -> Iterator[None]:
    """While the block runs, append to ``spans`` the range of operations each module reset makes (if ``active``).

    A model's own init that resets its modules again (:func:`_resets_again`) gives them a reset's value,
    which a constructor may have changed after the reset in eager construction (LeViT's BatchNorm weights
    set to 0), not a value the model's init decides. The resets are wrapped by instance attributes, removed
    afterwards.
    """
    wrapped: list[tuple[nn.Module, str]] = []
    try:  # installed inside the try, each noted before it is set: an interrupt leaves none behind
        for module in (model.modules() if active else ()):
            for name in ("reset_parameters", "_reset_parameters"):
                method = getattr(module, name, None)
                if callable(method) and name not in vars(module):
                    wrapped.append((module, name))
                    vars(module)[name] = _span_noting(method, recording, spans)
        yield
    finally:
        for module, name in wrapped:
            vars(module).pop(name, None)


def _span_noting(method: Any, recording: Recording, spans: list[tuple[int, int]]) -> Any:
    @functools.wraps(method)
    def reset(*args: Any, **kwargs: Any) -> Any:
        start = len(recording.ops)
        try:
            return method(*args, **kwargs)
        finally:
            spans.append((start, len(recording.ops)))

    return reset


def _swap_in_stand_ins(model: nn.Module, targets: set[int], recording: Recording,
                       stand_ins: dict[int, Tensor]) -> set[int]:
    """Register a meta stand-in for every real tensor (its value a leaf of ``recording``) and for every later
    registration of a tied target; the targets' values are undefined leaves. A real parameter with a slot
    (``stand_ins``, by its id) gets its slot's stand-in, a target. Returns the ids of the modules that own a
    target."""
    owners: set[int] = set()
    swapped: dict[int, Tensor] = {}
    first_seen: set[int] = set()
    for module in model.modules():
        for store in tensor_stores(module):
            for k, v in store.items():
                if v is None:
                    continue
                if id(v) in stand_ins:
                    v = store[k] = stand_ins[id(v)]
                if id(v) in targets:
                    owners.add(id(module))
                    if storage_key(v) in first_seen:  # a tie: untied for the re-enactment (see reenact)
                        untied = store[k] = meta_like(v)
                        recording.add_leaf(untied, UNDEFINED)
                        continue
                    first_seen.add(storage_key(v))
                    recording.add_leaf(v, UNDEFINED)
                elif not v.is_meta:
                    if id(v) not in swapped:
                        swapped[id(v)] = meta_like(v)
                        recording.add_leaf(swapped[id(v)], v.detach())
                    store[k] = swapped[id(v)]
    return owners


def _owners_from_above(model: nn.Module, targets: set[int]) -> set[int]:
    """Modules whose own init writes targets they do not own: a reparametrized module resets the tensors its
    parametrizations hold; a Transformer owns nothing but re-initializes every matrix below it."""
    owners = set()
    for module in model.modules():
        below: nn.Module | None = parametrizations_of(module)
        if below is None and isinstance(module, nn.Transformer):
            below = module
        if below is not None and any(id(t) in targets for t in below.parameters()):
            owners.add(id(module))
    return owners


def _run_own_inits(model: nn.Module, owners: set[int]) -> list[str]:
    """Each owning module's own init, children first; the failures, by name (their values stay unknown)."""
    failures = []
    for name, module in _post_order(model):
        method = reset_method(module)
        if method is not None and id(module) in owners:
            try:
                own_init(module, only_torch=False)
            except Exception as err:  # reported by name; the values stay unknown
                failures.append(f"{name or type(model).__name__}.{method.__name__}(): {err}")
    return failures


def _run_model_init(model: nn.Module) -> list[str]:
    """The model's own init method, if it has one; its failure, as a sentence.

    A model with none (a torchvision model, timm's EfficientNet) gets each module's reset_parameters only;
    what its constructor did to them (an init loop) is not known, and :func:`~torchinit.model.slots.find_unknown`
    names every tensor a reset decides below it (strict raises).
    """
    model_init = _model_init(model)
    if model_init is None:
        return []
    try:
        model_init()
    except Exception as err:  # reported as a sentence, like the other failures
        return [f"{type(model).__name__}.{getattr(model_init, '__name__', 'init')}(): {err}"]
    return []


def retie(model: nn.Module) -> None:
    """Re-tie a transformers model's weights, as its ``post_init`` does last (``.to("meta")`` unties them)."""
    tie = getattr(model, "tie_weights", None)
    if callable(tie) and getattr(model, "all_tied_weights_keys", None):
        try:
            tie()
        except Exception as err:  # the values are complete either way
            warn(f"materialize_: {type(model).__name__}.tie_weights() failed: {err}", UserWarning)


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
                        if p.default is inspect.Parameter.empty
                        and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        except (TypeError, ValueError):
            continue
        if not required:
            return method
    return None


def _clear_init_flags(model: nn.Module) -> None:
    """Clear transformers' ``_is_hf_initialized`` marks (set under init_empty_weights): the caller restores them."""
    for obj in [*model.modules(), *model.parameters(), *model.buffers()]:
        getattr(obj, "__dict__", {}).pop("_is_hf_initialized", None)
