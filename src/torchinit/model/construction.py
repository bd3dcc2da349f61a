"""What module constructors do to their parameters, in their order: one place for torch's init program.

Used by :func:`~torchinit.model.presets.torch_default` (torch's defaults as a policy, bit for
bit) and by :func:`~torchinit.materialize_` when it re-enacts the construction of a model
that was built on meta without :func:`~torchinit.deferred`.

The program for a module: its children first (constructors build their children before
they initialize their own parameters), then its own ``reset_parameters`` (or
MultiheadAttention's ``_reset_parameters``), with torch's composite modules in their
constructors' order:

* a TransformerEncoder/Decoder deep-copies one built layer, so every layer holds the same
  values: one layer is initialized and copied into the others;
* ``nn.Transformer`` calls ``_reset_parameters`` (``xavier_uniform_`` on every matrix)
  after building its encoder and decoder, although it owns no parameter itself;
* a weight-normed module (``torch.nn.utils.weight_norm``, or a parametrization such as
  ``parametrizations.weight_norm``) was initialized before the reparametrization: its
  own reset runs on a stand-in whose weight is a plain tensor, and the reparametrization's
  inverse then gives ``weight_g``/``weight_v`` (or ``original0``/``original1``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = [
    "reset_method", "is_torch_module", "constructor_init", "own_init", "base_class", "weight_norm_hooks",
    "parametrizations_of", "COMPOSITES",
]  # fmt: skip

#: Composite torch modules whose constructors initialize their children in an order (or a way) of their own.
COMPOSITES = (nn.MultiheadAttention, nn.TransformerEncoder, nn.TransformerDecoder, nn.Transformer)


def reset_method(module: nn.Module) -> Callable[[], None] | None:
    """The module's own re-initialization: ``reset_parameters``, or ``_reset_parameters`` (MultiheadAttention)."""
    for name in ("reset_parameters", "_reset_parameters"):
        method = getattr(module, name, None)
        if callable(method):
            return method
    return None


def base_class(module: nn.Module) -> type:
    """The module's own class (a parametrized module's class is a subclass torch made for it)."""
    cls = type(module)
    return cls.__bases__[0] if parametrize.is_parametrized(module) else cls


def is_torch_module(module: nn.Module) -> bool:
    """Whether the module's class is one of torch.nn's own."""
    return base_class(module).__module__.startswith("torch.nn.")


def parametrizations_of(module: nn.Module) -> nn.ModuleDict | None:
    """The ``parametrizations`` of a module that ``torch.nn.utils.parametrize`` reparametrized; None for any other."""
    return getattr(module, "parametrizations", None) if parametrize.is_parametrized(module) else None


def weight_norm_hooks(module: nn.Module) -> list:
    """The ``torch.nn.utils.weight_norm`` hooks of ``module`` (one per reparametrized tensor)."""
    from torch.nn.utils.weight_norm import WeightNorm

    return [h for h in module._forward_pre_hooks.values() if isinstance(h, WeightNorm)]


def constructor_init(module: nn.Module, *, only_torch: bool = True) -> None:
    """Apply to ``module``'s subtree what the constructors apply, in their order (see the module docstring).

    Args:
        module: the module.
        only_torch: run only torch.nn's own resets (``presets.torch_default``); with False,
            any module's ``reset_parameters`` (re-enacting a user's model).
    """
    if isinstance(module, (nn.TransformerEncoder, nn.TransformerDecoder)):
        layers = list(module.layers)
        if layers:  # the constructor deep-copies one built layer: the same values in every layer
            constructor_init(layers[0], only_torch=only_torch)
            for layer in layers[1:]:
                for dst, src in zip(layer.parameters(), layers[0].parameters()):
                    dst.copy_(src)
        if module.norm is not None:
            constructor_init(module.norm, only_torch=only_torch)
        return
    for name, child in module.named_children():
        if name == "parametrizations" and parametrize.is_parametrized(module):
            continue  # the reparametrized tensors come from the module's own reset, below
        constructor_init(child, only_torch=only_torch)
    own_init(module, only_torch=only_torch)


def own_init(module: nn.Module, *, only_torch: bool = True) -> None:
    """The module's own step of :func:`constructor_init`: its reset (on plain tensors if it is reparametrized)."""
    if only_torch and not is_torch_module(module):
        return
    owns = any(p is not None for p in module._parameters.values()) or parametrize.is_parametrized(module)
    if not (owns or isinstance(module, nn.Transformer)):
        return
    reset = reset_method(module)
    if reset is None:
        return
    if parametrize.is_parametrized(module) or weight_norm_hooks(module):
        _reset_reparametrized(module)
    else:
        reset()


def _reset_reparametrized(module: nn.Module) -> None:
    """Run the module's reset on plain tensors, then give the reparametrization their values."""
    norms = {h.name: h for h in weight_norm_hooks(module)}
    parametrizations = parametrizations_of(module)
    names = list(parametrizations.keys()) if parametrizations is not None else []
    names += list(norms)
    stand_in: nn.Module = object.__new__(base_class(module))
    stand_in.__dict__ = dict(module.__dict__)
    stand_in._parameters = dict(module._parameters)
    stand_in._forward_pre_hooks = type(module._forward_pre_hooks)()
    plain: dict[str, nn.Parameter] = {}
    for name in names:
        current = getattr(module, name).detach()  # the tensor the reparametrization computes now
        plain[name] = nn.Parameter(torch.empty_like(current))
        stand_in._parameters[name] = plain[name]
    stand_in.__dict__.pop("parametrizations", None)
    for name in names:
        stand_in.__dict__.pop(name, None)  # weight_norm keeps the computed weight as a plain attribute
    reset = reset_method(stand_in)
    assert reset is not None  # own_init found it on the module, and the stand-in is of the module's own class
    reset()
    for name in names:
        value = plain[name].detach()
        if name in norms:  # torch.nn.utils.weight_norm: g = ||v|| over all dims but dim, v = the weight
            hook = norms[name]
            getattr(module, name + "_v").copy_(value)
            getattr(module, name + "_g").copy_(torch.norm_except_dim(value, 2, hook.dim))
            setattr(module, name, hook.compute_weight(module))
        else:  # a parametrization: assigning calls its right_inverse
            setattr(module, name, value)
