"""Stand-ins: tensors and module copies that take a model's place while code runs on them.

Whole-model calls run code (a policy's initializers, a module's own init, torch's constructors) on
something other than the model's own tensors: meta tensors for a dry run or a recording, staged
tensors that are committed only once everything succeeded. Every such stand-in is made here:

- :func:`meta_like` (same shape, strides and dtype on meta) and :func:`full_meta_like` (the global shape
  of a DTensor, contiguous), each a parameter like the original when it is one;
- :func:`parameter_like`, the same parameter class, ``requires_grad`` and Python attributes around
  other data;
- :func:`module_stand_in`, a shallow copy of a module holding other tensors, and
  :func:`module_tree_stand_in`, a deep copy of a module tree whose parameters are given tensors.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import cast, overload

import torch
from torch import Tensor, nn

__all__ = ["meta_like", "full_meta_like", "parameter_like", "module_stand_in", "module_tree_stand_in"]


@overload
def meta_like(t: nn.Parameter) -> nn.Parameter: ...
@overload
def meta_like(t: Tensor) -> Tensor: ...
def meta_like(t: Tensor) -> Tensor:
    """A meta tensor with ``t``'s shape, strides and dtype; a parameter like ``t`` if ``t`` is one."""
    meta = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")
    return parameter_like(t, meta) if isinstance(t, nn.Parameter) else meta


def full_meta_like(t: Tensor) -> Tensor:
    """A contiguous meta tensor of ``t``'s (global, for a DTensor) shape and dtype; a parameter like ``t`` if it is
    one."""
    meta = torch.empty(t.shape, dtype=t.dtype, device="meta")
    return parameter_like(t, meta) if isinstance(t, nn.Parameter) else meta


def parameter_like(old: Tensor, data: Tensor) -> nn.Parameter:
    """A parameter holding ``data`` with ``old``'s class (where it can), ``requires_grad`` and Python attributes."""
    # callers pass a parameter; a class that refuses these arguments (a plain tensor's) falls back below
    parameter_class = cast("type[nn.Parameter]", type(old))
    try:
        new = parameter_class(data, requires_grad=old.requires_grad)
    except Exception:  # a Parameter subclass with another constructor
        new = nn.Parameter(data, requires_grad=old.requires_grad)
    new.__dict__.update(getattr(old, "__dict__", {}))
    return new


def module_stand_in(module: nn.Module, swap: Callable[[Tensor], Tensor]) -> nn.Module:
    """A shallow copy of ``module`` holding ``swap(t)`` for each of its parameters and buffers ``t``.

    What an initializer that wants the layer is given when the layer itself must not be
    written (meta copies for a dry run, staged tensors for materialization). A swapped
    parameter stays an ``nn.Parameter``.
    """

    def swapped(t: Tensor | None) -> Tensor | None:
        if t is None:
            return None
        new = swap(t)
        if isinstance(t, nn.Parameter) and not isinstance(new, nn.Parameter):
            new = nn.Parameter(new, requires_grad=t.requires_grad)
        return new

    ghost = copy.copy(module)
    # a swapped parameter stays a parameter (``swapped`` wraps it), as torch's annotation of _parameters says
    ghost._parameters = cast("dict[str, nn.Parameter | None]", {k: swapped(v) for k, v in module._parameters.items()})
    ghost._buffers = {k: swapped(v) for k, v in module._buffers.items()}
    return ghost


def module_tree_stand_in(unit: nn.Module, staged: dict[int, Tensor]) -> nn.Module:
    """A deep copy of ``unit`` whose parameters are the ``staged`` tensors (by the original's id): writes to the copy
    land in them."""
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
