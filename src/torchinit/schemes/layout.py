"""Fan-in and fan-out of weights, for every layer layout.

A weight maps ``fan_in`` input values to each output value and each input value
feeds ``fan_out`` outputs. These two numbers set the scale of every
variance-based initializer, so they are computed in exactly one place: here.

Tensors (the default follows ``torch.nn.init`` so drop-in results match)::

    fan_in  = size(in_dims)  * receptive_field
    fan_out = size(out_dims) * receptive_field
    receptive_field = product of the sizes of the dims named on neither side

with ``out_dims=0`` and ``in_dims=1`` unless told otherwise. Dims named in
``batch_dims`` (JAX's ``batch_axis``) count on neither side and are not receptive
field: they index independent weights stacked in one tensor (experts, heads,
ensemble members), and the fans are those of one slice.

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
from types import EllipsisType
from typing import Any, NamedTuple, cast

from torch import Tensor, nn

from torchinit._util.checks import as_tensor, is_integral, is_numpy_array, positive_int

__all__ = ["Fans", "fans", "Dims", "Layout", "module_layout", "resolve_dims"]

#: An axis spec: one dim, several dims, or ``...`` for "every dim not named on the other side".
Dims = int | tuple[int, ...] | list[int] | EllipsisType | None

_FAN_MODULES = "Linear, Conv1d/2d/3d, ConvTranspose1d/2d/3d, Embedding, transformers' Conv1D"

#: torch's limit on a tensor's dims: a dims spec names each dim at most once, so it never holds more.
MAX_DIMS = 64


class Fans(NamedTuple):
    """The fans of a weight: ``fan_in`` inputs per output, ``fan_out`` outputs per input."""

    fan_in: int
    fan_out: int


def fans(
    x: Any, *, in_dims: Dims = None, out_dims: Dims = None, batch_dims: Dims = None, blocks: int = 1
) -> Fans:
    """Fan-in and fan-out of a tensor (or NumPy array) or of a layer.

    For a tensor, ``out_dims`` defaults to 0 and ``in_dims`` to 1 (torch's
    convention); every dim named on neither side is receptive field and
    multiplies both fans. If only one side is given, the other is ``...``:
    every dim not named on the given side.

    For a module (Linear, ConvNd, ConvTransposeNd, Embedding) the layer's own
    layout is used, groups included; ``in_dims``/``out_dims`` are not accepted.

    ``batch_dims`` (JAX's ``batch_axis``) names dims that stack independent
    weights (e.g. experts in an ``(experts, out, in)`` tensor): they count in
    neither fan nor in the receptive field, so the fans are those of one slice.
    The default sides then apply to the remaining dims: the first is the output
    dim, the second the input dim, the rest receptive field.

    ``blocks`` splits dim 0 into that many equal chunks and returns the fans of
    one chunk, as if it were its own tensor: a fused weight such as
    MultiheadAttention's packed ``in_proj_weight`` (3 blocks) or an LSTM's
    ``weight_hh`` (4 blocks, one per gate).

    Args:
        x: a tensor, NumPy array or supported ``nn.Module``.
        in_dims: the dims that index the inputs: an int, a tuple of ints or ``...``.
        out_dims: the dims that index the outputs: an int, a tuple of ints or ``...``.
        batch_dims: the dims of stacked independent weights, excluded from both
            fans: an int or a tuple of ints (default None: none).
        blocks: the number of equal chunks along dim 0 (default 1).

    Returns:
        ``Fans(fan_in, fan_out)``.

    Raises:
        ValueError: a tensor with fewer than 2 dims and no explicit dims, a dim
            out of range, a dim named twice, both sides ``...``, a batch dim also
            named in ``in_dims``/``out_dims``, fewer than 2 dims left outside
            ``batch_dims`` and no explicit dims, ``batch_dims`` on a module, or
            ``blocks`` that does not divide dim 0.
        TypeError: an unsupported module, or dims that are not ints (``batch_dims``
            does not accept ``...``).

    Example:
        >>> fans(torch.empty(128, 64, 3, 3))
        Fans(fan_in=576, fan_out=1152)
        >>> fans(torch.empty(64, 128), in_dims=0, out_dims=1)  # used as x @ w
        Fans(fan_in=64, fan_out=128)
        >>> fans(nn.Conv2d(64, 128, 3, groups=8))
        Fans(fan_in=72, fan_out=144)
        >>> fans(nn.MultiheadAttention(64, 8).in_proj_weight, blocks=3)  # q, k, v: each (64, 64)
        Fans(fan_in=64, fan_out=64)
        >>> fans(torch.empty(8, 256, 64), batch_dims=0)  # 8 experts, each (out=256, in=64)
        Fans(fan_in=64, fan_out=256)
    """
    if isinstance(x, nn.Module):
        if in_dims is not None or out_dims is not None or batch_dims is not None:
            raise ValueError("in_dims/out_dims/batch_dims apply to tensors; a module's fans come from its own layout")
        return module_fans(x, blocks)
    if isinstance(x, Tensor) or is_numpy_array(x):
        shape = block_shape(tuple(as_tensor(x, "x", write=False).shape), blocks, "blocks")
        return tensor_fans(shape, in_dims, out_dims, batch_dims)
    raise TypeError(f"x must be a tensor, a NumPy array or one of: {_FAN_MODULES}; got {type(x).__name__}")


def tensor_fans(shape: tuple[int, ...], in_dims: Dims = None, out_dims: Dims = None, batch_dims: Dims = None) -> Fans:
    """Fans of a weight of ``shape`` under the given axis spec (see :func:`fans`)."""
    ndim = len(shape)
    batch_t = batch_tuple(batch_dims, ndim)
    if in_dims is None and out_dims is None:
        rest = [d for d in range(ndim) if d not in batch_t]
        if len(rest) < 2:
            where = f" outside batch_dims {batch_t}" if batch_t else ""
            raise ValueError(
                f"fans of a tensor with {len(rest)} dim(s){where} are undefined: it needs at least 2 dims, "
                "or explicit in_dims/out_dims"
            )
        in_set, out_set = {rest[1]}, {rest[0]}
    else:
        in_t, out_t = resolve_dims(
            ndim, ... if in_dims is None else in_dims, ... if out_dims is None else out_dims, batch_t
        )
        in_set, out_set = set(in_t), set(out_t)
    skip = in_set | out_set | set(batch_t)
    receptive = math.prod([shape[d] for d in range(ndim) if d not in skip])  # lists: torch.compile traces them
    fan_in = math.prod([shape[d] for d in in_set]) * receptive
    fan_out = math.prod([shape[d] for d in out_set]) * receptive
    return Fans(fan_in, fan_out)


def batch_tuple(batch_dims: Dims, ndim: int) -> tuple[int, ...]:
    """``batch_dims`` (None, an int or a tuple/list of ints) as non-negative dims; ``...`` is a TypeError."""
    if batch_dims is None:
        return ()
    if batch_dims is ...:
        raise TypeError("batch_dims must be an int or a tuple of ints; ... (Ellipsis) is not accepted")
    return dim_tuple("batch_dims", batch_dims, ndim)


def resolve_dims(
    ndim: int, in_dims: Dims, out_dims: Dims, batch_dims: tuple[int, ...] = ()
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The input and output dims of an ``ndim``-dim tensor, each in the order given.

    One side may be ``...``: every dim not named on the other side nor in
    ``batch_dims`` (already resolved, non-negative), ascending.
    Raises ValueError when both are ``...``, a dim is out of range or named
    twice, a dim is on both sides, or a batch dim is named on either side.
    """
    if in_dims is ... and out_dims is ...:
        raise ValueError("in_dims and out_dims cannot both be ... (Ellipsis)")
    if in_dims is ...:
        out_t = dim_tuple("out_dims", out_dims, ndim)
        _no_batch_overlap(batch_dims, out_t, "out_dims")
        return tuple(d for d in range(ndim) if d not in out_t and d not in batch_dims), out_t
    in_t = dim_tuple("in_dims", in_dims, ndim)
    _no_batch_overlap(batch_dims, in_t, "in_dims")
    if out_dims is ...:
        return in_t, tuple(d for d in range(ndim) if d not in in_t and d not in batch_dims)
    out_t = dim_tuple("out_dims", out_dims, ndim)
    _no_batch_overlap(batch_dims, out_t, "out_dims")
    both = sorted(set(in_t) & set(out_t))
    if both:
        raise ValueError(f"dims {both} are named in both in_dims and out_dims")
    return in_t, out_t


def _no_batch_overlap(batch_dims: tuple[int, ...], side: tuple[int, ...], name: str) -> None:
    both = sorted(set(batch_dims) & set(side))
    if both:
        raise ValueError(f"batch_dims: dims {both} are also named in {name}; a batch dim counts on neither side")


def dim_tuple(name: str, dims: Dims, ndim: int) -> tuple[int, ...]:
    """``dims`` (an int or a tuple/list of ints) as non-negative dims, in the order given.

    Linear in the length of ``dims``, which is at most :data:`MAX_DIMS` (a longer one is a ValueError
    before any item is read: settings can come from an untrusted config).
    """
    items: Any = (dims,) if is_integral(dims) else dims  # Python or NumPy ints, checked one by one below
    if not isinstance(items, (tuple, list)):
        raise TypeError(f"{name} must be an int, a tuple of ints or ... (Ellipsis); got {dims!r}")
    if len(items) > MAX_DIMS:
        raise ValueError(f"{name} names {len(items)} dims; a tensor has at most {MAX_DIMS}, each named once")
    out: list[int] = []
    seen: set[int] = set()
    for d in items:
        if not is_integral(d):
            raise TypeError(f"{name} must contain ints; got {d!r}")
        d = int(d)
        if not -ndim <= d < ndim:
            raise ValueError(f"{name}: dim {d} is out of range for a tensor with {ndim} dim(s)")
        d %= ndim
        if d in seen:
            raise ValueError(f"{name} names dim {d} twice")
        seen.add(d)
        out.append(d)
    return tuple(out)


class Layout(NamedTuple):
    """How a layer's weight is laid out: which dims index inputs and outputs, and how many groups.

    ``groups`` splits dim 0 into equal chunks, each an independent map with the
    same ``in_dims``/``out_dims``; dims named on neither side are the kernel
    (receptive field).
    """

    in_dims: tuple[int, ...]
    out_dims: tuple[int, ...]
    groups: int = 1


def is_transposed_linear(module: nn.Module) -> bool:
    """transformers' ``Conv1D`` (GPT-2): a linear layer whose weight is stored (in, out), ``y = x @ W + b``.

    Recognized by name and shape so that transformers stays an optional dependency.
    """
    weight = getattr(module, "weight", None)
    named = type(module).__name__ == "Conv1D" and hasattr(module, "nf")
    return named and isinstance(weight, Tensor) and weight.dim() == 2


def module_layout(module: nn.Module) -> Layout:
    """The weight layout of a Linear, ConvNd, ConvTransposeNd or Embedding layer.

    ==================  ===================  =======  ========  ======
    layer               weight               in_dims  out_dims  groups
    ==================  ===================  =======  ========  ======
    Linear              (out, in)            1        0         1
    ConvNd              (out, in/g, k...)    1        0         g
    ConvTransposeNd     (in, out/g, k...)    0        1         g
    Embedding           (num, dim)           0        1         1
    Conv1D (GPT-2)      (in, out)            0        1         1
    ==================  ===================  =======  ========  ======
    """
    if isinstance(module, nn.Linear):
        return Layout((1,), (0,))
    if isinstance(module, nn.modules.conv._ConvNd):
        return Layout((0,), (1,), module.groups) if module.transposed else Layout((1,), (0,), module.groups)
    if isinstance(module, nn.Embedding) or is_transposed_linear(module):
        return Layout((0,), (1,))
    raise TypeError(f"the weight layout of {type(module).__name__} is not known; supported modules: {_FAN_MODULES}")


def block_shape(shape: tuple[int, ...], parts: int, name: str = "blocks") -> tuple[int, ...]:
    """The shape of one of ``parts`` equal chunks along dim 0 (``name`` is the argument, for errors)."""
    parts = positive_int(name, parts)
    if parts == 1:
        return shape
    if not shape or shape[0] % parts:
        size = f"size {shape[0]}" if shape else "a 0-dim tensor"
        raise ValueError(f"{name}={parts} must divide dim 0 of the tensor ({size}) into equal chunks")
    return (shape[0] // parts, *shape[1:])


def module_fans(module: nn.Module, blocks: int = 1) -> Fans:
    """Fans of a supported layer from its own layout, groups and transposition included."""
    layout = module_layout(module)
    weight = cast(Tensor, module.weight)  # a supported layer's weight: module_layout checked the layer
    shape = block_shape(block_shape(tuple(weight.shape), blocks, "blocks"), layout.groups, "groups")
    return tensor_fans(shape, layout.in_dims, layout.out_dims)


def weight_of(target: Any) -> Any:
    """What an initializer writes: a supported module's ``weight``, else the target itself."""
    if isinstance(target, nn.Module):
        module_fans(target)  # raises TypeError for unsupported modules
        return target.weight
    return target
