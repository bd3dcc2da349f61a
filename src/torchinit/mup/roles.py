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
from typing import Any, NamedTuple

from torch import nn
from torch.nn.utils import parametrize

from torchinit._util.tensors import is_uninitialized
from torchinit.model.policy import named_parameter_owners
from torchinit.mup.depth import block_renamer
from torchinit.schemes.layout import module_layout

__all__ = ["KINDS", "Role", "roles", "registration_role"]

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


def roles(model: nn.Module, base: nn.Module, *, delta: nn.Module | None = None) -> dict[str, Role]:
    """The muP role of every parameter of ``model``, found by comparing its shapes with those of ``base``.

    ``base`` is the same architecture at a smaller width (on any device: ``torch.device("meta")`` costs no
    memory). A dim grows where ``model``'s size is larger than ``base``'s; the table in :mod:`torchinit.mup.roles`
    turns the growing dims into a kind and a width multiplier. A model at the base width itself shows no growing
    dim: pass ``delta``, the architecture at any other width, and the width dims are those where ``delta`` differs
    from ``base`` (the multipliers still compare ``model`` with ``base``; the mup package's ``delta`` does the
    same). Nothing is stored on the parameters, so the roles hold for FSDP2's DTensors (their global shapes are
    compared) and under ``torch.compile``.

    Args:
        model: the model to train.
        base: the same architecture at the base width (where muP equals the standard parametrization).
        delta: the same architecture at another width, to tell the width dims where ``model`` has the base's
            shapes (default: ``model`` itself).

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
    base_shapes = _shapes("base", base, model)
    delta_shapes = _shapes("delta", delta, model) if delta is not None else None
    base_groups = _conv_groups(base, model)
    found: dict[str, Role] = {}
    for param, owners in named_parameter_owners(model):
        shape = tuple(param.shape)
        each = [_registration(model, o, shape, base_shapes[o.name], delta_shapes[o.name] if delta_shapes else shape,
                              base_groups.get(o.name, 1)) for o in owners]  # fmt: skip
        found[owners[0].name] = next((r for r in each if r.kind == "input"), each[0]) if len(each) > 1 else each[0]
    return found


def registration_role(model: nn.Module, base: nn.Module, delta: nn.Module | None, name: str, module: nn.Module,
                      attr: str) -> Role:
    """The role the parameter registered as ``name`` (attribute ``attr`` of ``module``) has from that registration's
    layout alone: for each registration of a tied parameter (a tied readout), which :func:`roles` gives one role."""
    shape = tuple(module._parameters[attr].shape)  # type: ignore[union-attr]
    base_shape = _shape_at(base, "base", name, model)
    delta_shape = _shape_at(delta, "delta", name, model) if delta is not None else shape
    owner = _Owner(name, module, attr)
    return _registration(model, owner, shape, base_shape, delta_shape, _conv_groups(base, model).get(name, 1))


class _Owner(NamedTuple):
    name: str
    module: nn.Module
    attr: str


def _registration(model: nn.Module, owner: Any, shape: tuple[int, ...], base: tuple[int, ...],
                  delta: tuple[int, ...], base_groups: int) -> Role:
    """The role of one registration of a parameter: its layer's layout (through a parametrization or an old
    ``weight_norm`` to the layer that owns the weight), its width dims, and a conv's groups."""
    layer, attr, magnitude = _layout_target(model, owner)
    width_dims = _width_dims(owner.name, shape, base, delta)
    if magnitude:  # weight_norm's g: one value per output, a vector however many trailing ones it has
        return Role("vector", _growth(owner.name, 0, shape[0], base[0]))
    groups = getattr(layer, "groups", 1) if isinstance(layer, nn.modules.conv._ConvNd) else 1
    return _role(owner.name, shape, base, width_dims, layer, attr, groups / base_groups)


