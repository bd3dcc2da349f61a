"""The neighbouring floating-point value in any float dtype, on every supported torch. Imports only torch.

``torch.nextafter`` has no half-precision kernel on the CPU before torch 2.2 ("nextafter_cpu" not implemented for
'Half'), so for 16-bit floats the step is taken on the bits: IEEE floats of one sign are ordered as their
magnitudes' bit patterns, so the next value up or down is the pattern one step away in the signed order.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["next_float"]

#: 16-bit floats: the sign bit and the magnitude's bits.
_SIGN16, _MAGNITUDE16 = 0x8000, 0x7FFF


def next_float(value: Tensor, *, up: bool) -> Tensor:
    """The next representable value of ``value``'s dtype above (``up=True``) or below it, elementwise: IEEE 754's
    ``nextUp``/``nextDown``, which is ``torch.nextafter(value, ±inf)`` where torch has the kernel.

    Infinities step to the largest finite value (``nextDown(inf)``) or stay (``nextUp(inf) == inf``), NaN stays
    NaN, and both zeros step to the smallest subnormal of the direction's sign.

    Example:
        >>> next_float(torch.tensor([1.0], dtype=torch.float16), up=True)
        tensor([1.0010], dtype=torch.float16)
    """
    if value.element_size() != 2:
        limit = torch.full_like(value, float("inf") if up else float("-inf"))
        return torch.nextafter(value, limit)
    bits = value.view(torch.int16).to(torch.int32) & 0xFFFF
    magnitude = bits & _MAGNITUDE16
    order = torch.where(bits >= _SIGN16, -magnitude, magnitude)  # -0 and +0 share 0; the order is monotone
    order = order + (1 if up else -1)
    stepped = torch.where(order < 0, _SIGN16 | -order, order)
    stepped = torch.where((order == 0) & (bits >= _SIGN16), _SIGN16, stepped)  # up from -tiny is -0, as in C
    stepped = stepped - ((stepped >= _SIGN16).to(torch.int32) << 16)  # back into int16's range, same bits
    result = stepped.to(torch.int16).view(value.dtype)
    # NaN stays NaN; an infinity in the direction of the step stays where it is
    keep = value.isnan() | (value == (float("inf") if up else float("-inf")))
    return torch.where(keep, value, result)
