"""Re-enactment: run a model's own init (``reset_parameters``, ``init_weights``, ``post_init``) on meta stand-ins
of the tensors that no recording covers (a model built under ``torch.device("meta")``), and record it."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from torchinit._util.warn import warn
from torchinit.model.construction import (
    is_torch_module,
    own_init,
    reset_method,
)
from torchinit.model.deferred import meta_like, recording_into
from torchinit.model.policy import (
    Snapshot,
)
from torchinit.model.slots import Slot
from torchinit.recording.log import (
    UNDEFINED,
    Recording,
    RecordingMode,
    storage_key,
)


def reenact(model: nn.Module, unrecorded: list[Slot]) -> Recording:
    """Record, on meta, what construction would have done to the ``unrecorded`` tensors; change nothing.

    Every real parameter and buffer is swapped for a meta stand-in holding its value, so
    the init code can run on the whole model without touching a real tensor; the
    model is restored afterwards from a :class:`~torchinit.model.policy.Snapshot` (registrations, attributes,
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
                            store[k] = meta_like(v)
                            recording.add_leaf(store[k], UNDEFINED)
                            continue
                        first_seen.add(storage_key(v))
                        recording.add_leaf(v, UNDEFINED)
                    elif not v.is_meta:
                        if id(v) not in swapped:
                            swapped[id(v)] = meta_like(v)
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
        with recording_into(recording, mode), mode, torch.no_grad():
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
            warn(
                "materialize_: re-enacting the construction of a model built on meta without deferred(): "
                + "; ".join(failures),
                UserWarning,
                stacklevel=3,
            )
    finally:
        mode.paused = False
        snapshot.restore()
    return recording


def retie(model: nn.Module) -> None:
    """Re-tie a transformers model's weights, as its ``post_init`` does last (``.to("meta")`` unties them)."""
    tie = getattr(model, "tie_weights", None)
    if callable(tie) and getattr(model, "all_tied_weights_keys", None):
        try:
            tie()
        except Exception as err:  # noqa: BLE001 - the values are complete either way
            warn(f"materialize_: {type(model).__name__}.tie_weights() failed: {err}", UserWarning, stacklevel=3)


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
