r"""The variance-scaling family: one core, every named scheme a one-line specialization.

.. math::

    \sigma = \text{gain} / \sqrt{\text{fan}}, \qquad \text{gain} = \sqrt{\text{scale}}

with ``fan`` one of

============  ===============================================
mode          fan
============  ===============================================
fan_in        :math:`n_\text{in}`
fan_out       :math:`n_\text{out}`
fan_avg       :math:`(n_\text{in} + n_\text{out}) / 2`
fan_geo_avg   :math:`\sqrt{n_\text{in}\, n_\text{out}}`
============  ===============================================

and the weight drawn from ``normal`` :math:`\mathcal{N}(0, \sigma^2)`, ``uniform``
:math:`\mathcal{U}(\pm\sqrt3\sigma)` or ``truncated_normal`` (cut at :math:`\pm 2`
std of the underlying normal, whose std is :math:`\sigma / 0.8796\ldots`, so the
result's std is exactly :math:`\sigma`).

Complex tensors get :math:`E|w|^2 = \sigma^2` from every distribution, each
circularly symmetric (JAX's convention): ``normal`` is torch's complex ``normal_``,
:math:`\mathcal{CN}(0, \sigma^2)`, each part of variance :math:`\sigma^2/2`;
``uniform`` is uniform on the disk :math:`|w| \le \sqrt2\sigma`
(:math:`w = \sigma\sqrt{2u}\,e^{i\theta}`, :math:`u \sim \mathcal{U}[0,1)`,
:math:`\theta \sim \mathcal{U}[0,2\pi)`); ``truncated_normal`` is
:math:`\mathcal{CN}(0, \sigma_u^2)` with the modulus cut at :math:`2\sigma_u`,
:math:`\sigma_u = \sigma / 0.9620\ldots` (see :func:`~torchinit.schemes.truncnorm.trunc_normal_std_`).

Fans come from :mod:`torchinit.schemes.layout`,
gains from :mod:`torchinit.schemes.gains`; this module holds neither.

The arithmetic of :math:`\sigma` follows torch's (``gain / sqrt(fan)``,
``gain * sqrt(2 / (fan_in + fan_out))``) so xavier and kaiming stay
bit-identical to ``torch.nn.init``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from torchinit._util.checks import NORMAL_REACH, choice, finite, float_tensor, non_negative, within_dtype
from torchinit._util.warn import warn
from torchinit.rng.sampling import make_sampler, real_dtype
from torchinit.schemes.contract import FAN_KEYWORDS, scheme
from torchinit.schemes.gains import Nonlinearity, calculate_gain
from torchinit.schemes.layout import Dims, Fans, block_shape, fans, weight_of
from torchinit.schemes.truncnorm import (
    complex_truncated_std_factor,
    sample_circular_,
    truncated_std_,
    truncated_std_factor,
)

__all__ = [
    "MODES",
    "DISTRIBUTIONS",
    "variance_scaling_",
    "scaled_std",
    "xavier_uniform_",
    "xavier_normal_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "lecun_uniform_",
    "lecun_normal_",
]

MODES = ("fan_in", "fan_out", "fan_avg", "fan_geo_avg")
DISTRIBUTIONS = ("truncated_normal", "normal", "uniform")


def scaled_std(gain: float, f: Fans, mode: str) -> float:
    """The target std ``gain / sqrt(fan)`` for ``mode``, in torch's arithmetic."""
    if mode == "fan_in":
        return gain / math.sqrt(f.fan_in)
    if mode == "fan_out":
        return gain / math.sqrt(f.fan_out)
    if mode == "fan_avg":
        return gain * math.sqrt(2.0 / float(f.fan_in + f.fan_out))
    return gain / math.sqrt(math.sqrt(f.fan_in * f.fan_out))


