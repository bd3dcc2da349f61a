"""Structured initializers with torch.nn.init's signatures: orthogonal and sparse."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from torchinit._checks import finite, float_tensor, non_negative, nothing_to_write, real_number

__all__ = ["orthogonal_", "sparse_"]


def orthogonal_(tensor: Tensor, gain: float = 1, generator: torch.Generator | None = None) -> Tensor:
    r"""Fill ``tensor`` with a (semi-)orthogonal matrix times ``gain`` (Saxe et al., 2013).

    The weight is viewed as ``(rows, cols) = (size(0), numel / size(0))``. With
    :math:`G` a standard Gaussian matrix (transposed when rows < cols) and
    :math:`G = QR`, the result is :math:`\text{gain}\cdot Q\,\operatorname{diag}(\operatorname{sign} R_{ii})`,
    which is Haar-distributed (Mezzadri, 2007): :math:`W W^\top = \text{gain}^2 I` when
    rows <= cols, else :math:`W^\top W = \text{gain}^2 I`. Bit-identical to torch for
    float32/float64; bf16/fp16 are computed in float32, complex tensors get a
    unitary matrix (phase fix :math:`R_{ii}/|R_{ii}|`). Default ``gain=1``.

    Example:
        >>> w = orthogonal_(torch.empty(3, 5), gain=2.0)
        >>> torch.allclose(w @ w.T, 4 * torch.eye(3), atol=1e-5)
        True
    """
    t = float_tensor(tensor)
    gain = finite("gain", gain)
    if t.dim() < 2:
        raise ValueError(f"tensor must have at least 2 dims for orthogonal_; got shape {tuple(t.shape)}")
    if nothing_to_write(t):
        return tensor
    rows = t.size(0)
    cols = t.numel() // rows
    compute = t.dtype if t.dtype in (torch.float32, torch.float64) or t.is_complex() else torch.float32
    with torch.no_grad():
        g = torch.empty((rows, cols), dtype=compute, device=t.device).normal_(0, 1, generator=generator)
        if rows < cols:
            g = g.t()
        q, r = torch.linalg.qr(g)
        d = torch.diagonal(r)
        q *= torch.sgn(d) if q.is_complex() else d.sign()
        if rows < cols:
            q = q.t()
        t.copy_(q.reshape(t.shape))
        t.mul_(gain)
    return tensor


def sparse_(tensor: Tensor, sparsity: float, std: float = 0.01, generator: torch.Generator | None = None) -> Tensor:
    r"""Fill a 2-D ``tensor`` as a sparse matrix (Martens, 2010).

    Every entry is drawn from :math:`\mathcal{N}(0, \text{std}^2)`, then
    :math:`\lceil \text{sparsity} \cdot \text{rows} \rceil` entries of each column are
    set to zero. Unlike torch, the zero pattern is drawn from ``generator`` too,
    so a seeded call is fully reproducible. Default ``std=0.01``;
    ``0 <= sparsity < 1``.

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
    if t.dim() != 2:
        raise ValueError(f"tensor must have 2 dims for sparse_; got shape {tuple(t.shape)}")
    if nothing_to_write(t):
        return tensor
    rows, cols = t.shape
    num_zeros = math.ceil(sparsity * rows)
    with torch.no_grad():
        t.normal_(0, std, generator=generator)
        if num_zeros:
            keys = torch.rand((rows, cols), generator=generator, device=t.device)
            zero_rows = keys.argsort(dim=0)[:num_zeros]  # a random subset of rows, per column
            t.scatter_(0, zero_rows, 0.0)
    return tensor
