r"""Structured initializers: orthogonal (per block), delta-orthogonal, ZerO/Hadamard and sparse.

The orthogonal family gives every layer a flat singular-value spectrum, the
condition for dynamical isometry (Saxe et al., 2014; Xiao et al., 2018):

* :func:`orthogonal_` (torch's signature, bit-identical for float32/float64;
  bf16/fp16 via float32; complex tensors unitary), with ``blocks`` for fused weights;
* :func:`delta_orthogonal_`: a semi-orthogonal channel map at a conv kernel's centre tap;
* :func:`hadamard_`: ZerO (Zhao et al., 2022), deterministic;
* :func:`sparse_`: Martens (2010), with the zero mask drawn from the generator too.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from torchinit._util.checks import (
    NORMAL_REACH,
    finite_gain,
    float_tensor,
    non_negative,
    nothing_to_write,
    real_number,
    within_dtype,
)
from torchinit._util.tensors import write_pattern
from torchinit.rng.sampling import Sampler, make_sampler
from torchinit.schemes.basic import identity_
from torchinit.schemes.contract import scheme
from torchinit.schemes.layout import block_shape

__all__ = ["orthogonal_", "delta_orthogonal_", "hadamard_", "sparse_", "haar_semi_orthogonal"]


def _compute_dtype(dtype: torch.dtype, sampler: Sampler | None = None) -> torch.dtype:
    """float32/float64/complex compute in their own dtype; bf16/fp16 (no CPU QR) in float32.

    With a keyed (element-wise) sampler, in float64 (complex128): LAPACK's QR may change its last
    bits with the BLAS thread count, and computing wide then rounding keeps float32 values equal.
    """
    if sampler is not None and sampler.elementwise:
        return torch.complex128 if dtype.is_complex else torch.float64
    return dtype if dtype in (torch.float32, torch.float64) or dtype.is_complex else torch.float32


def haar_semi_orthogonal(
    blocks: int, rows: int, cols: int, dtype: torch.dtype, device: torch.device,
    sampler: Sampler | torch.Generator | None = None,
) -> Tensor:
    r"""``blocks`` independent Haar-distributed (rows, cols) matrices with orthonormal rows or columns.

    Each is the Q factor of a standard Gaussian matrix (transposed when rows <
    cols) with the sign (phase, for complex) of :math:`R_{ii}` folded in (Mezzadri,
    2007). The Gaussian is drawn in one ``normal_`` call on a (blocks, rows, cols)
    tensor, so ``blocks=1`` draws exactly what ``torch.nn.init.orthogonal_`` draws.
    ``sampler``: a :class:`~torchinit.rng.sampling.Sampler`, or a ``torch.Generator`` (None:
    the global RNG).

    Example:
        >>> q = haar_semi_orthogonal(2, 3, 5, torch.float64, torch.device("cpu"), None)
        >>> torch.allclose(q @ q.mT, torch.eye(3, dtype=torch.float64).expand(2, 3, 3))
        True
    """
    if not isinstance(sampler, Sampler):
        sampler = make_sampler(sampler)
    g = sampler.normal_(torch.empty((blocks, rows, cols), dtype=dtype, device=device), 0.0, 1.0)
    if blocks == 1:  # the unbatched call keeps bit-identity with torch.nn.init.orthogonal_
        g = g[0]
    if rows < cols:
        g = g.mT
    q, r = torch.linalg.qr(g)
    d = torch.diagonal(r, dim1=-2, dim2=-1)
    q *= (torch.sgn(d) if q.dtype.is_complex else d.sign()).unsqueeze(-2)
    if rows < cols:
        q = q.mT
    return q.reshape(blocks, rows, cols)


@scheme()
def orthogonal_(
    tensor: Tensor,
    gain: float = 1,
    generator: torch.Generator | None = None,
    *,
    blocks: int = 1,
    seed: int | None = None,
    name: str = "",
) -> Tensor:
    r"""Fill ``tensor`` with a (semi-)orthogonal matrix times ``gain`` (Saxe et al., 2014).

    The weight is viewed as ``(rows, cols) = (size(0), numel / size(0))``. With
    :math:`G` a standard Gaussian matrix (transposed when rows < cols) and
    :math:`G = QR`, the result is :math:`\text{gain}\cdot Q\,\operatorname{diag}(\operatorname{sign} R_{ii})`,
    which is Haar-distributed (Mezzadri, 2007): :math:`W W^\top = \text{gain}^2 I` when
    rows <= cols, else :math:`W^\top W = \text{gain}^2 I`. Bit-identical to torch for
    float32/float64; bf16/fp16 are computed in float32 and rounded, complex tensors get a
    unitary matrix (phase fix :math:`R_{ii}/|R_{ii}|`). Default ``gain=1``.

    ``blocks`` (keyword-only, default 1) splits dim 0 into that many equal chunks, each
    its own orthogonal matrix: ``orthogonal_(lstm.weight_hh_l0, blocks=4)`` makes every
    gate's (hidden, hidden) block orthogonal, where one orthogonal (4 hidden, hidden)
    matrix leaves each block far from it.

    ``seed`` (keyword-only, with ``name``) draws the Gaussian matrix from the keyed stream of
    ``(seed, name)`` instead of ``generator``; not both. It is then computed in float64
    (complex128) and rounded, so that the BLAS thread count does not change float32 results.
    A DTensor is computed whole on every rank, which keeps its part (the QR needs every entry).

    Example:
        >>> w = orthogonal_(torch.empty(3, 5), gain=2.0)
        >>> torch.allclose(w @ w.T, 4 * torch.eye(3), atol=1e-5)
        True
        >>> w = orthogonal_(torch.empty(8, 4), blocks=2)  # two 4 x 4 orthogonal blocks
        >>> torch.allclose(w[:4] @ w[:4].T, torch.eye(4), atol=1e-5)
        True
    """
    t = float_tensor(tensor)
    sampler = make_sampler(generator, seed, name, t)
    gain = finite_gain(gain, t.dtype)
    if t.dim() < 2:
        raise ValueError(f"tensor must have at least 2 dims for orthogonal_; got shape {tuple(t.shape)}")
    rows = block_shape(tuple(t.shape), blocks)[0]
    if nothing_to_write(t):
        return tensor
    cols = t.numel() // t.size(0)
    with torch.no_grad():
        q = haar_semi_orthogonal(blocks, rows, cols, _compute_dtype(t.dtype, sampler), t.device, sampler)
        # scaled in t's dtype after the rounding, as torch does, then written in one copy (complete or untouched)
        w = q.reshape(t.shape) if q.dtype == t.dtype else q.reshape(t.shape).to(t.dtype)
        t.copy_(w.mul_(gain))
    return tensor


@scheme()
def delta_orthogonal_(
    tensor: Tensor, gain: float = 1.0, *, generator: torch.Generator | None = None, seed: int | None = None,
    name: str = "",
) -> Tensor:
    r"""Fill a 3-, 4- or 5-D conv weight with the delta-orthogonal kernel (Xiao et al., 2018).

    :math:`W[:, :, c] = \text{gain}\cdot Q` at the centre tap :math:`c = (k_1 // 2, \ldots)`
    and 0 elsewhere, with :math:`Q` a Haar (out, in) matrix with orthonormal rows
    (out <= in) or columns (out >= in), as in :func:`orthogonal_`. The convolution is
    then ``gain`` times an isometry (out >= in) or co-isometry (out <= in): every
    singular value of the (circular) convolution operator equals ``gain``. Default
    ``gain=1``; bf16/fp16 computed in float32, complex tensors unitary. ``generator`` or
    ``seed`` (with ``name``) as in :func:`orthogonal_`.

    Example:
        >>> w = delta_orthogonal_(torch.empty(16, 8, 3, 3), gain=2.0)
        >>> centre = w[:, :, 1, 1]
        >>> torch.allclose(centre.T @ centre, 4 * torch.eye(8), atol=1e-5), int(w.count_nonzero()) == 128
        (True, True)
    """
    t = float_tensor(tensor)
    sampler = make_sampler(generator, seed, name, t)
    gain = finite_gain(gain, t.dtype)
    if t.dim() not in (3, 4, 5):
        raise ValueError(f"tensor must have 3, 4 or 5 dims for delta_orthogonal_; got shape {tuple(t.shape)}")
    if nothing_to_write(t):
        return tensor
    out, inp = t.shape[:2]
    q = haar_semi_orthogonal(1, out, inp, _compute_dtype(t.dtype, sampler), t.device, sampler)[0]
    write_pattern(t, _centre_tap(t), q * gain)
    return tensor


def _centre_tap(t: Tensor) -> tuple[slice | int, ...]:
    """The index of a conv weight's (out, in) channel map at its kernel's centre tap (``k // 2`` in each spatial dim);
    the whole weight for a 2-D one."""
    return (slice(None), slice(None), *(k // 2 for k in t.shape[2:]))


@scheme()
def hadamard_(tensor: Tensor, gain: float = 1.0) -> Tensor:
    r"""ZerO initialization (Zhao et al., TMLR 2022).

    The paper: "ZerO Initialization: Initializing Neural Networks with only Zeros and Ones".

    For a weight with ``out`` outputs and ``in`` inputs (a 2-D ``(out, in)`` matrix, or a
    conv weight's channel map at the kernel's centre tap, zeros elsewhere):

    * ``out <= in``: the partial identity :math:`W_{ij} = [i = j]` (the identity when square);
    * ``out > in``: :math:`W = c\, I^*_{out \times 2^m} H_m I^*_{2^m \times in}`, with
      :math:`m = \lceil \log_2 out \rceil`, :math:`c = 2^{-(m-1)/2}`, :math:`I^*` the partial
      identities that keep the first rows/columns, and :math:`H_m` the Sylvester Hadamard
      matrix, :math:`(H_m)_{ij} = (-1)^{\operatorname{popcount}(i \,\&\, j)}`. Only the
      ``out x in`` corner of :math:`H_m` is built, in place, by doubling
      (:math:`H_{k+1} = [[H_k, H_k], [H_k, -H_k]]`). It has full column rank for every
      ``out > in``, so the layer is injective.

    Everything is then multiplied by ``gain`` (default 1). Deterministic: no random numbers.

    Example:
        >>> hadamard_(torch.empty(4, 2))  # m = 2, c = 2 ** -0.5
        tensor([[ 0.7071,  0.7071],
                [ 0.7071, -0.7071],
                [ 0.7071,  0.7071],
                [ 0.7071, -0.7071]])
        >>> hadamard_(torch.empty(2, 3))
        tensor([[1., 0., 0.],
                [0., 1., 0.]])
    """
    t = float_tensor(tensor)
    gain = finite_gain(gain, t.dtype)
    if t.dim() not in (2, 3, 4, 5):
        raise ValueError(f"tensor must have 2 to 5 dims for hadamard_; got shape {tuple(t.shape)}")
    out, inp = t.shape[:2]
    if out <= inp or nothing_to_write(t):
        return identity_(tensor, gain)
    scale = gain * 2.0 ** (-(math.ceil(math.log2(out)) - 1) / 2)
    try:
        _hadamard_in_place(t, scale)
    except BaseException:  # deterministic: written again whole, it is complete (an interrupt, never half)
        _hadamard_in_place(t, scale)
        raise
    return tensor


def _hadamard_in_place(t: Tensor, scale: float) -> None:
    """Zero ``t`` and write ``scale`` times the Sylvester corner at its centre tap, in place (no temporary)."""
    with torch.no_grad():
        t.zero_()
        centre = t[_centre_tap(t)]  # a view: the whole 2-D weight, or the centre tap
        _sylvester_corner_(centre)
        centre.mul_(scale)


def _sylvester_corner_(dest: Tensor) -> None:
    """Write the top-left ``dest.shape`` corner of the Sylvester Hadamard matrix into ``dest``, in place.

    ``H_{k+1} = [[H_k, H_k], [H_k, -H_k]]``: starting from ``H_0 = [1]``, each doubling
    copies the corner already written into the new rows and columns, so every entry is
    written once and nothing beyond ``dest`` is ever built.
    """
    rows, cols = dest.shape
    dest[0, 0] = 1
    size = 1
    while size < max(rows, cols):
        r, c = min(rows, size), min(cols, size)
        r2, c2 = min(rows, 2 * size), min(cols, 2 * size)
        if c2 > c:
            dest[:r, c:c2] = dest[:r, : c2 - c]
        if r2 > r:
            dest[r:r2, :c] = dest[: r2 - r, :c]
            if c2 > c:
                dest[r:r2, c:c2] = dest[: r2 - r, : c2 - c]
                dest[r:r2, c:c2].neg_()
        size *= 2


@scheme()
def sparse_(
    tensor: Tensor, sparsity: float, std: float = 0.01, generator: torch.Generator | None = None, *,
    seed: int | None = None, name: str = "",
) -> Tensor:
    r"""Fill ``tensor`` as a sparse matrix (Martens, 2010).

    The weight is viewed as ``(rows, cols) = (size(0), numel / size(0))`` (conv weights
    included). Every entry is drawn from :math:`\mathcal{N}(0, \text{std}^2)`, then
    :math:`\lceil \text{sparsity} \cdot \text{rows} \rceil` entries of each column,
    chosen uniformly at random, are set to zero, as in torch. Unlike torch, the zero
    pattern is drawn from ``generator`` too, so a seeded call is reproducible whatever
    the global seed. Default ``std=0.01``; ``0 <= sparsity < 1``. ``seed`` (keyword-only,
    with ``name``): the values and the zero pattern from two sub-streams of the keyed stream of
    ``(seed, name)`` instead of ``generator``.

    Example:
        >>> w = sparse_(torch.empty(10, 4), sparsity=0.3)
        >>> (w == 0).sum(0)  # ceil(0.3 * 10) zeros per column
        tensor([3, 3, 3, 3])
    """
    t = float_tensor(tensor)
    sparsity = real_number("sparsity", sparsity)
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1); got {sparsity}")
    std = non_negative("std", std)
    sampler = make_sampler(generator, seed, name, t)
    within_dtype("std", NORMAL_REACH * std, t.dtype)
    if t.dim() < 2:
        raise ValueError(f"tensor must have at least 2 dims for sparse_; got shape {tuple(t.shape)}")
    if nothing_to_write(t):
        return tensor
    rows = t.size(0)
    cols = t.numel() // rows
    num_zeros = math.ceil(sparsity * rows)
    with torch.no_grad():
        # built aside and copied in one write: an error (out of memory in topk) or a Ctrl-C leaves t untouched
        m = torch.empty((rows, cols), dtype=t.dtype, device=t.device)
        sampler.normal_(m, 0.0, std)
        if num_zeros:
            # a uniformly random subset of rows per column: the smallest of i.i.d. keys (selection, not a sort)
            keys = sampler.child(1).uniform_(torch.empty((cols, rows), dtype=torch.float32, device=t.device), 0.0, 1.0)
            zero_rows = keys.topk(num_zeros, dim=1, largest=False, sorted=False).indices
            m.scatter_(0, zero_rows.T, 0.0)
        t.copy_(m.view(t.shape))
    return tensor