def _init(
    target: Any,
    gain: float,
    mode: str,
    distribution: str,
    in_dims: Dims,
    out_dims: Dims,
    blocks: int,
    generator: torch.Generator | None,
    *,
    batch_dims: Dims = None,
    warn_empty: bool = False,
    seed: int | None = None,
    name: str = "",
) -> Any:
    """The one place where a fan-based initializer validates, computes sigma and writes.

    ``warn_empty``: warn, as torch's kaiming functions do, that a zero-element tensor is a no-op.
    """
    mode = choice("mode", mode, MODES, fold_case=True)
    distribution = choice("distribution", distribution, DISTRIBUTIONS)
    gain = non_negative("gain", gain)
    written = weight_of(target)
    t = float_tensor(written)
    sampler = make_sampler(generator, seed, name, t)
    block_shape(tuple(t.shape), blocks)  # validated even when there is nothing to write
    if t.numel() == 0:
        if warn_empty:
            warn("Initializing zero-element tensors is a no-op", UserWarning)
        return written
    f = fans(target, in_dims=in_dims, out_dims=out_dims, batch_dims=batch_dims, blocks=blocks)  # meta too
    fan = {"fan_in": f.fan_in, "fan_out": f.fan_out}.get(mode, min(f))
    if fan <= 0:
        raise ValueError(f"mode={mode!r} needs a positive fan; fans are {tuple(f)}")
    if t.is_meta:
        return written
    std = scaled_std(gain, f, mode)
    cplx = t.dtype.is_complex
    reach = {
        "normal": NORMAL_REACH,
        "uniform": math.sqrt(2.0) if cplx else 2.0 * math.sqrt(3.0),  # real: torch also needs the span to be finite
        "truncated_normal": 2.0 / (complex_truncated_std_factor(2.0) if cplx else truncated_std_factor(2.0)),
    }[distribution]
    within_dtype("gain/scale", reach * std, t.dtype)
    with torch.no_grad():
        if distribution == "normal":
            sampler.fill(t, "normal_", 0.0, std)  # complex: E|w|^2 = std^2, each part std^2 / 2
        elif distribution == "uniform" and cplx:  # the disk |w| <= sqrt(2) std: |w|^2 ~ U[0, 2 std^2]
            sample_circular_(t, _disk_radius_, math.sqrt(2.0) * std, 0.0, sampler)
        elif distribution == "uniform":
            bound = math.sqrt(3.0) * std
            sampler.fill(t, "uniform_", -bound, bound)
        else:
            truncated_std_(t, std, 2.0, 0.0, sampler)
    return written


def _disk_radius_(u: Tensor) -> Tensor:
    """``u ~ U[0, 1)`` -> the modulus of a uniform point of the unit disk, ``sqrt(u)``, in place."""
    return u.sqrt_()


@scheme(local=real_dtype, keywords=FAN_KEYWORDS)
def variance_scaling_(
    tensor: Tensor, scale: float = 1.0, mode: str = "fan_in", distribution: str = "truncated_normal", *,
    in_dims: Dims = None, out_dims: Dims = None, batch_dims: Dims = None, blocks: int = 1,
    generator: torch.Generator | None = None, seed: int | None = None, name: str = "",
) -> Tensor:
    r"""Fill ``tensor`` with variance :math:`\text{scale} / \text{fan}` (the core of every fan-based scheme).

    :math:`\sigma = \sqrt{\text{scale}/\text{fan}}` with ``fan`` chosen by ``mode``
    (``fan_in``, ``fan_out``, ``fan_avg``, ``fan_geo_avg``), drawn from
    ``distribution`` (``truncated_normal``, ``normal``, ``uniform``); see the
    module docstring. Defaults: ``scale=1``, ``mode='fan_in'``,
    ``distribution='truncated_normal'`` (JAX's and Keras's defaults).

    Complex tensors get :math:`E|w|^2 = \text{scale}/\text{fan}` from every
    distribution (circularly symmetric: a complex normal, a uniform disk, a complex
    normal with truncated modulus); see the module docstring for the formulas.

    ``tensor`` may also be a Linear, ConvNd, ConvTransposeNd or Embedding
    module: its ``weight`` is filled with the module's own fans (groups and
    transposition included), and the weight is returned.

    Fused weights: ``blocks`` splits dim 0 into equal chunks, each initialized as if it
    were its own tensor. ``xavier_uniform_(mha.in_proj_weight, blocks=3)`` gives q, k
    and v the variance of three separate (E, E) weights (one (3E, E) matrix gets
    fan_out = 3E, half that variance); LSTMs have 4 blocks, GRUs 3.

    Example:
        >>> g = torch.Generator()
        >>> a = variance_scaling_(torch.empty(256, 128), 2.0, "fan_in", "normal", generator=g.manual_seed(0))
        >>> torch.equal(a, kaiming_normal_(torch.empty(256, 128), generator=g.manual_seed(0)))
        True
        >>> w = variance_scaling_(torch.empty(256, 128), in_dims=0, out_dims=1)  # a weight used as x @ w: fan_in 256
        >>> w = variance_scaling_(torch.empty(8, 256, 128), batch_dims=0)  # 8 experts, each (256, 128): fan_in 128
    """
    scale = non_negative("scale", scale)
    return _init(tensor, math.sqrt(scale), mode, distribution, in_dims, out_dims, blocks, generator,
                 batch_dims=batch_dims, seed=seed, name=name)