def _layout_target(model: nn.Module, owner: Any) -> tuple[nn.Module, str, bool]:
    """The layer whose layout a registered parameter follows, the attribute it stands for there, and whether it is
    a weight_norm magnitude. A parametrization's ``original`` (``a.parametrizations.weight.original1``) stands for
    ``a.weight``, an old weight_norm's ``weight_v`` (and spectral_norm's ``weight_orig``) for ``weight``."""
    if isinstance(owner.module, parametrize.ParametrizationList):
        parent, _, rest = owner.name.rpartition(".parametrizations.") if ".parametrizations." in owner.name \
            else ("", "", owner.name.removeprefix("parametrizations."))
        layer = model.get_submodule(parent) if parent else model
        original = owner.module._parameters[owner.attr]
        return layer, rest.partition(".")[0], _is_magnitude(tuple(original.shape))  # type: ignore[union-attr]
    if owner.attr in ("weight_v", "weight_orig"):
        return owner.module, "weight", False
    if owner.attr == "weight_g":
        return owner.module, owner.attr, True
    return owner.module, owner.attr, False


def _is_magnitude(shape: tuple[int, ...]) -> bool:
    """A weight_norm magnitude ``g``: one value per output, the other dims 1 (``(out, 1)``, ``(out, 1, 1, 1)``)."""
    return len(shape) >= 2 and all(size == 1 for size in shape[1:])


def _conv_groups(other: nn.Module, model: nn.Module) -> dict[str, int]:
    """For every parameter name of ``model`` owned by a conv layer in ``other``: that layer's ``groups``."""
    rename = block_renamer(model, other)
    modules = dict(other.named_modules())
    found = {}
    for _, owners in named_parameter_owners(model):
        for o in owners:
            layer = modules.get(rename(o.name).rpartition(".")[0])
            if isinstance(layer, nn.modules.conv._ConvNd):
                found[o.name] = layer.groups
    return found


def _shape_at(other: nn.Module, what: str, name: str, model: nn.Module) -> tuple[int, ...]:
    try:
        return tuple(other.get_parameter(block_renamer(model, other)(name)).shape)
    except AttributeError:
        raise ValueError(f"{what} has no parameter {name!r}: {what} must be the same architecture as model at "
                         "another width") from None


def _shapes(what: str, other: nn.Module, model: nn.Module) -> dict[str, tuple[int, ...]]:
    """The shape of ``other``'s counterpart of every parameter name of ``model`` (block ``i`` of a deeper
    ``model`` stands for a block of ``other``: :func:`~torchinit.mup.depth.block_renamer`), checked to cover every
    parameter of ``other``."""
    if what == "delta":
        _check_module(what, other)
    shapes = {o.name: tuple(p.shape) for p, owners in named_parameter_owners(other) for o in owners}
    rename = block_renamer(model, other)
    counterparts = {o.name: rename(o.name) for _, owners in named_parameter_owners(model) for o in owners}
    missing = [n for n, c in counterparts.items() if c not in shapes]
    extra = set(shapes) - set(counterparts.values())
    if missing:
        raise ValueError(f"{what} has no parameter {sorted(missing)[0]!r}: {what} must be the same architecture as "
                         "model at another width")  # fmt: skip
    if extra:
        raise ValueError(f"model has no parameter {sorted(extra)[0]!r} that {what} has: {what} must be the same "
                         "architecture as model at another width")  # fmt: skip
    return {name: shapes[c] for name, c in counterparts.items()}


