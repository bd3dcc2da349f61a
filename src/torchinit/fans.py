"""Fan-in and fan-out of weights, for every layer layout.

A weight maps ``fan_in`` input values to each output value and each input value
feeds ``fan_out`` outputs. These two numbers set the scale of every
variance-based initializer, so they are computed in exactly one place: here.

Tensors (the default follows ``torch.nn.init`` so drop-in results match)::

    fan_in  = size(in_dims)  * receptive_field
    fan_out = size(out_dims) * receptive_field
    receptive_field = product of the sizes of the dims named on neither side

with ``out_dims=0`` and ``in_dims=1`` unless told otherwise.

Modules use their own layout (see ``docs/fans.md`` for the table and where it
differs from torch):

=====================  ==========================  =========================================
layer                  weight shape                 fans (fan_in, fan_out)
=====================  ==========================  =========================================
Linear                 (out, in)                    (in, out)
ConvNd                 (out, in/g, k...)            (in/g * prod(k), out/g * prod(k))
ConvTransposeNd        (in, out/g, k...)            (in/g * prod(k), out/g * prod(k))
Embedding              (num, dim)                   (num, dim)
=====================  ==========================  =========================================
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Union


from torch import Tensor, nn

from torchinit._checks import as_tensor, is_numpy_array

__all__ = ["Fans", "fans", "Dims"]

#: An axis spec: one dim, several dims, or ``...`` for "every dim not named on the other side".
Dims = Union[int, tuple[int, ...], list[int], type(Ellipsis), None]

_FAN_MODULES = "Linear, Conv1d/2d/3d, ConvTranspose1d/2d/3d, Embedding"


class Fans(NamedTuple):
    """The fans of a weight: ``fan_in`` inputs per output, ``fan_out`` outputs per input."""

    fan_in: int
    fan_out: int


def fans(x: Any, *, in_dims: Dims = None, out_dims: Dims = None) -> Fans:
    """Fan-in and fan-out of a tensor (or NumPy array) or of a layer.

    For a tensor, ``out_dims`` defaults to 0 and ``in_dims`` to 1 (torch's
    convention); every dim named on neither side is receptive field and
    multiplies both fans. If only one side is given, the other is ``...``:
    every dim not named on the given side.

    For a module (Linear, ConvNd, ConvTransposeNd, Embedding) the layer's own
    layout is used, groups included; ``in_dims``/``out_dims`` are not accepted.

    Args:
        x: a tensor, NumPy array or supported ``nn.Module``.
        in_dims: the dims that index the inputs: an int, a tuple of ints or ``...``.
        out_dims: the dims that index the outputs: an int, a tuple of ints or ``...``.

    Returns:
        ``Fans(fan_in, fan_out)``.

    Raises:
        ValueError: a tensor with fewer than 2 dims and no explicit dims, a dim
            out of range, a dim named twice, or both sides ``...``.
        TypeError: an unsupported module, or dims that are not ints.

    Example:
        >>> fans(torch.empty(128, 64, 3, 3))
        Fans(fan_in=576, fan_out=1152)
        >>> fans(torch.empty(64, 128), in_dims=0, out_dims=1)  # used as x @ w
        Fans(fan_in=64, fan_out=128)
        >>> fans(nn.Conv2d(64, 128, 3, groups=8))
        Fans(fan_in=72, fan_out=144)
    """
    if isinstance(x, nn.Module):
        if in_dims is not None or out_dims is not None:
            raise ValueError("in_dims/out_dims apply to tensors; a module's fans come from its own layout")
        return module_fans(x)
    if isinstance(x, Tensor) or is_numpy_array(x):
        return tensor_fans(tuple(as_tensor(x, "x").shape), in_dims, out_dims)
    raise TypeError(f"x must be a tensor, a NumPy array or one of: {_FAN_MODULES}; got {type(x).__name__}")


def tensor_fans(shape: tuple[int, ...], in_dims: Dims = None, out_dims: Dims = None) -> Fans:
    """Fans of a weight of ``shape`` under the given axis spec (see :func:`fans`)."""
    ndim = len(shape)
    if in_dims is None and out_dims is None:
        if ndim < 2:
            raise ValueError(
                f"fans of a tensor with {ndim} dim(s) are undefined: it needs at least 2 dims, "
                "or explicit in_dims/out_dims"
            )
        in_set, out_set = {1}, {0}
    else:
        if in_dims is None:
            in_dims = ...
        if out_dims is None:
            out_dims = ...
        if in_dims is ... and out_dims is ...:
            raise ValueError("in_dims and out_dims cannot both be ... (Ellipsis)")
        if in_dims is ...:
            out_set = _dim_set("out_dims", out_dims, ndim)
            in_set = set(range(ndim)) - out_set
        elif out_dims is ...:
            in_set = _dim_set("in_dims", in_dims, ndim)
            out_set = set(range(ndim)) - in_set
        else:
            in_set = _dim_set("in_dims", in_dims, ndim)
            out_set = _dim_set("out_dims", out_dims, ndim)
            both = in_set & out_set
            if both:
                raise ValueError(f"dims {sorted(both)} are named in both in_dims and out_dims")
    receptive = math.prod(shape[d] for d in range(ndim) if d not in in_set and d not in out_set)
    fan_in = math.prod(shape[d] for d in in_set) * receptive
    fan_out = math.prod(shape[d] for d in out_set) * receptive
    return Fans(fan_in, fan_out)


def _dim_set(name: str, dims: Dims, ndim: int) -> set[int]:
    items = (dims,) if isinstance(dims, int) and not isinstance(dims, bool) else dims
    if not isinstance(items, (tuple, list)):
        raise TypeError(f"{name} must be an int, a tuple of ints or ... (Ellipsis); got {dims!r}")
    out: set[int] = set()
    for d in items:
        if isinstance(d, bool) or not isinstance(d, int):
            raise TypeError(f"{name} must contain ints; got {d!r}")
        if not -ndim <= d < ndim:
            raise ValueError(f"{name}: dim {d} is out of range for a tensor with {ndim} dim(s)")
        d %= ndim
        if d in out:
            raise ValueError(f"{name} names dim {d} twice")
        out.add(d)
    return out


def module_fans(module: nn.Module) -> Fans:
    """Fans of a supported layer from its own layout, groups and transposition included."""
    if isinstance(module, nn.Linear):
        return Fans(module.in_features, module.out_features)
    if isinstance(module, nn.modules.conv._ConvNd):
        k = math.prod(module.kernel_size)
        g = module.groups
        return Fans(module.in_channels // g * k, module.out_channels // g * k)
    if isinstance(module, nn.Embedding):
        return Fans(module.num_embeddings, module.embedding_dim)
    raise TypeError(f"fans of {type(module).__name__} are not defined; supported modules: {_FAN_MODULES}")


def weight_of(target: Any) -> Any:
    """What an initializer writes: a supported module's ``weight``, else the target itself."""
    if isinstance(target, nn.Module):
        module_fans(target)  # raises TypeError for unsupported modules
        return target.weight
    return target
