"""What each parameter is to muP: its role and width multipliers, found by comparing shapes with a base model.

The Maximal Update Parametrization (Yang et al., "Tensor Programs V", 2022) sorts a network's parameters by how
their dimensions grow with width. Here a dimension grows when the model's size there is larger than the base
model's (the same architecture at a smaller width), and each parameter gets one :class:`Role`:

=========  =====================================================  ===========================================
kind       growing dimensions                                     ``width_mult``
=========  =====================================================  ===========================================
input      the output dim only (an embedding, the first layer)    growth of the output dim (``fan_out_mult``)
hidden     the input and the output dim                           growth of the input dim (``fan_in_mult``)
output     the input dim only (a readout, a classifier head)      growth of the input dim (``fan_in_mult``)
vector     any, on a tensor of at most one dim (bias, norm)       growth of its dim (1 if fixed)
=========  =====================================================  ===========================================

A weight of two or more dims that grows nowhere is ``input`` with multiplier 1 (every muP rule is then the
standard parametrization). The input and output dims come from the layer that owns the weight, as for fans
(:func:`torchinit.schemes.layout.module_layout`: Linear ``(out, in)``, ConvNd ``(out, in/g, k...)``,
ConvTranspose ``(in, out/g, k...)``, Embedding ``(num, dim)``: ``num`` is its input, transformers' Conv1D
``(in, out)``); a kernel dim that grows is not a width change and is an error. Any other parameter of two or more
dims follows torch's convention (dim 1 input, dim 0 output) and a growing dim other than dim 1 counts as an
output dim: a position embedding ``(1, n, d)`` whose ``d`` grows is ``input``, as an embedding is.

Tied parameters (a parameter registered in several places) have one role, that of their first registration in
``named_parameters()`` order: tied input and output embeddings are ``input`` (the mup package's
``MuSharedReadout`` treats them so; the readout's own muP scaling then belongs in the forward pass).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from torchinit._util.tensors import is_uninitialized
from torchinit.model.policy import named_parameter_owners
from torchinit.schemes.layout import module_layout

__all__ = ["KINDS", "Role", "roles"]

#: The kinds of parameters, as the muP tables name them.
KINDS = ("input", "hidden", "output", "vector")

#: A parameter with more growing dims than this is not a layer muP has a rule for (the mup package refuses it too).
_MAX_GROWING = 2


@dataclass(frozen=True)
class Role:
    """A parameter's role under muP and how much wider it is than in the base model.

    Attributes:
        kind: ``"input"``, ``"hidden"``, ``"output"`` or ``"vector"`` (see :mod:`torchinit.mup.roles`).
        width_mult: the multiplier the muP rules use: ``fan_in_mult`` for hidden and output weights,
            ``fan_out_mult`` for input weights, the growth of its dim for a vector.
        fan_in_mult: how many times larger its input dim is than the base's (1 if it does not grow).
        fan_out_mult: the same for its output dim.
    """

    kind: str
    width_mult: float
    fan_in_mult: float = 1.0
    fan_out_mult: float = 1.0

    def __repr__(self) -> str:
        return f"Role({self.kind!r}, width_mult={self.width_mult:g})"


def roles(model: nn.Module, base: nn.Module) -> dict[str, Role]:
    """The muP role of every parameter of ``model``, found by comparing its shapes with those of ``base``.

    ``base`` is the same architecture at a smaller width (on any device: ``torch.device("meta")`` costs no
    memory). A dim grows where ``model``'s size is larger than ``base``'s; the table in :mod:`torchinit.mup.roles`
    turns the growing dims into a kind and a width multiplier. Nothing is stored on the parameters, so the roles
    hold for FSDP2's DTensors (their global shapes are compared) and under ``torch.compile``.

    Args:
        model: the model to train.
        base: the same architecture at the base width (where muP equals the standard parametrization).

    Returns:
        ``{qualified name: Role}`` in ``named_parameters()`` order; a tied parameter appears once, under its first
        name.

    Raises:
        TypeError: ``model`` or ``base`` is not an ``nn.Module``, or holds lazy parameters.
        ValueError: the parameter names differ, a parameter's number of dims differs, a dim shrinks, a kernel dim
            grows, or more than two dims grow: ``base`` is not the same architecture at a smaller width.

    Example:
        >>> import torch, torchinit.mup as mup
        >>> def mlp(width):
        ...     return torch.nn.Sequential(torch.nn.Linear(8, width), torch.nn.ReLU(), torch.nn.Linear(width, width),
        ...                                torch.nn.ReLU(), torch.nn.Linear(width, 10))
        >>> with torch.device("meta"):
        ...     base = mlp(64)
        >>> r = mup.roles(mlp(256), base)
        >>> [r[n].kind for n in ("0.weight", "2.weight", "4.weight", "2.bias", "4.bias")]
        ['input', 'hidden', 'output', 'vector', 'vector']
        >>> r["2.weight"], r["4.bias"]
        (Role('hidden', width_mult=4), Role('vector', width_mult=1))
    """
    _check_module("model", model)
    _check_module("base", base)
    base_params = {o.name: p for p, owners in named_parameter_owners(base) for o in owners}
    found: dict[str, Role] = {}
    seen: set[str] = set()
    for param, owners in named_parameter_owners(model):
        name = owners[0].name
        seen.update(o.name for o in owners)
        if name not in base_params:
            raise ValueError(f"base has no parameter {name!r}: base must be the same architecture as model at a "
                             "smaller width")  # fmt: skip
        found[name] = _role(name, tuple(param.shape), tuple(base_params[name].shape), owners[0].module,
                            owners[0].attr)  # fmt: skip
    extra = [n for n in base_params if n not in seen]
    if extra:
        raise ValueError(f"model has no parameter {extra[0]!r} that base has: base must be the same architecture as "
                         "model at a smaller width")  # fmt: skip
    return found


def _check_module(name: str, module: object) -> None:
    if not isinstance(module, nn.Module):
        raise TypeError(f"{name} must be an nn.Module; got {type(module).__name__}")
    if any(is_uninitialized(p) for p in module.parameters()):
        raise TypeError(f"{name} has lazy parameters whose shapes are not known yet: run a forward pass first")


def _role(name: str, shape: tuple[int, ...], base: tuple[int, ...], module: nn.Module, attr: str) -> Role:
    """The role of the parameter ``name`` of ``shape`` whose base has shape ``base``."""
    if len(shape) != len(base):
        raise ValueError(f"{name} has shape {shape} and base's has {base}: a different number of dims is not a "
                         "width change")  # fmt: skip
    growth = [_growth(name, i, s, b) for i, (s, b) in enumerate(zip(shape, base))]
    growing = [i for i, g in enumerate(growth) if g != 1.0]
    if len(growing) > _MAX_GROWING:
        raise ValueError(f"{name} grows in {len(growing)} dims ({shape} against base {base}): muP has rules for "
                         "weights with at most two width dims")  # fmt: skip
    if len(shape) <= 1:
        return Role("vector", growth[0] if growing else 1.0)
    fan_in_mult, fan_out_mult = _fan_mults(name, shape, base, growth, module, attr)
    if fan_in_mult != 1.0 and fan_out_mult != 1.0:
        return Role("hidden", fan_in_mult, fan_in_mult, fan_out_mult)
    if fan_in_mult != 1.0:
        return Role("output", fan_in_mult, fan_in_mult, 1.0)
    return Role("input", fan_out_mult, 1.0, fan_out_mult)


def _fan_mults(name: str, shape: tuple[int, ...], base: tuple[int, ...], growth: list[float], module: nn.Module,
               attr: str) -> tuple[float, float]:
    """How much the input and the output dims of a weight grew (a growing kernel dim of a known layer: an error)."""
    in_dims, known = _input_dims(module, attr)
    out_growing = [i for i, g in enumerate(growth) if g != 1.0 and i not in in_dims]
    if known and any(i not in module_layout(module).out_dims for i in out_growing):
        raise ValueError(f"{name} grows in a kernel dim ({shape} against base {base}): that is not a width change")
    return math.prod(growth[i] for i in in_dims), math.prod(growth[i] for i in out_growing)


def _growth(name: str, dim: int, size: int, base: int) -> float:
    """How many times larger ``size`` is than ``base`` in dim ``dim`` of ``name``; a shrinking dim is an error."""
    if size < base:
        raise ValueError(f"{name} is smaller in dim {dim} ({size}) than in base ({base}): model must be at least as "
                         "wide as base in every dim")  # fmt: skip
    if base == 0:
        raise ValueError(f"{name} has size 0 in dim {dim} of base: a width multiplier needs a base size")
    return size / base


def _input_dims(module: nn.Module, attr: str) -> tuple[tuple[int, ...], bool]:
    """The input dims of the weight ``attr`` of ``module``, and whether its layer's layout is known (else torch's
    convention: dim 1)."""
    if attr == "weight":
        try:
            return module_layout(module).in_dims, True
        except TypeError:  # not a layer with a known layout
            pass
    return (1,), False

