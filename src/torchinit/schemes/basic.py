"""Elementary fills with torch.nn.init's signatures: uniform, normal, constants, identities.

Each is bit-identical to its ``torch.nn.init`` twin given the same generator
(the same RNG call on the same tensor), and follows the contract of
:mod:`torchinit._util.checks`: validated first, a no-op on zero-element and meta
tensors, no autograd history, NumPy arrays in place.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import Tensor

from torchinit._util.checks import (
    NORMAL_REACH,
    as_tensor,
    finite,
    float_tensor,
    is_bool,
    is_real,
    non_negative,
    nothing_to_write,
    positive_int,
    within_dtype,
)
from torchinit._util.tensors import write_pattern
from torchinit.rng.sampling import make_sampler, real_dtype
from torchinit.schemes.contract import scheme

__all__ = ["uniform_", "normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_", "identity_"]


@scheme(local=real_dtype)
def uniform_(
    tensor: Tensor, a: float = 0.0, b: float = 1.0, generator: torch.Generator | None = None, *,
    seed: int | None = None, name: str = "",
) -> Tensor:
    r"""Fill ``tensor`` from the uniform distribution :math:`\mathcal{U}(a, b)`.

    Defaults: ``a=0``, ``b=1``. Requires ``a < b``. ``generator`` draws from torch's RNG
    (bit-identical to ``torch.nn.init.uniform_``); ``seed`` (keyword-only, with ``name``)
    draws from the keyed stream of ``(seed, name)`` instead (:mod:`torchinit.rng.keyed`), so
    the values are a function of ``(seed, name, shape)`` alone; not both.

    Example:
        >>> w = uniform_(torch.empty(3, 5), -0.1, 0.1)
        >>> bool(w.abs().max() <= 0.1)
        True
    """
    t = float_tensor(tensor)
    sampler = make_sampler(generator, seed, name, t)
    a, b = finite("a", a), finite("b", b)
    if not a < b:
        raise ValueError(f"a must be less than b; got a={a}, b={b}")
    within_dtype("a, b", max(abs(a), abs(b), b - a), t.dtype)
    if not nothing_to_write(t):
        with torch.no_grad():
            sampler.fill(t, "uniform_", a, b)
    return tensor


@scheme(local=real_dtype)
def normal_(
    tensor: Tensor, mean: float = 0.0, std: float = 1.0, generator: torch.Generator | None = None, *,
    seed: int | None = None, name: str = "",
) -> Tensor:
    r"""Fill ``tensor`` from the normal distribution :math:`\mathcal{N}(\text{mean}, \text{std}^2)`.

    Defaults: ``mean=0``, ``std=1``. Requires ``std >= 0``. ``generator`` or ``seed``
    (with ``name``) as in :func:`uniform_`.

    Example:
        >>> w = normal_(torch.empty(1000, 1000), std=0.02, generator=torch.Generator().manual_seed(0))
        >>> round(w.std().item(), 3)
        0.02
    """
    t = float_tensor(tensor)
    sampler = make_sampler(generator, seed, name, t)
    mean, std = finite("mean", mean), non_negative("std", std)
    within_dtype("mean, std", abs(mean) + NORMAL_REACH * std, t.dtype)
    if not nothing_to_write(t):
        with torch.no_grad():
            sampler.fill(t, "normal_", mean, std)
    return tensor


@scheme(dtensor_wrapper=False)
def constant_(tensor: Tensor, val: float) -> Tensor:
    r"""Fill ``tensor`` with the value ``val``: :math:`w_{ij\ldots} = \text{val}`.

    Works on any dtype (integer buffers included), as in torch.

    Example:
        >>> constant_(torch.empty(2, 3), 0.3)
        tensor([[0.3000, 0.3000, 0.3000],
                [0.3000, 0.3000, 0.3000]])
    """
    t = as_tensor(tensor)
    _check_fill_value(val, t.dtype)
    if not nothing_to_write(t):
        with torch.no_grad():
            t.fill_(val)
    return tensor


def _check_fill_value(val: Any, dtype: torch.dtype, name: str = "val") -> None:
    """``val`` must be exactly representable in kind and range by ``dtype``: a bool for bool tensors, an
    integral value in range for integer ones, a finite value within the dtype's range for floating ones."""
    number = _plain_number(val)
    if dtype == torch.bool:
        _check_bool_fill(number, val, name)
        return
    for part in _real_parts(number, val, dtype, name):
        if dtype.is_floating_point or dtype.is_complex:
            _check_float_fill(part, val, dtype, name)
        else:
            _check_integer_fill(part, val, dtype, name)


def _plain_number(val: Any) -> Any:
    """A one-element tensor or a NumPy scalar as the Python number it holds; anything else as it is."""
    number = val.item() if isinstance(val, Tensor) and val.numel() == 1 else val
    if type(number).__module__ == "numpy" and hasattr(number, "item"):
        number = number.item()  # Python numbers: NumPy's abs() of its smallest int64 overflows
    return number


def _check_bool_fill(number: Any, val: Any, name: str) -> None:
    if not (is_bool(number) or (is_real(number) and number in (0, 1))):
        raise ValueError(f"{name} must be a bool (or 0/1) for a torch.bool tensor; got {val!r}")


def _real_parts(number: Any, val: Any, dtype: torch.dtype, name: str) -> tuple[Any, ...]:
    """The parts of ``number`` to check against ``dtype``: real and imaginary for a complex number, else itself."""
    if is_bool(number) or not isinstance(number, numbers.Number):
        raise TypeError(f"{name} must be a number; got {type(val).__name__}")
    if isinstance(number, numbers.Complex) and not isinstance(number, numbers.Real):
        if not dtype.is_complex:
            raise TypeError(f"{name} is complex but the tensor's dtype is {dtype}")
        return (number.real, number.imag)
    return (number,)


