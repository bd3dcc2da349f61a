"""Argument checks and the in-place target contract shared by every initializer.

This is the lowest module of the package: it imports nothing from torchinit.
Every public initializer follows the same contract, implemented here once:

* the target is a ``torch.Tensor`` (``nn.Parameter`` included) or a NumPy float
  array, which is viewed zero-copy through :func:`torch.from_numpy`;
* all arguments are validated before anything is written, so a call that
  raises leaves the tensor bit-for-bit unchanged;
* zero-element and meta tensors are returned untouched;
* writes happen under ``torch.no_grad()`` so parameters get no autograd history.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import sys
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

__all__: list[str] = []


def choice(name: str, value: Any, valid: Iterable[str], *, fold_case: bool = False) -> str:
    """Return ``value`` if it is one of ``valid``, else raise a ValueError naming ``name``.

    With ``fold_case`` the comparison ignores case (torch lowercases ``mode``) and the
    lowercase value is returned.
    """
    valid = tuple(valid)
    if isinstance(value, str) and fold_case:
        value = value.lower()
    if not isinstance(value, str) or value not in valid:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, valid))}; got {value!r}")
    return value


def is_bool(value: Any) -> bool:
    """A Python or NumPy bool."""
    if isinstance(value, bool):
        return True
    if _compiling():  # torch 2.1's Dynamo cannot look at a module or a type's module name here
        return False
    numpy = sys.modules.get("numpy")  # a NumPy bool exists only once NumPy is imported (None: hidden)
    return numpy is not None and isinstance(value, numpy.bool_)


def is_real(value: Any) -> bool:
    """A real number that is not a bool: Python ints and floats, NumPy integers and floats."""
    return isinstance(value, numbers.Real) and not is_bool(value)


def is_integral(value: Any) -> bool:
    """An integer that is not a bool: Python ints and NumPy integers."""
    return isinstance(value, numbers.Integral) and not is_bool(value)


def positive_int(name: str, value: Any) -> int:
    """``value`` as a Python int >= 1 (NumPy integers accepted), else a ValueError naming ``name``."""
    if not is_integral(value) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}")
    return int(value)


def real_number(name: str, value: Any) -> float:
    """Return ``value`` as a float; bools, non-numbers and NaN raise.

    Accepts Python and NumPy reals and one-element real tensors.
    """
    if not is_real(value):
        if isinstance(value, Tensor) and value.numel() == 1 and not value.dtype.is_complex \
                and value.dtype != torch.bool:
            value = value.item()
        else:
            raise TypeError(f"{name} must be a real number; got {type(value).__name__}")
    try:
        value = float(value)
    except OverflowError:  # an int beyond float's range
        raise ValueError(f"{name} is too large for a float; got {value}") from None
    if math.isnan(value):
        raise ValueError(f"{name} must not be NaN")
    return value


def finite(name: str, value: Any) -> float:
    value = real_number(name, value)
    if math.isinf(value):
        raise ValueError(f"{name} must be finite; got {value}")
    return value


def non_negative(name: str, value: Any) -> float:
    value = finite(name, value)
    if value < 0:
        raise ValueError(f"{name} must be >= 0; got {value}")
    return value


def is_numpy_array(x: Any) -> bool:
    # Checked by module name so NumPy stays an optional dependency.
    return type(x).__module__ == "numpy" and type(x).__name__ == "ndarray"


def as_tensor(target: Any, name: str = "tensor", *, write: bool = True) -> Tensor:
    """The torch view of an initializer's target (zero-copy for NumPy arrays).

    With ``write`` (the default: the caller is about to fill it) a view whose elements
    share memory (``expand()``, stride 0, overlapping ``as_strided``) is refused: writing
    through it would give several elements one value.
    """
    if isinstance(target, Tensor):
        t = target
        if write and not _compiling() and t.is_inference() and not torch.is_inference_mode_enabled():
            raise ValueError(
                f"{name} was created under torch.inference_mode() and can be written only inside it; "
                "initialize it inside inference_mode, or clone() it outside"
            )
    elif is_numpy_array(target):
        if not target.flags.writeable:
            raise ValueError(f"{name} is a read-only NumPy array; it cannot be initialized in place")
        if target.dtype.kind not in "fc":
            raise TypeError(f"{name} must be a floating-point array; got NumPy dtype {target.dtype}")
        try:
            t = torch.from_numpy(target)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name}: this NumPy array cannot be viewed by torch in place ({err})") from None
    else:
        raise TypeError(f"{name} must be a torch.Tensor or a NumPy array; got {type(target).__name__}")
    if write and overlapping(t):
        raise ValueError(
            f"{name} is a view whose elements share memory (stride 0, e.g. from expand(), or an overlapping "
            f"as_strided: shape {tuple(t.shape)}, strides {t.stride()}); initialize a tensor with its own "
            "storage (.clone() it first)"
        )
    return t


def overlapping(t: Tensor) -> bool:
    """Whether two elements of ``t`` share memory (a stride-0 dim of size > 1, or an overlapping layout)."""
    if t.layout != torch.strided or t.numel() <= 1:
        return False
    verdict = 2  # 0: no, 1: yes, 2: too hard to tell (then the stride rule below decides)
    if not _compiling():  # torch.compile cannot trace a torch function that returns an int
        with contextlib.suppress(AttributeError, RuntimeError):  # older or exotic tensors
            verdict = torch._debug_has_internal_overlap(t)
    if verdict != 2:
        return verdict == 1
    reach = 0  # dims by increasing stride: each must step past everything the smaller ones span
    for stride, size in sorted((st, sz) for st, sz in zip(t.stride(), t.shape) if sz > 1):
        if stride <= reach:
            return True
        reach += stride * (size - 1)
    return False


def check_generator(generator: Any, t: Tensor, name: str = "generator") -> None:
    """``generator`` is None or a ``torch.Generator`` on ``t``'s device type (any device for meta tensors)."""
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator or None; got {type(generator).__name__}")
    if not t.is_meta and generator.device.type != t.device.type:
        raise ValueError(f"{name} is on {generator.device}, the tensor on {t.device}: they must be on one device type")


