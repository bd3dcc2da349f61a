r"""Glass init: the initializer for the layer of a shortcut that changes the tensor's size.

The weight is read as a matrix :math:`W \in \mathbb{R}^{O \times I}` (``out_dims``
flattened into rows, ``in_dims`` into columns). With :math:`n = \min(O, I)` and
:math:`N = \max(O, I)`, every index :math:`c` of the long side is tied to the
one or two short-side indices nearest to its position :math:`c \cdot n / N`, so
information passes through the size change locally and nothing is dropped.

**Published construction** (glassInit, PyPI ``glassinit`` 0.0.6). A circular tent
interpolation :math:`P \in \mathbb{R}^{n \times N}`: the :math:`n \times n`
identity is tiled three times along its columns and linearly resampled (corners
aligned) to :math:`N_3 = \lceil 3N - N/n + 1 \rceil` columns, of which the centre
:math:`N` are kept (offset :math:`\lfloor (N_3 - N)/2 \rfloor`). Long index
:math:`c` sits at source position

.. math::

    x_c = \frac{(c + \text{off})(3n - 1)}{N_3 - 1}, \qquad
    P_{x_c \bmod n,\, c} = 1 - \{x_c\}, \quad P_{(x_c + 1) \bmod n,\, c} = \{x_c\}

(:math:`\{\cdot\}` the fractional part). Every column of :math:`P` sums to 1, so
:math:`W = g\, S \circ \sqrt{P}` (transposed when :math:`O > I`) has long-side
vectors of norm :math:`g`; :math:`S` is a random sign per entry (``zero_mean``) or
all ones. The default gain is :math:`\sqrt{O/I}` when :math:`O \le I` and 1 when
:math:`O > I`: rows then have unit norm (exactly when :math:`O > I` or :math:`O`
divides :math:`I`, on average otherwise), so the forward pass keeps the
per-element variance. ``sparse=True`` (only when
:math:`O > I`) keeps a single entry per input :math:`a`, at row
:math:`\operatorname{round}(a\,O/I)`.

torchinit computes the positions exactly (integer arithmetic) and writes only the
at most :math:`2N` non-zeros, so the cost is one ``zero_`` of the weight.

**Isometric variant** (``isometric=True``). Long index :math:`c` belongs to the
short-side cell :math:`r(c) = \lfloor (2c + 1)\, n / (2N) \rfloor` and gets the
weight :math:`g / \sqrt{|r^{-1}(r(c))|}`. The cells are disjoint and each has
unit norm, so :math:`W W^\top = g^2 I` when :math:`O \le I` and
:math:`W^\top W = g^2 I` when :math:`O \ge I`, exactly; square shapes give
:math:`g I`, and the map for :math:`n \to N` is the transpose of the map for
:math:`N \to n`, so expansions followed by the matching reductions compose to
the identity. See ``docs/glass.md`` for when to use which.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, cast

import torch
from torch import Tensor, nn

from torchinit._util.checks import finite, float_tensor, nothing_to_write, within_dtype
from torchinit._util.tensors import write_pattern
from torchinit.rng.sampling import Sampler, make_sampler
from torchinit.schemes.contract import scheme
from torchinit.schemes.layout import Dims, Layout, block_shape, module_layout, resolve_dims

__all__ = ["glass_", "glassInit_", "glassInit", "glass_layout"]

_GLASS_MODULES = "Linear, Conv1d/2d/3d, ConvTranspose1d/2d/3d, transformers' Conv1D"


class _Entries(NamedTuple):
    """The non-zeros of one (O, I) map: row and column indices and magnitudes (float64)."""

    rows: Tensor
    cols: Tensor
    values: Tensor


@scheme()
def glass_(
    tensor_or_module: Any,
    in_dims: Dims = ...,
    out_dims: Dims = 0,
    gain: float | None = None,
    zero_mean: bool = True,
    sparse: bool = False,
    *,
    isometric: bool = False,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    name: str = "",
) -> Tensor:
    r"""Fill a shortcut/skip weight with glass init (in place); see the module docstring for the math.

    ``W = g S ∘ sqrt(P)`` with ``P`` the circular tent interpolation between the
    ``O`` outputs (``out_dims``) and ``I`` inputs (``in_dims``), or, with
    ``isometric=True``, the exactly semi-orthogonal local map
    ``W[r(c), c] = g / sqrt(|cell r(c)|)``, ``r(c) = floor((2c + 1) n / (2N))``.

    Args:
        tensor_or_module: a weight tensor, or a Linear, ConvNd or ConvTransposeNd module
            (its ``weight`` is filled using the module's layout; see :func:`glass_layout`).
        in_dims: the dims summed over (inputs): an int, a tuple, or ``...`` (every
            dim not in ``out_dims``). Default ``...``.
        out_dims: the dims kept apart in the output. Default ``0``.
        gain: ``None`` (default) gives ``sqrt(O/I)`` when ``O <= I`` and 1 when
            ``O > I`` (``sqrt(O/I)`` with ``sparse``); isometric: 1.
        zero_mean: flip the sign of every entry at random (default ``True``).
        sparse: when ``O > I``, one non-zero per input, at row ``round(a O / I)``
            (default ``False``); ignored when ``O <= I``, as in the reference.
        isometric: the exactly semi-orthogonal variant (default ``False``).
        generator: the source of the random signs; the global RNG is not touched
            when one is given.
        seed, name: draw the signs from the keyed stream of ``(seed, name)`` instead (the
            sign of the ``j``-th non-zero, in the order of the construction, is the low bit
            of the stream's word ``j``); not with ``generator``.

    Example:
        >>> glass_(torch.empty(2, 4), zero_mean=False) ** 2  # O < I: P times the gain O/I, circular
        tensor([[0.2500, 0.5000, 0.2500, 0.0000],
                [0.2500, 0.0000, 0.2500, 0.5000]])
        >>> w = glass_(torch.empty(3, 5), zero_mean=False, isometric=True)
        >>> torch.allclose(w @ w.T, torch.eye(3))
        True
    """
    sampler = make_sampler(generator, seed, name)
    if isinstance(tensor_or_module, nn.Module):
        module = tensor_or_module
        if in_dims is not ... or out_dims != 0:
            raise ValueError("in_dims/out_dims apply to tensors; a module's dims come from its own layout")
        layout = glass_layout(module)
        return _glass(cast(Tensor, module.weight), layout, gain, zero_mean, sparse, isometric, sampler,
                      centre_tap=isometric and _has_kernel_in(module, layout))
    t = float_tensor(tensor_or_module, complex_ok=False)
    layout = _tensor_layout(t.dim(), in_dims, out_dims)
    return _glass(tensor_or_module, layout, gain, zero_mean, sparse, isometric, sampler)


def glass_layout(module: nn.Module) -> Layout:
    """The dims glass init uses for a layer, one map per group.

    * Linear ``(out, in)``: ``in_dims=(1,)``, ``out_dims=(0,)``; transformers' Conv1D ``(in, out)``: the reverse.
    * ConvNd ``(out, in/g, k...)``: in-channels and kernel dims are inputs, as in
      the published method: ``in_dims=(1, 2, ...)``, ``out_dims=(0,)``.
    * ConvTransposeNd ``(in, out/g, k...)``: in-channels are inputs (dim 0). The
      kernel dims are outputs when ``stride == kernel_size`` (each tap then makes
      its own output pixel), else inputs.

    Example:
        >>> glass_layout(nn.Conv2d(8, 16, 3))
        Layout(in_dims=(1, 2, 3), out_dims=(0,), groups=1)
        >>> glass_layout(nn.ConvTranspose2d(16, 8, 2, stride=2))
        Layout(in_dims=(0,), out_dims=(1, 2, 3), groups=1)
    """
    if isinstance(module, nn.Embedding) or not isinstance(module, nn.Module):
        raise TypeError(f"glass_ of {type(module).__name__} is not defined; supported modules: {_GLASS_MODULES}")
    try:
        layout = module_layout(module)
    except TypeError:
        raise TypeError(
            f"glass_ of {type(module).__name__} is not defined; supported modules: {_GLASS_MODULES}"
        ) from None
    kernel = tuple(range(2, module.weight.dim())) if isinstance(module, nn.modules.conv._ConvNd) else ()
    if isinstance(module, nn.modules.conv._ConvNd) and module.transposed and module.stride == module.kernel_size:
        return Layout(layout.in_dims, layout.out_dims + kernel, layout.groups)
    return Layout(layout.in_dims + kernel, layout.out_dims, layout.groups)


def _has_kernel_in(module: nn.Module, layout: Layout) -> bool:
    """A conv whose kernel dims are inputs: the isometric map goes to the centre tap."""
    return isinstance(module, nn.modules.conv._ConvNd) and module.weight.dim() - 1 in layout.in_dims


def _tensor_layout(ndim: int, in_dims: Dims, out_dims: Dims) -> Layout:
    """Explicit dims keep the order given: it is the order in which they are flattened (as in the reference)."""
    ins, outs = resolve_dims(ndim, in_dims, out_dims)
    for side, dims in (("in_dims", ins), ("out_dims", outs)):
        if not dims:
            raise ValueError(
                f"{side} is empty for a tensor of {ndim} dim(s); glass_ needs at least one dim on each side"
            )
    rest = sorted(set(range(ndim)) - set(ins) - set(outs))
    if rest:
        raise ValueError(f"dims {rest} are in neither in_dims nor out_dims; name every dim, or use ... on one side")
    return Layout(ins, outs)


def _glass(
    weight: Tensor,
    layout: Layout,
    gain: float | None,
    zero_mean: bool,
    sparse: bool,
    isometric: bool,
    sampler: Sampler,
    centre_tap: bool = False,
) -> Tensor:
    """Validate, build the non-zeros of one group's map, then zero the weight and write them.

    The generator may be on any device: the signs move to the CPU.
    """
    t = float_tensor(weight, complex_ok=False)
    _check_flags(zero_mean, sparse, isometric)
    if gain is not None:
        gain = finite("gain", gain)
    shape = block_shape(tuple(t.shape), layout.groups, "groups")
    in_dims, out_dims = layout.in_dims, layout.out_dims
    if centre_tap:  # only the channels are mapped; the kernel keeps one tap
        in_dims = tuple(d for d in in_dims if d < 2)
    O = math.prod([shape[d] for d in out_dims])
    I = math.prod([shape[d] for d in in_dims])
    if nothing_to_write(t):
        return weight
    entries = _map_entries(O, I, gain, sparse, isometric)
    within_dtype("gain", float(entries.values.abs().max()) if entries.values.numel() else 0.0, t.dtype)
    index = _tensor_index(entries, shape, in_dims, out_dims, layout.groups, centre_tap)
    values = entries.values.repeat(layout.groups)
    if zero_mean:  # one sign per non-zero
        values = torch.where(sampler.coin_flips(values.numel(), t.device), values, -values)
    where = tuple(i.to(t.device) for i in index)
    values = values.to(device=t.device, dtype=t.dtype)
    write_pattern(t, where, values)
    return weight


def _check_flags(zero_mean: bool, sparse: bool, isometric: bool) -> None:
    for name, flag in (("zero_mean", zero_mean), ("sparse", sparse), ("isometric", isometric)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool; got {flag!r}")
    if isometric and sparse:
        raise ValueError("sparse and isometric cannot both be set: the isometric map already has one "
                         "non-zero per long-side index")


def _map_entries(O: int, I: int, gain: float | None, sparse: bool, isometric: bool) -> _Entries:
    """The non-zeros of one (O, I) map of the chosen construction, with its default gain when ``gain`` is None."""
    if isometric:
        return isometric_entries(O, I, 1.0 if gain is None else gain)
    if sparse and O > I:
        return sparse_entries(O, I, math.sqrt(O / I) if gain is None else gain)
    return tent_entries(O, I, (math.sqrt(O / I) if O <= I else 1.0) if gain is None else gain)


def tent_entries(O: int, I: int, gain: float) -> _Entries:
    """The published circular tent map, exactly: at most two entries per long-side index."""
    n, N = min(O, I), max(O, I)
    c = torch.arange(N, dtype=torch.int64, device="cpu")  # index plans live on the CPU, whatever device context
    if n == 1:
        short, weight = torch.zeros_like(c), torch.ones(N, dtype=torch.float64, device="cpu")
    else:
        n3 = 3 * N + 1 - N // n  # ceil(3N - N/n + 1) for integers
        offset = (n3 - N) // 2
        numerator = (c + offset) * (3 * n - 1)
        x0, remainder = numerator // (n3 - 1), numerator % (n3 - 1)
        frac = remainder.double() / (n3 - 1)
        c = torch.cat([c, c])
        short = torch.cat([x0 % n, (x0 + 1) % n])
        weight = torch.cat([1.0 - frac, frac])
    return _oriented(short, c, gain * weight.sqrt(), O <= I)


def sparse_entries(O: int, I: int, gain: float) -> _Entries:
    """Sparse mode (O > I): input ``a`` goes to row ``round(a O / I)`` (half to even), exactly."""
    a = torch.arange(I, dtype=torch.int64, device="cpu")
    numerator = 2 * a * O + I  # floor(a O / I + 1/2) = numerator // (2 I)
    quotient, remainder = numerator // (2 * I), numerator % (2 * I)
    tie = (remainder == 0) & (quotient % 2 == 1)
    rows = quotient - tie.long()
    return _Entries(rows, a, torch.full((I,), gain, dtype=torch.float64, device="cpu"))


def isometric_entries(O: int, I: int, gain: float) -> _Entries:
    """The exactly semi-orthogonal local map: long index ``c`` in cell ``floor((2c + 1) n / (2N))``."""
    n, N = min(O, I), max(O, I)
    c = torch.arange(N, dtype=torch.int64, device="cpu")  # index plans live on the CPU, whatever device context
    cell = (2 * c + 1) * n // (2 * N)
    size = torch.bincount(cell, minlength=n).double()
    return _oriented(cell, c, gain / size[cell].sqrt(), O <= I)


def _oriented(short: Tensor, long: Tensor, values: Tensor, short_is_rows: bool) -> _Entries:
    return _Entries(short, long, values) if short_is_rows else _Entries(long, short, values)


def _unravel(flat: Tensor, sizes: list[int]) -> list[Tensor]:
    """Row-major multi-index of ``flat`` over ``sizes``."""
    out = []
    for size in reversed(sizes):
        out.append(flat % size)
        flat = flat // size
    return out[::-1]


def _tensor_index(
    entries: _Entries,
    shape: tuple[int, ...],
    in_dims: tuple[int, ...],
    out_dims: tuple[int, ...],
    groups: int,
    centre_tap: bool,
) -> list[Tensor]:
    """Full-rank indices into the weight for every group's copy of ``entries``."""
    index: list[Tensor | None] = [None] * len(shape)
    for dims, flat in ((out_dims, entries.rows), (in_dims, entries.cols)):
        for d, i in zip(dims, _unravel(flat, [shape[d] for d in dims])):
            index[d] = i
    count = entries.rows.numel()
    for d in range(len(shape)):
        if index[d] is None:  # a kernel dim of a centre-tap map
            assert centre_tap
            index[d] = torch.full((count,), shape[d] // 2, dtype=torch.int64, device="cpu")
    offsets = torch.arange(groups, dtype=torch.int64, device="cpu").repeat_interleave(count) * shape[0]
    full = [i.repeat(groups) for i in index]  # type: ignore[union-attr]
    full[0] = full[0] + offsets
    return full


def glassInit_(weight: Tensor, inDim: Dims = ..., outDim: Dims = 0, gain: float | None = None,
               zeroMean: bool = True, sparse: bool = False) -> Tensor:
    """The reference's in-place API (``glassInit.glassInit_`` of ``glassinit`` 0.0.6): :func:`glass_`.

    ``glass_(weight, inDim, outDim, gain, zeroMean, sparse)``: the same values as the
    reference up to its float32 rounding (see ``docs/glass.md``), with exact positions and
    its bugs fixed. Signs come from the global RNG. Defaults: ``inDim=...``, ``outDim=0``,
    ``gain=None``, ``zeroMean=True``, ``sparse=False``. Returns ``weight`` (the reference
    returns None).

    Example:
        >>> w = torch.empty(4, 2)
        >>> glassInit_(w, zeroMean=False) is w
        True
        >>> torch.allclose((w**2).sum(1), torch.ones(4))  # O > I: gain 1, unit rows
        True
    """
    return glass_(weight, inDim, outDim, gain, zeroMean, sparse)


def glassInit(weight: Tensor, inDim: Dims = ..., outDim: Dims = 0, gain: float | None = None,
              zeroMean: bool = True, sparse: bool = False) -> Tensor:
    """The reference's out-of-place API: a new tensor shaped like ``weight``, filled by :func:`glass_`.

    ``glass_(torch.empty_like(weight), inDim, outDim, gain, zeroMean, sparse)``; ``weight``
    is left unchanged. Defaults as :func:`glassInit_`.

    Example:
        >>> w = torch.zeros(3, 3)
        >>> glassInit(w, zeroMean=False)
        tensor([[1., 0., 0.],
                [0., 1., 0.],
                [0., 0., 1.]])
        >>> bool(w.any())  # the argument is left as it was
        False
    """
    t = float_tensor(weight, complex_ok=False)
    return glass_(torch.empty_like(t), inDim, outDim, gain, zeroMean, sparse)