@scheme(local=real_dtype, keywords=FAN_KEYWORDS)
def xavier_uniform_(
    tensor: Tensor, gain: float = 1.0, generator: torch.Generator | None = None, *, in_dims: Dims = None,
    out_dims: Dims = None, batch_dims: Dims = None, blocks: int = 1, seed: int | None = None, name: str = "",
) -> Tensor:
    r"""Glorot & Bengio (2010), uniform: :math:`\mathcal{U}(\pm\,\text{gain}\sqrt{6/(n_\text{in}+n_\text{out})})`.

    ``variance_scaling_(tensor, gain**2, 'fan_avg', 'uniform')``. Default ``gain=1``.

    Example:
        >>> w = xavier_uniform_(torch.empty(30, 50), gain=calculate_gain("relu"))
        >>> bool(w.abs().max() <= 2**0.5 * (6 / 80) ** 0.5)
        True
    """
    return _init(tensor, finite("gain", gain), "fan_avg", "uniform", in_dims, out_dims, blocks, generator,
                 batch_dims=batch_dims, seed=seed, name=name)


@scheme(local=real_dtype, keywords=FAN_KEYWORDS)
def xavier_normal_(
    tensor: Tensor, gain: float = 1.0, generator: torch.Generator | None = None, *, in_dims: Dims = None,
    out_dims: Dims = None, batch_dims: Dims = None, blocks: int = 1, seed: int | None = None, name: str = "",
) -> Tensor:
    r"""Glorot & Bengio (2010), normal: :math:`\mathcal{N}(0,\ \text{gain}^2 \cdot 2/(n_\text{in}+n_\text{out}))`.

    ``variance_scaling_(tensor, gain**2, 'fan_avg', 'normal')``. Default ``gain=1``.

    Example:
        >>> w = xavier_normal_(torch.empty(300, 500), generator=torch.Generator().manual_seed(0))
        >>> round(w.std().item() / (2 / 800) ** 0.5, 2)
        1.0
    """
    return _init(tensor, finite("gain", gain), "fan_avg", "normal", in_dims, out_dims, blocks, generator,
                 batch_dims=batch_dims, seed=seed, name=name)


@scheme(local=real_dtype, keywords=FAN_KEYWORDS)
def kaiming_uniform_(
    tensor: Tensor, a: float = 0, mode: str = "fan_in", nonlinearity: Nonlinearity = "leaky_relu",
    generator: torch.Generator | None = None, *, in_dims: Dims = None, out_dims: Dims = None, batch_dims: Dims = None,
    blocks: int = 1, seed: int | None = None, name: str = "",
) -> Tensor:
    r"""He et al. (2015), uniform: :math:`\mathcal{U}(\pm\,\text{gain}\sqrt{3/\text{fan}})`.

    ``gain = calculate_gain(nonlinearity, a)``, so any activation name, module
    or callable works. ``mode`` also accepts ``fan_avg`` and ``fan_geo_avg``.
    Defaults: ``a=0``, ``mode='fan_in'``, ``nonlinearity='leaky_relu'``.

    Example:
        >>> w = kaiming_uniform_(torch.empty(30, 50), mode="fan_in", nonlinearity="relu")
        >>> bool(w.abs().max() <= (6 / 50) ** 0.5)
        True
        >>> w = kaiming_uniform_(nn.ConvTranspose2d(16, 64, 3))  # the layer's true fans: fan_in = 16 * 3 * 3
    """
    return _init(tensor, _kaiming_gain(nonlinearity, a), mode, "uniform", in_dims, out_dims, blocks, generator,
                 batch_dims=batch_dims, warn_empty=True, seed=seed, name=name)


