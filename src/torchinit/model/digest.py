"""A digest of a model's initial weights, to compare two runs at a glance.

``fingerprint(model)`` hashes every parameter's full value, with its qualified name, dtype
and shape, so two models get the same fingerprint exactly when every parameter is bit for
bit the same. Sharded parameters (DTensors: FSDP2, tensor parallel) are gathered with
``full_tensor()`` first, which is a collective: every rank must call ``fingerprint``, and
every rank gets the same digest.
"""

from __future__ import annotations

import ctypes
import hashlib

from torch import Tensor, nn

__all__ = ["fingerprint"]


def _full(t: Tensor) -> Tensor:
    full_tensor = getattr(t, "full_tensor", None)  # a DTensor: gather its shards (all ranks take part)
    return full_tensor() if callable(full_tensor) else t


def fingerprint(model: nn.Module, *, buffers: bool = False) -> str:
    r"""The SHA-256 (hex) of every parameter's qualified name, dtype, shape and bytes, in registration order.

    Tied parameters count under each name that holds them. Default ``buffers=False``:
    parameters only; ``buffers=True`` adds the buffers the same way.

    Example:
        >>> _ = torch.manual_seed(0); a = nn.Linear(4, 3)
        >>> _ = torch.manual_seed(0); b = nn.Linear(4, 3)
        >>> fingerprint(a) == fingerprint(b), len(fingerprint(a))
        (True, 64)
        >>> with torch.no_grad(): b.bias[0] += 1
        >>> fingerprint(a) == fingerprint(b)
        False
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module; got {type(model).__name__}")
    if not isinstance(buffers, bool):
        raise TypeError(f"buffers must be a bool; got {buffers!r}")
    named: list[tuple[str, Tensor]] = list(model.named_parameters(remove_duplicate=False))
    if buffers:
        named += [(f"buffer:{n}", b) for n, b in model.named_buffers(remove_duplicate=False)]
    meta = [n for n, t in named if t.is_meta]
    if meta:
        raise ValueError(
            f"model: {len(meta)} tensor(s) on the meta device have no values to fingerprint, e.g. {meta[0]!r}"
        )
    digest = hashlib.sha256()
    for name, tensor in named:
        value = _full(tensor.detach()).cpu().contiguous()
        header = f"{name}\0{value.dtype}\0{tuple(value.shape)}\0".encode()
        digest.update(len(header).to_bytes(8, "little") + header)
        size = value.numel() * value.element_size()
        digest.update(ctypes.string_at(value.data_ptr(), size) if size else b"")
    return digest.hexdigest()