def _check_float_fill(part: Any, val: Any, dtype: torch.dtype, name: str) -> None:
    limit = torch.finfo(dtype).max
    if not (abs(part) <= limit and math.isfinite(part)):  # abs first: an int too large for a float
        raise ValueError(f"{name} must be finite and within {dtype}'s range (±{limit:.4g}); got {val!r}")


def _check_integer_fill(part: Any, val: Any, dtype: torch.dtype, name: str) -> None:
    info = torch.iinfo(dtype)
    integral = isinstance(part, numbers.Integral) or (math.isfinite(part) and float(part).is_integer())
    if not (integral and info.min <= part <= info.max):
        raise ValueError(f"{name} must be an integer in [{info.min}, {info.max}] for a {dtype} tensor; got {val!r}")


@scheme(dtensor_wrapper=False)
def ones_(tensor: Tensor) -> Tensor:
    r"""Fill ``tensor`` with ones: :math:`w_{ij\ldots} = 1`.

    Example:
        >>> ones_(torch.empty(2, 3))
        tensor([[1., 1., 1.],
                [1., 1., 1.]])
    """
    return constant_(tensor, 1)


@scheme(dtensor_wrapper=False)
def zeros_(tensor: Tensor) -> Tensor:
    r"""Fill ``tensor`` with zeros: :math:`w_{ij\ldots} = 0`.

    Example:
        >>> zeros_(torch.empty(2, 3))
        tensor([[0., 0., 0.],
                [0., 0., 0.]])
    """
    return constant_(tensor, 0)


@scheme()
def eye_(tensor: Tensor) -> Tensor:
    r"""Fill a 2-D ``tensor`` with the identity: :math:`w_{ij} = [i = j]`.

    Rectangular weights keep as many inputs as possible, as in torch.

    Example:
        >>> eye_(torch.empty(2, 3))
        tensor([[1., 0., 0.],
                [0., 1., 0.]])
    """
    t = as_tensor(tensor)
    if t.dim() != 2:
        raise ValueError(f"tensor must have 2 dims for eye_; got {t.dim()} (shape {tuple(t.shape)})")
    return _channel_identity(tensor, 1, 1)


@scheme()
def dirac_(tensor: Tensor, groups: int = 1) -> Tensor:
    r"""Fill a 3-, 4- or 5-D conv weight with the Dirac delta: identity at the kernel centre.

    :math:`w[g\,o + d,\ d,\ \lfloor k/2 \rfloor\ldots] = 1` for each group ``g`` and
    ``d < min(out/groups, in)``; every other entry is 0. Default ``groups=1``.

    Example:
        >>> w = dirac_(torch.empty(24, 8, 3, 3), groups=3)
        >>> w[:, :, 1, 1].sum().item(), w.sum().item()  # 3 groups x 8 channels, all at the centre tap
        (24.0, 24.0)
    """
    t = as_tensor(tensor)
    if t.dim() not in (3, 4, 5):
        raise ValueError(f"tensor must have 3, 4 or 5 dims for dirac_; got {t.dim()} (shape {tuple(t.shape)})")
    return _channel_identity(tensor, groups, 1)


@scheme()
def identity_(tensor: Tensor, gain: float = 1.0, *, groups: int = 1) -> Tensor:
    r"""Fill a 2- to 5-D weight with the (partial) identity times ``gain``, square or not.

    For each group ``g`` of ``out/groups`` outputs and ``in`` inputs (the weight's dim 1),
    :math:`w[g\,o + d,\ d,\ c] = \text{gain}` for ``d < min(out/groups, in)``, at the kernel's
    centre tap ``c = (k // 2, ...)`` for conv weights; every other entry is 0. So the first
    ``min(in, out)`` channels pass through unchanged (times ``gain``) and the rest are
    zero: extra outputs start dead and extra inputs are dropped. For torch's exact
    behaviour use :func:`eye_` (2-D) and :func:`dirac_` (conv); ``identity_`` is both, with
    a gain. Defaults: ``gain=1``, ``groups=1``.

    Example:
        >>> identity_(torch.empty(3, 2), gain=0.5)
        tensor([[0.5000, 0.0000],
                [0.0000, 0.5000],
                [0.0000, 0.0000]])
        >>> w = identity_(torch.empty(8, 4, 3, 3))  # 4 channels pass through at the centre tap
        >>> w[:4, :, 1, 1].equal(torch.eye(4)), int(w.count_nonzero())
        (True, 4)
    """
    t = as_tensor(tensor)
    if t.dim() not in (2, 3, 4, 5):
        raise ValueError(f"tensor must have 2 to 5 dims for identity_; got {t.dim()} (shape {tuple(t.shape)})")
    return _channel_identity(tensor, groups, finite("gain", gain))


def _channel_identity(tensor: Tensor, groups: int, value: float) -> Tensor:
    """Zero ``tensor`` and put ``value`` on each group's channel diagonal, at the kernel centre."""
    t = as_tensor(tensor)
    groups = positive_int("groups", groups)
    if t.shape[0] % groups:
        raise ValueError(f"groups={groups} must divide dim 0 of the tensor (size {t.shape[0]})")
    _check_fill_value(value, t.dtype, "gain")
    if nothing_to_write(t):
        return tensor
    per_group = t.shape[0] // groups
    d = torch.arange(min(per_group, t.shape[1]), device=t.device)
    rows = (torch.arange(groups, device=t.device)[:, None] * per_group + d[None, :]).reshape(-1)
    cols = d.repeat(groups)
    diagonal_at_centre: tuple[Any, ...] = (rows, cols, *(s // 2 for s in t.shape[2:]))
    write_pattern(t, diagonal_at_centre, value)
    return tensor
