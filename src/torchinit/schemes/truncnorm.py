r"""The truncated normal distribution: exact bounds in every dtype, and fast.

:func:`trunc_normal_` draws from :math:`\mathcal{N}(\mu, \sigma^2)` conditioned
on :math:`a \le x \le b` (absolute bounds, torch's signature), and
:func:`trunc_normal_std_` truncates at :math:`\pm k` standard deviations and
rescales so that the *result's* standard deviation is exactly ``std``.

Exactness. After the values are rounded to the tensor's dtype they are clamped
to ``[a', b']``, the smallest and largest values of that dtype inside
``[a, b]``. Clamping only moves values that rounding pushed across a bound, so
the edge bucket holds at most the mass of one dtype spacing more than an
interior one; nothing piles up on a bound (the bf16/fp16 bug of inverse-CDF +
clamp code, pytorch #145498, #155588).

Speed. Three samplers, chosen from the standardized bounds
:math:`\alpha = (a-\mu)/\sigma`, :math:`\beta = (b-\mu)/\sigma`, all processed in
cache-sized chunks:

* *polynomial inverse CDF* (float32 and lower, :math:`|\alpha|,|\beta| \le 3.5`):
  one uniform draw :math:`y \in [\operatorname{erf}(\alpha/\sqrt2), \operatorname{erf}(\beta/\sqrt2)]` per value and
  :math:`x = \mu + y\, G(w)`, :math:`w = -\log(1-y^2)`, where
  :math:`G(w) = \sigma\sqrt2\,\operatorname{erfinv}(y)/y` is smooth in :math:`w`
  and is fitted on the call's own ``w``-range by Chebyshev interpolation in float64
  to a relative error below 5e-8 (the transform of Giles, "Approximating the
  erfinv function", 2010; the fit is ours and made per call);
* *rejection* (wide bounds, mass :math:`\ge 1/2`): ``normal_`` and a redraw of only
  the values that fell outside, until none is left;
* *exact inverse CDF* in float64 (:func:`torch.special.ndtri` on the lower tail):
  far tails and float64 tensors with narrow bounds.

On CPU tensors of at least :data:`PARALLEL_THRESHOLD` elements the polynomial sampler
runs its chunks in threads (:func:`torchinit.rng.keyed.run_chunks`, the caller's thread
included, up to ``torch.get_num_threads()``), drawing its uniforms from the keyed Philox
stream (:mod:`torchinit.rng.keyed`) keyed by one draw from the generator: the values do not
depend on the thread count, and no thread setting is changed. Smaller tensors and the
other samplers draw from the generator itself.

Complex tensors. :func:`trunc_normal_std_` (and so ``variance_scaling_`` with
``truncated_normal``) draws a *circular* complex normal truncated in modulus:
:math:`w = \mu(1+i) + r e^{i\theta}` (``mean`` on both parts, as torch's complex
``normal_``) with :math:`\theta \sim \mathcal{U}[0, 2\pi)` and
:math:`r = \sigma_u\sqrt{-\log(1 - u\,(1 - e^{-k^2}))}`, :math:`u \sim \mathcal{U}[0, 1)`:
:math:`\mathcal{CN}(0, \sigma_u^2)` (each part of variance :math:`\sigma_u^2/2`, as
torch's complex ``normal_``) conditioned on :math:`|w - \mu(1+i)| \le k\sigma_u`. The scheme
is JAX's ``_complex_truncated_normal``; the variance factor is
:func:`complex_truncated_std_factor`.

Faults. Values are computed into a temporary and written by one ``copy_`` at the end: an
exception or Ctrl-C half-way leaves the tensor unchanged (the temporary is the size of the
tensor, for the duration of the call).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import Tensor

from torchinit._util.checks import (
    NORMAL_REACH,
    finite,
    float_tensor,
    non_negative,
    nothing_to_write,
    real_number,
    within_dtype,
)
from torchinit._util.floats import next_float
from torchinit._util.warn import warn
from torchinit.rng import keyed
from torchinit.rng.sampling import Sampler, make_sampler, real_dtype
from torchinit.schemes.contract import scheme

__all__ = [
    "trunc_normal_",
    "trunc_normal_std_",
    "truncated_std_factor",
    "complex_truncated_std_factor",
    "sample_truncated_",
    "sample_circular_",
]

#: Values per chunk on the CPU: large enough to amortize dispatch, small enough for L2.
CHUNK = 1 << 18
#: Bounds beyond this many std truncate nothing measurable: a UserWarning says so.
NOTHING_TRUNCATED_SIGMA = 6.0
#: Standardized bounds this close to the mean truncate to a flat density (relative variation below FLAT_Z**2 / 2).
FLAT_Z = 1e-6
#: The polynomial sampler covers standardized bounds up to this magnitude.
POLY_MAX_Z = 3.5
POLY_MAX_DEGREE = 16
POLY_REL_TOL = 5e-8
#: Large CPU tensors (at least this many elements) on the polynomial sampler run chunked in threads.
PARALLEL_THRESHOLD = 1 << 19


def truncated_std_factor(k: float) -> float:
    r"""Std of :math:`\mathcal{N}(0,1)` truncated to :math:`[-k, k]`: :math:`\sqrt{1 - 2k\varphi(k)/(2\Phi(k)-1)}`.

    For ``k = 2`` this is 0.87962566103423978, the constant of JAX's and
    Keras's ``truncated_normal`` variance scaling.

    Example:
        >>> round(truncated_std_factor(2.0), 12)
        0.879625661034
    """
    k = _positive_k(k)
    if k < 0.5:  # the closed form cancels (1 - 0.99999...): the moments' series instead, no cancellation
        # Var = (int_{-k}^{k} x^2 e^{-x^2/2}) / (int_{-k}^{k} e^{-x^2/2}) = k^2 S(3) / S(1),
        # S(j) = sum_n (-1/2)^n / n! * k^(2n) / (2n + j): terms fall by k^2/2 per step
        terms = [(-0.5) ** n / math.factorial(n) * k ** (2 * n) for n in range(20)]
        ratio = sum(c / (2 * n + 3) for n, c in enumerate(terms)) / sum(c / (2 * n + 1) for n, c in enumerate(terms))
        return k * math.sqrt(ratio)
    mass = math.erf(k / math.sqrt(2.0))
    density = math.exp(-0.5 * k * k) / math.sqrt(2.0 * math.pi)
    return math.sqrt(1.0 - 2.0 * k * density / mass)


def _positive_k(k: float) -> float:
    k = finite("k", k)
    if k <= 0:
        raise ValueError(f"k must be > 0; got {k}")
    return k


def complex_truncated_std_factor(k: float) -> float:
    r"""RMS modulus of :math:`\mathcal{CN}(0,1)` truncated to :math:`|z| \le k`: :math:`\sqrt{1 - k^2/(e^{k^2}-1)}`.

    For :math:`z \sim \mathcal{CN}(0, 1)` (:math:`E|z|^2 = 1`, each part of variance
    1/2), :math:`|z|^2` is exponential with mean 1, so conditioned on
    :math:`|z|^2 \le k^2` its mean is :math:`1 - k^2 e^{-k^2}/(1 - e^{-k^2})`.
    For ``k = 2`` the factor is 0.96196182800821. (JAX's ``variance_scaling`` uses
    0.95311164380491208 for this case, which gives about 1.9% more variance than
    asked.)

    Example:
        >>> round(complex_truncated_std_factor(2.0), 12)
        0.961961828008
    """
    k = _positive_k(k)
    x = k * k
    if x < 0.5:  # expm1(x) - x cancels for small x: k * sqrt(series / series), which no underflow of x breaks
        num = sum(x ** (n - 2) / math.factorial(n) for n in range(2, 30))  # (e^x - 1 - x) / x^2
        den = sum(x ** (n - 1) / math.factorial(n) for n in range(1, 30))  # (e^x - 1) / x
        return k * math.sqrt(num / den)
    return math.sqrt(1.0 - x * math.exp(-x) / -math.expm1(-x))  # no overflow for large k


@scheme(local=lambda t: True)
def trunc_normal_(
    tensor: Tensor,
    mean: float = 0.0,
    std: float = 1.0,
    a: float = -2.0,
    b: float = 2.0,
    generator: torch.Generator | None = None,
    *,
    seed: int | None = None,
    name: str = "",
) -> Tensor:
    r"""Fill ``tensor`` from :math:`\mathcal{N}(\text{mean}, \text{std}^2)` truncated to :math:`[a, b]`.

    The density is :math:`\varphi((x-\mu)/\sigma) / (\sigma\,(\Phi(\beta)-\Phi(\alpha)))`
    on :math:`[a, b]` with :math:`\alpha=(a-\mu)/\sigma`, :math:`\beta=(b-\mu)/\sigma`.
    ``a`` and ``b`` are *absolute* values, as in torch: ``trunc_normal_(w, std=0.02)``
    with the default bounds ``[-2, 2]`` truncates nothing and warns. To cut at
    :math:`\pm k\sigma` with the result's std equal to ``std``, use
    :func:`trunc_normal_std_`.

    Every value lies in ``[a, b]`` after rounding to the tensor's dtype
    (fp32, fp64, bf16 and fp16 alike). Defaults: ``mean=0``, ``std=1``,
    ``a=-2``, ``b=2``. ``a`` and ``b`` may be infinite.

    Complex tensors are rejected (``a`` and ``b`` bound a real line): use
    :func:`trunc_normal_std_`, which truncates the modulus.

    ``generator`` draws from torch's RNG; ``seed`` (keyword-only, with ``name``) from the
    keyed stream of ``(seed, name)`` (docs/keyed_rng.md, section 6), element by element, so
    any slice or shard of the tensor gets the whole tensor's values there; not both.

    Example:
        >>> w = trunc_normal_(torch.empty(1000), std=0.02, a=-0.04, b=0.04)
        >>> bool(w.abs().max() <= 0.04)
        True
    """
    if isinstance(tensor, Tensor) and tensor.dtype.is_complex:
        raise TypeError(
            f"tensor must have a real floating-point dtype; got {tensor.dtype}: a and b bound real values. "
            "For a complex tensor use trunc_normal_std_, which truncates the modulus"
        )
    t = float_tensor(tensor, complex_ok=False)
    sampler = make_sampler(generator, seed, name, t)
    mean = finite("mean", mean)
    std = non_negative("std", std)
    a, b = real_number("a", a), real_number("b", b)
    if not a < b:
        raise ValueError(f"a must be less than b; got a={a}, b={b}")
    if std == 0.0 and not a <= mean <= b:
        raise ValueError(f"mean={mean} lies outside [a, b] = [{a}, {b}] and std is 0")
    reach = NORMAL_REACH * std  # the values lie in [a, b] and within reach of the mean
    within_dtype("mean, std, a, b", max(abs(max(a, mean - reach)), abs(min(b, mean + reach))), t.dtype)
    lo, hi = _inner_bounds(a, b, t.dtype)
    if std > 0:
        alpha, beta = (a - mean) / std, (b - mean) / std
        if (
            min(-alpha, beta) > NOTHING_TRUNCATED_SIGMA
            and (math.isfinite(a) or math.isfinite(b))
        ):
            warn(
                f"trunc_normal_: the bounds a={a}, b={b} lie more than {NOTHING_TRUNCATED_SIGMA:g} std "
                f"(std={std}) from the mean, so nothing is truncated. a and b are absolute values; "
                "use trunc_normal_std_(tensor, std, k) to cut at k standard deviations.",
                UserWarning,
            )
        _check_mass(alpha, beta)
    if nothing_to_write(t):
        return tensor
    with torch.no_grad():
        sample_truncated_(t, mean, std, a, b, lo, hi, sampler)
    return tensor


@scheme(local=real_dtype)
def trunc_normal_std_(
    tensor: Tensor, std: float = 1.0, k: float = 2.0, mean: float = 0.0, *, generator: torch.Generator | None = None,
    seed: int | None = None, name: str = "",
) -> Tensor:
    r"""Fill ``tensor`` from a normal cut at :math:`\pm k` std, with the result's std equal to ``std``.

    Draws :math:`\mathcal{N}(\mu, \sigma_u^2)` truncated to :math:`\mu \pm k\sigma_u`,
    where :math:`\sigma_u = \text{std} / c(k)` and :math:`c(k)` is
    :func:`truncated_std_factor` (0.8796 for ``k=2``). This is the
    ``truncated_normal`` of JAX's and Keras's variance scaling for ``k=2``.
    Defaults: ``std=1``, ``k=2``, ``mean=0``.

    Complex tensors get a circular complex normal truncated in modulus, with
    :math:`E|w - c|^2 = \text{std}^2` about the centre :math:`c = \mu(1+i)` (``mean``
    on both parts, as torch's complex ``normal_``):

    .. math::

        w = c + r e^{i\theta},\quad \theta \sim \mathcal{U}[0, 2\pi),\quad
        r = \sigma_u \sqrt{-\log\bigl(1 - u\,(1 - e^{-k^2})\bigr)},\quad u \sim \mathcal{U}[0, 1)

    that is :math:`\mathcal{CN}(0, \sigma_u^2)` (each part of variance
    :math:`\sigma_u^2/2`, like torch's complex ``normal_``) conditioned on
    :math:`|w - c| \le k\sigma_u`, with :math:`\sigma_u = \text{std}/c_\mathbb{C}(k)` and
    :math:`c_\mathbb{C}(k)^2 = 1 - k^2/(e^{k^2} - 1)` (:func:`complex_truncated_std_factor`,
    0.9620 for ``k=2``). ``std=0`` fills :math:`c`. The moduli are clamped just inside
    :math:`k\sigma_u` so that, for ``mean=0``, :math:`|w| \le k\sigma_u` holds after
    rounding to the dtype.

    ``generator`` or ``seed`` (with ``name``) as in :func:`trunc_normal_`.

    Example:
        >>> w = trunc_normal_std_(torch.empty(768, 768), std=0.02, generator=torch.Generator().manual_seed(0))
        >>> round(w.std().item(), 4), bool(w.abs().max() <= 2 * 0.02 / truncated_std_factor(2))
        (0.02, True)
        >>> z = trunc_normal_std_(torch.empty(768, 768, dtype=torch.complex64), std=0.02,
        ...                       generator=torch.Generator().manual_seed(0))
        >>> bound = 2 * 0.02 / complex_truncated_std_factor(2)
        >>> round(z.abs().pow(2).mean().sqrt().item(), 4), bool(z.abs().max() <= bound)
        (0.02, True)
    """
    t = float_tensor(tensor, complex_ok=True)
    return truncated_std_(tensor, std, k, mean, make_sampler(generator, seed, name, t))


def truncated_std_(tensor: Tensor, std: float, k: float, mean: float, sampler: Sampler) -> Tensor:
    """:func:`trunc_normal_std_` with its randomness from ``sampler`` (the variance family's truncated normal)."""
    t = float_tensor(tensor, complex_ok=True)
    std = non_negative("std", std)
    k = _positive_k(k)
    factor = complex_truncated_std_factor(k) if t.dtype.is_complex else truncated_std_factor(k)
    mean = finite("mean", mean)
    sigma_u = std / factor
    within_dtype("mean, std, k", abs(mean) + min(k, NORMAL_REACH) * sigma_u, t.dtype)
    if t.dtype.is_complex:
        if nothing_to_write(t):
            return tensor
        with torch.no_grad():
            if std == 0.0:
                t.fill_(complex(mean, mean))
            else:
                # no modulus reaches NORMAL_REACH sigma_u (the draw's uniforms have 53 bits): a finite clamp
                sample_circular_(t, _truncated_rayleigh(k), min(k, NORMAL_REACH) * sigma_u, mean, sampler)
        return tensor
    a, b = mean - k * sigma_u, mean + k * sigma_u
    if std == 0.0:
        a, b = mean, mean
    lo, hi = _inner_bounds(a, b, t.dtype) if std > 0 else (mean, mean)
    if nothing_to_write(t):
        return tensor
    with torch.no_grad():
        if std == 0.0:
            t.fill_(mean)
        else:
            sample_truncated_(t, mean, sigma_u, a, b, lo, hi, sampler)
    return tensor


def _truncated_rayleigh(k: float):
    """``u ~ U[0, 1)`` -> ``|z| / (k sigma_u)`` for ``z ~ CN(0, sigma_u^2)`` conditioned on ``|z| <= k sigma_u``.

    The map works in place on ``u``.
    """
    mass = -math.expm1(-k * k)  # P(|z|^2 <= k^2), |z|^2 ~ Exp(1)

    def radius_(u: Tensor) -> Tensor:
        if k < FLAT_Z:  # the density is flat on the disk to 1e-12 (and k^2 may underflow): the uniform disk
            return u.sqrt_()
        return u.mul_(-mass).log1p_().neg_().sqrt_().div_(k)  # sqrt(-log(1 - u mass)) / k, in [0, 1)

    return radius_


def sample_circular_(
    out: Tensor, radius_: Any, bound: float, mean: float, sampler: Sampler
) -> Tensor:
    """Fill the complex ``out`` with ``mean (1 + i) + bound * radius_(u) * exp(i theta)``, ``theta ~ U[0, 2 pi)``.

    ``radius_`` maps uniforms ``u ~ U[0, 1)`` in place to moduli in ``[0, 1]`` (as fractions
    of ``bound``); the moduli are clamped to ``bound / (1 + eps)`` of the dtype's real part,
    so that rounding each part to the dtype keeps ``|w| <= bound`` for ``mean = 0``. ``mean`` is added
    to both parts, as torch's complex ``normal_`` does.
    Draws: one ``uniform_`` of shape ``(2, numel)`` from ``sampler`` (moduli, then phases),
    in float64 for complex128 and float32 otherwise. Written by one ``copy_`` at the end.
    """
    real = torch.empty(0, dtype=out.dtype).real.dtype
    compute = torch.float64 if real == torch.float64 else torch.float32
    u = sampler.uniform_(torch.empty((2, out.numel()), dtype=compute, device=out.device), 0.0, 1.0)
    r = radius_(u[0]).mul_(bound).clamp_(max=bound / (1.0 + torch.finfo(real).eps))
    theta = u[1].mul_(2.0 * math.pi)
    w = torch.polar(r, theta)
    if mean != 0.0:
        w.add_(complex(mean, mean))
    return out.copy_(w.view(out.shape))


def _inner_bounds(a: float, b: float, dtype: torch.dtype) -> tuple[float, float]:
    """The smallest and largest values of ``dtype`` inside ``[a, b]`` (as exact Python floats)."""
    lo = _round_inward(a, dtype, up=True)
    hi = _round_inward(b, dtype, up=False)
    if lo > hi:
        raise ValueError(f"no {dtype} value lies in [a, b] = [{a}, {b}]; widen the bounds")
    return lo, hi


def _round_inward(x: float, dtype: torch.dtype, *, up: bool) -> float:
    info = torch.finfo(dtype)
    if math.isinf(x):
        return -info.max if x < 0 else info.max
    v = torch.tensor(x, dtype=torch.float64, device="cpu").to(dtype)
    if (up and float(v) < x) or (not up and float(v) > x) or v.isinf():
        v = next_float(v.clamp(-info.max, info.max), up=up)
    return float(v)


def _check_mass(alpha: float, beta: float) -> None:
    lower = _normal_cdf(-beta) if alpha > 0 else _normal_cdf(alpha)
    upper = _normal_cdf(-alpha) if alpha > 0 else _normal_cdf(beta)
    if not upper - lower > 0:
        raise ValueError(
            f"[a, b] lies {min(abs(alpha), abs(beta)):.1f} std from the mean: its probability underflows "
            "float64; move the mean or widen the bounds"
        )


def _normal_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def sample_truncated_(
    out: Tensor,
    mean: float,
    std: float,
    a: float,
    b: float,
    lo: float,
    hi: float,
    sampler: Sampler,
) -> Tensor:
    """Fill ``out`` (validated, no autograd) from the truncated normal; clamp to ``[lo, hi]``.

    ``lo``/``hi`` are ``out.dtype`` values inside ``[a, b]``. Internal: the
    public functions validate their arguments first.

    The values are computed into a new tensor and written to ``out`` by one ``copy_`` at
    the end, so an exception or a Ctrl-C half-way leaves ``out`` unchanged; the cost is
    one temporary the size of ``out`` while the call runs.

    With an element-wise (keyed) ``sampler`` every value is a function of its index:
    the polynomial sampler is the stream's own (:func:`torchinit.rng.keyed.trunc_poly_`) at
    every size, and the inverse CDF replaces rejection. ``out`` may then be a DTensor,
    of which only the local shard is computed.
    """
    out, sampler = sampler.target(out)
    if out.numel() == 0:  # an empty shard
        return out
    if std == 0.0:  # the mean, rounded to the dtype and kept inside [lo, hi]
        return out.fill_(min(max(float(torch.tensor(mean, dtype=out.dtype, device="cpu")), lo), hi))
    compute = torch.float64 if out.dtype == torch.float64 else torch.float32
    alpha, beta = (a - mean) / std, (b - mean) / std
    if max(abs(alpha), abs(beta)) < FLAT_Z:  # the density is flat to 1e-12 on [a, b]: the uniform there
        flat = sampler.uniform_(torch.empty(out.shape, dtype=out.dtype, device=out.device), a, b)
        return out.copy_(flat.clamp_(lo, hi))
    staged = torch.empty(out.numel(), dtype=out.dtype, device=out.device)
    n = staged.numel()
    chunk = min(CHUNK if out.device.type == "cpu" else n, n)
    fill = _choose_sampler(alpha, beta, compute, mean, std, chunk, out.device, sampler.elementwise)
    poly = isinstance(fill, _PolySampler)
    # large CPU fills take the keyed stream whether or not the kernel is built (torch operations compute the same
    # bits without it): the values never depend on the install
    if poly and (sampler.elementwise or (out.device.type == "cpu" and n >= PARALLEL_THRESHOLD)):
        _fill_keyed_poly(staged, fill, chunk, lo, hi, sampler)
    else:
        scratch = None if out.dtype == compute else torch.empty(chunk, dtype=compute, device=out.device)
        for start in range(0, n, chunk):
            dst = staged[start : start + chunk]
            buf = dst if scratch is None else scratch[: dst.numel()]
            fill(buf, sampler, start)
            if buf is not dst:
                dst.copy_(buf)
            dst.clamp_(lo, hi)
    return out.copy_(staged.view(out.shape))


def _fill_keyed_poly(flat: Tensor, fill: _PolySampler, chunk: int, lo: float, hi: float, sampler: Sampler) -> None:
    """The polynomial sampler on the keyed stream (:func:`torchinit.rng.keyed.trunc_poly_`), in threads on the CPU.

    Element ``i`` is the stream's value ``i`` (its global index, for a shard):
    the kernel draws the uniforms and evaluates the same fitted polynomial in float64, so
    the values do not depend on the number of threads, on which thread takes which chunk,
    or on the tensor's size. A :class:`~torchinit.rng.sampling.GeneratorSampler` keys the
    stream by one draw from its generator (or the global RNG). The threads come from
    :func:`torchinit.rng.keyed.run_chunks`: no thread setting is changed, and an interrupt
    stops the chunks not yet started.
    """
    plan = fill.plan
    n = flat.numel()
    stream, region = sampler.philox()

    def work(k: int) -> None:
        dst = flat[k * chunk : (k + 1) * chunk]
        buf = dst if dst.dtype == torch.float32 else torch.empty(dst.numel(), dtype=torch.float32, device=dst.device)
        pieces = [(k * chunk, dst.numel(), k * chunk)] if region is None else region.runs(k * chunk, dst.numel())
        for local, length, index in pieces:
            part = buf[local - k * chunk : local - k * chunk + length]
            keyed.trunc_poly_(part, stream, index, plan.y_lo, plan.y_hi, fill.mean_value, plan.k0, plan.k1,
                              plan.coeffs, lo, hi)
        if buf is not dst:
            dst.copy_(buf)  # lo and hi are values of dst's dtype: rounding keeps [lo, hi]

    count = math.ceil(n / chunk)
    keyed.run_chunks(count, work, None if flat.device.type == "cpu" and n >= PARALLEL_THRESHOLD else 1)


def _choose_sampler(alpha: float, beta: float, compute: torch.dtype, mean: float, std: float, chunk: int, device,
                    elementwise: bool = False):
    if compute == torch.float32 and max(abs(alpha), abs(beta)) <= POLY_MAX_Z:
        plan = _poly_fit(alpha, beta, std)
        if plan is not None:
            return _PolySampler(plan, mean, chunk, device)
    mass = _normal_cdf(beta) - _normal_cdf(alpha) if alpha <= 0 else _normal_cdf(-alpha) - _normal_cdf(-beta)
    if mass >= 0.5 and not elementwise:  # rejection redraws some values: not a function of the index
        return functools.partial(_fill_rejection, mean=mean, std=std, a=mean + alpha * std, b=mean + beta * std)
    return functools.partial(_fill_inverse_cdf, alpha=alpha, beta=beta, mean=mean, std=std)


class _PolyPlan:
    """x = mean + y * H(s), s = k0 + k1 * log(1 - y^2), y ~ U[y_lo, y_hi], H a polynomial (low order first)."""

    def __init__(self, y_lo: float, y_hi: float, k0: float, k1: float, coeffs: list[float]):
        self.y_lo, self.y_hi, self.k0, self.k1, self.coeffs = y_lo, y_hi, k0, k1, coeffs


@functools.lru_cache(maxsize=256)  # a model has few distinct (bounds, std): fit each once
def _poly_fit(alpha: float, beta: float, std: float) -> _PolyPlan | None:
    """Fit H on the call's own range of w = -log(1 - y^2), or None if no degree <= 16 is accurate enough."""
    y_lo, y_hi = math.erf(alpha / math.sqrt(2.0)), math.erf(beta / math.sqrt(2.0))
    w_of = lambda y: -math.log1p(-y * y)  # noqa: E731
    w_hi = max(w_of(y_lo), w_of(y_hi))
    w_lo = 0.0 if y_lo <= 0.0 <= y_hi else min(w_of(y_lo), w_of(y_hi))
    centre, half = (w_hi + w_lo) / 2, (w_hi - w_lo) / 2

    def target(s: Tensor) -> Tensor:
        w = centre + half * s
        y = torch.sqrt(-torch.expm1(-w))
        ratio = torch.where(y > 0, torch.special.erfinv(y) / y, torch.full_like(y, math.sqrt(math.pi) / 2))
        return std * math.sqrt(2.0) * ratio

    check = torch.linspace(-1, 1, 513, dtype=torch.float64, device="cpu")
    want = target(check)
    for degree in range(0, POLY_MAX_DEGREE + 1):
        powers = torch.arange(degree + 1, dtype=torch.float64, device="cpu")
        nodes = torch.cos(math.pi * (powers + 0.5) / (degree + 1))  # Chebyshev points
        coeffs = torch.linalg.solve(nodes[:, None] ** powers, target(nodes))
        got = (check[:, None] ** powers) @ coeffs
        if float(((got - want) / want).abs().max()) < POLY_REL_TOL:
            # s = (w - centre) / half with w = -log(1 - y^2)
            k1 = -1.0 / half if half > 0 else 0.0
            k0 = -centre / half if half > 0 else 0.0
            return _PolyPlan(y_lo, y_hi, k0, k1, coeffs.tolist())
        if half == 0.0:
            break
    return None


class _PolySampler:
    """Fills float32 chunks by the fitted inverse CDF; scratch and constants are made once per call."""

    def __init__(self, plan: _PolyPlan, mean: float, chunk: int, device: torch.device):
        self.plan, self.mean_value = plan, mean
        const = lambda v: torch.tensor(v, dtype=torch.float32, device=device)  # noqa: E731
        self.one, self.k0, self.mean = const(1.0), const(plan.k0), const(mean)
        self.coeffs = [const(c) for c in plan.coeffs]

    def draw(self, y: Tensor, sampler: Sampler, start: int) -> None:
        """The random part: ``y ~ U[y_lo, y_hi]``."""
        sampler.uniform_(y, self.plan.y_lo, self.plan.y_hi, start=start)

    def transform(self, y: Tensor, out: Tensor) -> None:
        """The deterministic part: ``out = mean + y H(s(y))`` (``out`` may be ``y``)."""
        plan, c = self.plan, self.coeffs
        s, p = torch.empty_like(y), torch.empty_like(y)  # per call: chunks may run in several threads
        torch.addcmul(self.one, y, y, value=-1.0, out=s)  # 1 - y^2
        s.log_()
        torch.add(self.k0, s, alpha=plan.k1, out=s)  # s in [-1, 1]
        if len(c) == 1:
            p.fill_(plan.coeffs[0])
        else:
            torch.add(c[-2], s, alpha=plan.coeffs[-1], out=p)
            for coef in reversed(c[:-2]):  # Horner
                torch.addcmul(coef, p, s, out=p)
        torch.addcmul(self.mean, y, p, out=out)

    def __call__(self, buf: Tensor, sampler: Sampler, start: int) -> None:
        self.draw(buf, sampler, start)
        self.transform(buf, buf)


def _fill_rejection(
    buf: Tensor, sampler: Sampler, start: int, *, mean: float, std: float, a: float, b: float
) -> None:
    sampler.normal_(buf, mean, std, start=start)
    bad = torch.nonzero((buf < a) | (buf > b)).view(-1)
    while bad.numel():
        redraw = sampler.normal_(torch.empty(bad.numel(), dtype=buf.dtype, device=buf.device), mean, std)
        ok = (redraw >= a) & (redraw <= b)
        buf[bad[ok]] = redraw[ok]
        bad = bad[~ok]


def _fill_inverse_cdf(
    buf: Tensor, sampler: Sampler, start: int, *, alpha: float, beta: float, mean: float, std: float
) -> None:
    # Sample the side nearer -inf so ndtri works on small probabilities, where float64 is precise.
    flip = alpha > 0
    lo_z, hi_z = (-beta, -alpha) if flip else (alpha, beta)
    u = torch.empty(buf.shape, dtype=torch.float64, device=buf.device)
    sampler.uniform_(u, _normal_cdf(lo_z), _normal_cdf(hi_z), start=start)
    z = torch.special.ndtri(u).clamp_(lo_z, hi_z)
    buf.copy_(z.mul_(-std if flip else std).add_(mean))
