r"""Gains: the factor that keeps the signal's scale through a nonlinearity.

For torch's own names, :func:`calculate_gain` returns exactly what
``torch.nn.init.calculate_gain`` returns (drop-in parity). For any other
activation it returns the variance-preserving gain

.. math::

    \text{gain}(f) = \frac{1}{\sqrt{\mathbb{E}_{z \sim \mathcal{N}(0, 1)}[f(z)^2]}}

so that ``Var(W f(z)) = Var(z)`` when ``Var(W) = gain^2 / fan_in``: a layer
``y = W f(x)`` with ``x ~ N(0, 1)`` keeps ``E[y^2] = fan_in Var(W) E[f(x)^2] = 1``.
For ReLU this gives ``sqrt(2)``, He et al. (2015). The expectation is computed
by composite Gauss-Legendre quadrature on [-12, 12] (panel edges on every
multiple of 1/4, where the kinks of the piecewise activations lie), which
reaches a relative error far below 1e-4 (see ``docs/gain.md``).
"""

from __future__ import annotations

import contextlib
import functools
import math
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchinit._util.checks import finite, is_real

__all__ = ["calculate_gain", "variance_gain", "ACTIVATIONS", "TORCH_NONLINEARITIES"]

Nonlinearity = str | nn.Module | Callable[[Tensor], Tensor]

#: Names with torch's own gain values (kept bit-exact for drop-in parity).
TORCH_NONLINEARITIES = (
    "linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "sigmoid", "tanh", "relu", "leaky_relu", "selu",
)  # fmt: skip


def _with_param(fn: Callable[..., Tensor], keyword: str, default: Any) -> Callable[[Tensor, Any], Tensor]:
    return lambda x, p: fn(x, **{keyword: default if p is None else p})


def _no_param(fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor, Any], Tensor]:
    return lambda x, p: fn(x)


#: torch.nn.functional activations with a computed gain; ``param`` is the keyword named here.
ACTIVATIONS: dict[str, tuple[Callable[[Tensor, Any], Tensor], str | None]] = {
    "gelu": (_with_param(F.gelu, "approximate", "none"), "approximate ('none' or 'tanh')"),
    "silu": (_no_param(F.silu), None),
    "swish": (_no_param(F.silu), None),
    "mish": (_no_param(F.mish), None),
    "elu": (_with_param(F.elu, "alpha", 1.0), "alpha"),
    "celu": (_with_param(F.celu, "alpha", 1.0), "alpha"),
    "softplus": (_with_param(F.softplus, "beta", 1.0), "beta"),
    "hardswish": (_no_param(F.hardswish), None),
    "hardsigmoid": (_no_param(F.hardsigmoid), None),
    "hardtanh": (_no_param(F.hardtanh), None),
    "relu6": (_no_param(F.relu6), None),
    "logsigmoid": (_no_param(F.logsigmoid), None),
    "softsign": (_no_param(F.softsign), None),
    "tanhshrink": (_no_param(F.tanhshrink), None),
    "softshrink": (_with_param(F.softshrink, "lambd", 0.5), "lambd"),
    "hardshrink": (_with_param(F.hardshrink, "lambd", 0.5), "lambd"),
    "sin": (_no_param(torch.sin), None),
    "identity": (_no_param(lambda x: x), None),
}


def calculate_gain(nonlinearity: Nonlinearity, param: int | float | str | None = None) -> float:
    r"""Return the recommended gain for a nonlinearity.

    torch's names keep torch's values (linear/conv*/sigmoid 1, tanh 5/3,
    relu :math:`\sqrt{2}`, leaky_relu :math:`\sqrt{2/(1+s^2)}` with slope
    ``param`` (default 0.01), selu 3/4). Anything else gets the
    variance-preserving gain :math:`1/\sqrt{E[f(z)^2]}`, :math:`z \sim N(0,1)`:

    * a name from :data:`ACTIVATIONS` (``gelu``, ``silu``, ``mish``, ``elu``,
      ``softplus``, ``hardswish``, ...), with ``param`` as that activation's
      parameter (``elu`` alpha, ``softplus`` beta, ``gelu`` approximate, ...);
    * an ``nn.Module`` instance (e.g. ``nn.GELU()``);
    * any callable on float tensors.

    Computed gains are cached: names by value, torch.nn's stateless activations by
    type and repr, other modules and callables by identity (recomputed when a plain
    attribute changed).

    Args:
        nonlinearity: a name, a module or a callable.
        param: the nonlinearity's parameter, for names only (default: None).

    Returns:
        The gain, a float.

    Example:
        >>> calculate_gain("leaky_relu", 0.2)
        1.3867504905630728
        >>> round(calculate_gain("gelu"), 4)
        1.5335
        >>> round(calculate_gain(nn.SiLU()), 4)
        1.6765
    """
    if isinstance(nonlinearity, str):
        nonlinearity = nonlinearity.lower()  # names are matched case-insensitively
        if nonlinearity in TORCH_NONLINEARITIES:
            return _torch_gain(nonlinearity, param)
        if nonlinearity in ACTIVATIONS:
            _, keyword = ACTIVATIONS[nonlinearity]
            if param is not None and keyword is None:
                raise ValueError(f"param: {nonlinearity!r} takes no parameter; got {param!r}")
            return _named_gain(nonlinearity, param)
        valid = ", ".join(map(repr, TORCH_NONLINEARITIES + tuple(ACTIVATIONS)))
        raise ValueError(
            f"nonlinearity must be one of {valid}, an nn.Module or a callable; got {nonlinearity!r}"
        )
    if not callable(nonlinearity):
        raise TypeError(f"nonlinearity must be a name, an nn.Module or a callable; got {type(nonlinearity).__name__}")
    if param is not None:
        raise ValueError("param applies to named nonlinearities only; configure the module or callable instead")
    return _callable_gain(nonlinearity)