def _width_dims(name: str, shape: tuple[int, ...], base: tuple[int, ...], delta: tuple[int, ...]) -> list[int]:
    """The dims of the parameter ``name`` that change with width: where ``delta`` (the model itself, by default)
    differs from ``base``; ``model`` may differ from ``base`` only there."""
    for other, what in ((shape, "model"), (delta, "delta")):
        if len(other) != len(base):
            raise ValueError(f"{name} has shape {other} in {what} and {base} in base: a different number of dims "
                             "is not a width change")  # fmt: skip
    dims = [i for i, (d, b) in enumerate(zip(delta, base)) if d != b]
    moved = [i for i, (s, b) in enumerate(zip(shape, base)) if s != b and i not in dims]
    if moved:
        raise ValueError(f"{name} differs from base in dim {moved[0]} ({shape} against {base}), which does not "
                         f"change between base and delta ({delta}): not a width change")  # fmt: skip
    if len(dims) > _MAX_GROWING:
        raise ValueError(f"{name} grows in {len(dims)} dims ({delta} against base {base}): muP has rules for "
                         "weights with at most two width dims")  # fmt: skip
    return dims


def _check_module(name: str, module: object) -> None:
    if not isinstance(module, nn.Module):
        raise TypeError(f"{name} must be an nn.Module; got {type(module).__name__}")
    if isinstance(getattr(module, "_orig_mod", None), nn.Module):
        raise TypeError(f"{name} is a torch.compile'd module: pass the module it compiles ({name}._orig_mod), whose "
                        "parameters it shares")  # fmt: skip
    if any(is_uninitialized(p) for p in module.parameters()):
        raise TypeError(f"{name} has lazy parameters whose shapes are not known yet: run a forward pass first")


def _role(name: str, shape: tuple[int, ...], base: tuple[int, ...], width_dims: list[int], module: nn.Module,
          attr: str, groups_growth: float = 1.0) -> Role:
    """The role of the parameter ``name`` of ``shape``, whose base has shape ``base`` and whose ``width_dims``
    change with width (``groups_growth``: how much a conv's ``groups`` grew)."""
    growth = [_growth(name, i, s, b) for i, (s, b) in enumerate(zip(shape, base))]
    if len(shape) <= 1:
        return Role("vector", growth[0] if shape else 1.0)
    in_width, out_width = _split(name, shape, base, width_dims, module, attr)
    fan_in_mult, fan_out_mult = math.prod(growth[i] for i in in_width), math.prod(growth[i] for i in out_width)
    if 0 in in_width and groups_growth != 1.0:
        # a transposed conv's dim 0 holds every group's inputs and dim 1 one group's outputs: more groups mean more
        # inputs in dim 0 but the same fan-in per group, and more outputs than dim 1 shows
        fan_in_mult /= groups_growth
        fan_out_mult *= groups_growth
        if fan_in_mult == 1.0:  # only the groups grew
            in_width.remove(0)
        out_width.append(0)
    # the kind from the width dims (at the base width, with delta, every multiplier is 1), the values from growth
    if in_width and out_width:
        return Role("hidden", fan_in_mult, fan_in_mult, fan_out_mult)
    if in_width:
        return Role("output", fan_in_mult, fan_in_mult, 1.0)
    return Role("input", fan_out_mult, 1.0, fan_out_mult)


def _split(name: str, shape: tuple[int, ...], base: tuple[int, ...], width_dims: list[int], module: nn.Module,
           attr: str) -> tuple[list[int], list[int]]:
    """The width dims that are input dims, and the others (a kernel dim of a known layer: an error)."""
    in_dims, known = _input_dims(module, attr)
    in_width = [i for i in width_dims if i in in_dims]
    out_width = [i for i in width_dims if i not in in_dims]
    if known and any(i not in _output_dims(module) for i in out_width):
        raise ValueError(f"{name} grows in a kernel dim ({shape} against base {base}): that is not a width change")
    return in_width, out_width


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
        if isinstance(module, nn.EmbeddingBag):  # laid out as an Embedding: (num, dim), num the input
            return (0,), True
        try:
            return module_layout(module).in_dims, True
        except TypeError:  # not a layer with a known layout
            pass
    return (1,), False


def _output_dims(module: nn.Module) -> tuple[int, ...]:
    return (1,) if isinstance(module, nn.EmbeddingBag) else module_layout(module).out_dims