def _compiling() -> bool:
    """Whether torch.compile is tracing this call. torch 2.1 and 2.2 have no ``torch.compiler.is_compiling``: Dynamo
    itself says, and it is imported whenever it traces (so it is never imported here)."""
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling"):
        return bool(compiler.is_compiling())
    if "torch._dynamo" not in sys.modules:  # (written so that torch 2.1's Dynamo can trace it)
        return False
    return bool(sys.modules["torch._dynamo"].is_compiling())


#: No normal draw exceeds this many std: Box-Muller from 53-bit uniforms reaches sqrt(2 * 53 * ln 2) ~ 8.6.
NORMAL_REACH = 9.0


def within_dtype(name: str, bound: float, dtype: torch.dtype) -> None:
    """Values up to ``bound`` in magnitude must be finite in ``dtype``, else a ValueError naming ``name``."""
    if not (dtype.is_floating_point or dtype.is_complex):
        return
    limit = torch.finfo(dtype).max
    if not (math.isfinite(bound) and bound <= limit):
        raise ValueError(f"{name}: values up to {bound:.4g} would overflow {dtype} (largest finite {limit:.4g})")


def finite_gain(gain: Any, dtype: torch.dtype) -> float:
    """``gain`` as a finite float whose magnitude ``dtype`` holds (a gain that multiplies unit-scale values)."""
    gain = finite("gain", gain)
    within_dtype("gain", abs(gain), dtype)
    return gain


def float_tensor(target: Any, name: str = "tensor", *, complex_ok: bool = True) -> Tensor:
    """``as_tensor`` (for writing) plus a floating-point (optionally complex) dtype check."""
    t = as_tensor(target, name)
    if t.dtype.is_floating_point or (complex_ok and t.dtype.is_complex):
        return t
    kinds = "floating-point or complex" if complex_ok else "real floating-point"
    raise TypeError(f"{name} must have a {kinds} dtype; got {t.dtype}")


def nothing_to_write(t: Tensor) -> bool:
    """Zero-element and meta tensors have no values to initialize: the call is a no-op."""
    return t.numel() == 0 or t.is_meta