def _torch_gain(name: str, param: Any) -> float:
    if name == "tanh":
        return 5.0 / 3
    if name == "relu":
        return math.sqrt(2.0)
    if name == "leaky_relu":
        if param is None:
            slope = 0.01
        elif is_real(param):
            slope = finite("param (negative_slope)", param)
        else:
            raise ValueError(f"param: negative_slope must be a number; got {param!r}")
        return math.sqrt(2.0 / (1 + slope * slope))  # slope * slope: inf for huge slopes, where ** raises
    if name == "selu":
        return 3.0 / 4  # torch's empirical value (pytorch PR #50664)
    return 1.0


@functools.cache
def _named_gain(name: str, param: Any) -> float:
    fn, _ = ACTIVATIONS[name]
    return variance_gain(lambda x: fn(x, param))


#: Gains of callables and of modules other than torch's own, by identity: (their state when computed, gain).
_callable_cache: weakref.WeakKeyDictionary[Any, tuple[Any, float]] = weakref.WeakKeyDictionary()
#: Gains of torch.nn's stateless activations by (type, repr): their repr names every setting.
_module_cache: dict[tuple[type, str], float] = {}


def _callable_gain(f: Callable[[Tensor], Tensor]) -> float:
    if isinstance(f, nn.Module):
        if next(f.parameters(), None) is not None or next(f.buffers(), None) is not None:
            return variance_gain(f)  # learned state: computed every time
        if type(f).__module__.startswith("torch.nn."):
            key = (type(f), repr(f))
            if key not in _module_cache:
                _module_cache[key] = variance_gain(f)
            return _module_cache[key]
    state = _state(f)
    try:
        cached = _callable_cache[f]
        if cached[0] == state:
            return cached[1]
    except (KeyError, TypeError):
        pass
    gain = variance_gain(f)
    with contextlib.suppress(TypeError):  # not weak-referenceable (e.g. a builtin): no cache
        _callable_cache[f] = (state, gain)
    return gain


def _state(f: Any) -> Any:
    """What a cached gain of ``f`` depends on besides its code: a module's repr and the plain values among its
    attributes (a user's activation may keep a scale out of its repr), so a changed setting is recomputed."""
    plain = (bool, int, float, complex, str, type(None))
    attributes = tuple(sorted((k, v) for k, v in getattr(f, "__dict__", {}).items() if isinstance(v, plain)))
    return (repr(f) if isinstance(f, nn.Module) else None, attributes)


@functools.lru_cache(maxsize=1)
def _quadrature() -> tuple[Tensor, Tensor]:
    """Nodes and weights (float64) for integrals against the standard normal density."""
    order = 12  # Gauss-Legendre points per panel
    k = torch.arange(1, order, dtype=torch.float64)
    beta = k / torch.sqrt(4 * k * k - 1)
    jacobi = torch.diag(beta, 1) + torch.diag(beta, -1)  # Golub-Welsch
    nodes, vecs = torch.linalg.eigh(jacobi)
    weights = 2 * vecs[0] ** 2
    edges = torch.arange(-48, 49, dtype=torch.float64) / 4  # panels of width 1/4 on [-12, 12]
    half = (edges[1:] - edges[:-1]) / 2
    mid = (edges[1:] + edges[:-1]) / 2
    z = (mid[:, None] + half[:, None] * nodes[None, :]).reshape(-1)
    w = (half[:, None] * weights[None, :]).reshape(-1)
    w = w * torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return z, w


def second_moment(f: Callable[[Tensor], Tensor]) -> float:
    """``E[f(z)^2]`` for ``z ~ N(0, 1)``, by quadrature (float64 where ``f`` allows it)."""
    z, w = _quadrature()
    with torch.no_grad():
        try:
            y = f(z.clone())
        except (RuntimeError, TypeError):  # e.g. a module with float32 parameters
            try:
                y = f(z.float())
            except (RuntimeError, TypeError) as err:  # not an elementwise map of a 1-D tensor (an nn.Linear, ...)
                raise TypeError(
                    f"nonlinearity must map a 1-D float tensor to a tensor of the same shape; calling it failed: {err}"
                ) from None
    if not isinstance(y, Tensor) or y.shape != z.shape:
        raise TypeError("nonlinearity must map a 1-D float tensor to a tensor of the same shape")
    return float((w * y.double() ** 2).sum())


def variance_gain(f: Callable[[Tensor], Tensor]) -> float:
    r"""The variance-preserving gain :math:`1/\sqrt{E[f(z)^2]}` of ``f``, :math:`z \sim N(0, 1)`.

    Example:
        >>> round(variance_gain(torch.relu), 6)  # sqrt(2)
        1.414214
    """
    m2 = second_moment(f)
    if not math.isfinite(m2) or m2 <= 0:
        raise ValueError(f"nonlinearity: E[f(z)^2] = {m2}; a gain needs a finite, positive second moment")
    return finite("gain", 1.0 / math.sqrt(m2))