@scheme(local=real_dtype, keywords=FAN_KEYWORDS)
def kaiming_normal_(
    tensor: Tensor, a: float = 0, mode: str = "fan_in", nonlinearity: Nonlinearity = "leaky_relu",
    generator: torch.Generator | None = None, *, in_dims: Dims = None, out_dims: Dims = None, batch_dims: Dims = None,
    blocks: int = 1, seed: int | None = None, name: str = "",
) -> Tensor:
    r"""He et al. (2015), normal: :math:`\mathcal{N}(0,\ \text{gain}^2/\text{fan})`.

    ``gain = calculate_gain(nonlinearity, a)``. Defaults as :func:`kaiming_uniform_`.

    Example:
        >>> w = kaiming_normal_(torch.empty(500, 300), mode="fan_out", nonlinearity="gelu",
        ...                     generator=torch.Generator().manual_seed(0))
        >>> round(w.std().item() * 500**0.5 / calculate_gain("gelu"), 2)
        1.0
    """
    return _init(tensor, _kaiming_gain(nonlinearity, a), mode, "normal", in_dims, out_dims, blocks, generator,
                 batch_dims=batch_dims, warn_empty=True, seed=seed, name=name)


def _kaiming_gain(nonlinearity: Nonlinearity, a: float) -> float:
    # As in torch, ``a`` is leaky_relu's negative slope and is ignored for other nonlinearities.
    leaky = isinstance(nonlinearity, str) and nonlinearity.lower() == "leaky_relu"
    return calculate_gain(nonlinearity, finite("a", a) if leaky else None)


@scheme(local=real_dtype, keywords=FAN_KEYWORDS)
def lecun_uniform_(
    tensor: Tensor, generator: torch.Generator | None = None, *, in_dims: Dims = None, out_dims: Dims = None,
    batch_dims: Dims = None, blocks: int = 1, seed: int | None = None, name: str = "",
) -> Tensor:
    r"""LeCun et al. (1998), uniform: :math:`\mathcal{U}(\pm\sqrt{3/n_\text{in}})`, variance :math:`1/n_\text{in}`.

    ``variance_scaling_(tensor, 1, 'fan_in', 'uniform')``.

    Example:
        >>> w = lecun_uniform_(torch.empty(30, 50))
        >>> bool(w.abs().max() <= (3 / 50) ** 0.5)
        True
    """
    return _init(tensor, 1.0, "fan_in", "uniform", in_dims, out_dims, blocks, generator,
                 batch_dims=batch_dims, seed=seed, name=name)


@scheme(local=real_dtype, keywords=FAN_KEYWORDS)
def lecun_normal_(
    tensor: Tensor, generator: torch.Generator | None = None, *, in_dims: Dims = None, out_dims: Dims = None,
    batch_dims: Dims = None, blocks: int = 1, seed: int | None = None, name: str = "",
) -> Tensor:
    r"""LeCun et al. (1998), normal: :math:`\mathcal{N}(0, 1/n_\text{in})` (not truncated).

    ``variance_scaling_(tensor, 1, 'fan_in', 'normal')``. For JAX's truncated
    variant use ``variance_scaling_(tensor)``.

    Example:
        >>> w = lecun_normal_(torch.empty(300, 500), generator=torch.Generator().manual_seed(0))
        >>> round(w.std().item() * 500**0.5, 2)
        1.0
    """
    return _init(tensor, 1.0, "fan_in", "normal", in_dims, out_dims, blocks, generator,
                 batch_dims=batch_dims, seed=seed, name=name)
