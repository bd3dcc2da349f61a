"""What a recording knows of ATen operations: storages and the tensors on them, and the kinds of operations.

Operations refer to storages, not to Python tensors: :func:`storage_key` is a storage's identity, shared by
its views and by ``.data``, and a :class:`TensorRef` is a tensor's place in its storage. The sets below sort
operations by name (the part of the schema name after ``aten::``), and the functions read an operation's
schema: which arguments it writes, and the value of each argument.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from torchinit.recording.inits import RECORDED_NAMES

__all__ = ["TensorRef", "UNDEFINED", "storage_key"]

#: In-place operations whose result does not depend on the tensor's previous values: when they
#: cover the whole storage, every earlier write to it is dead. The torch.nn.init functions recorded whole
#: (Recording.record_call: they return at once on meta tensors) are among them.
OVERWRITES = {
    "uniform_", "normal_", "fill_", "zero_", "copy_", "random_", "bernoulli_", "exponential_",
    "geometric_", "cauchy_", "log_normal_",
} | RECORDED_NAMES  # fmt: skip

#: Factories whose values are undefined (uninitialized memory).
UNDEFINED_FACTORIES = {"empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided", "empty_permuted"}

#: In-place operations that change a tensor's metadata (its storage, shape or strides), not values:
#: they run on meta while recording and need no replay, since operations refer to storages.
METADATA_OPS = {"set_", "resize_", "resize_as_", "as_strided_", "squeeze_", "unsqueeze_", "transpose_", "t_",
                "swapdims_", "swapaxes_", "_coalesced_"}  # fmt: skip

#: Random ops whose schema (or one of whose overloads) has no generator argument: replayed under a seeded global
#: RNG (see Recording.replay).
RANDOM_WITHOUT_GENERATOR = {"rand_like", "randn_like", "randint_like", "rand", "randn", "randint", "randperm",
                            "normal", "bernoulli", "multinomial", "poisson"}  # fmt: skip

#: In-place ops whose meta kernel torch 2.13 implements in Python (importing its meta registrations costs ~2 s on
#: first use): they are recorded without running on meta. They only fill values, so there is nothing to check.
META_SKIPPED = {"normal_", "uniform_", "erfinv_", "exponential_", "log_normal_", "geometric_", "cauchy_",
                "random_", "bernoulli_"}  # fmt: skip


def reads_only_metadata(name: str) -> bool:
    """Whether the factory ``name`` takes only the shape, dtype and device of its tensor arguments, never their values.

    ATen names these factories uniformly: ``*_like`` (``zeros_like``, ``full_like``, ``randn_like``, ...) make a
    tensor like their input, ``new_*`` (``new_zeros``, ``new_full``, ...) one on their input's dtype and device.
    """
    return name.endswith("_like") or name.startswith("new_")


def shape_stand_in(ref: TensorRef, device: torch.device) -> torch.Tensor:
    """An uninitialized tensor with ``ref``'s shape, strides and dtype on ``device``: what a factory that reads only
    metadata is given (its strides decide the result's, so they are kept; untouched pages of a CPU tensor cost no
    memory)."""
    return torch.empty_strided(ref.size, ref.stride, dtype=ref.dtype, device=device)


UNDEFINED = object()  # the value of a parameter created from uninitialized memory


def storage_key(t: torch.Tensor) -> int:
    """The identity of ``t``'s storage (shared by its views and by ``.data``)."""
    return t.untyped_storage()._cdata


@dataclass(frozen=True)
class TensorRef:
    """A meta tensor in the log: its storage and geometry (never the tensor, so parameters can die)."""

    key: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int
    dtype: torch.dtype
    nbytes: int  # of the whole storage

    @classmethod
    def of(cls, t: torch.Tensor) -> TensorRef:
        return cls(storage_key(t), tuple(t.shape), tuple(t.stride()), int(t.storage_offset()), t.dtype,
                   t.untyped_storage().nbytes())  # fmt: skip

    def covers_storage(self) -> bool:
        """Whether the tensor spans every byte of its storage exactly once."""
        numel = 1
        for s in self.size:
            numel *= s
        if numel * self.dtype.itemsize != self.nbytes or self.offset != 0:
            return False
        expected = 1  # dense and non-overlapping: sorted strides form a contiguous layout
        for size, stride in sorted(zip(self.size, self.stride), key=lambda p: p[1]):
            if size != 1 and stride != expected:
                return False
            expected *= size
        return True


def op_name(func: Any) -> str:
    """An ATen operation's name without its namespace and overload: ``aten.normal_.default`` -> ``normal_``."""
    return str(func._schema.name.split("::")[-1])


def mutated(schema: Any) -> tuple[int, ...]:
    """The positions (in schema order) of the arguments an op writes."""
    return tuple(i for i, a in enumerate(schema.arguments) if a.alias_info is not None and a.alias_info.is_write)


def bind(schema: Any, args: tuple, kwargs: dict) -> list[Any]:
    """The value of each schema argument, in schema order (defaults as None)."""
    values = []
    for i, a in enumerate(schema.arguments):
        if i < len(args):
            values.append(args[i])
        else:
            values.append(kwargs.get(a.name))
    return values


def returns_alias(schema: Any) -> list[bool]:
    """For each value an op returns, whether it is one of its arguments (an op that returns nothing: [True])."""
    return [r.alias_info is not None for r in schema.returns] or [True]


def tensors(value: Any, found: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """The tensors in an op's arguments or results, in order (ATen nests only tuples, lists and dicts)."""
    found = [] if found is None else found
    if isinstance(value, torch.Tensor):
        found.append(value)
    elif isinstance(value, (tuple, list)):
        for v in value:
            tensors(v, found)
    elif isinstance(value, dict):
        for v in value.values():
            tensors(v, found)
    return found


def meta_keys(value: Any) -> set[int]:
    """The storages of the meta tensors in ``value``."""
    return {storage_key(t) for t in tensors(value) if t.is_meta}


def ref_or_value(x: Any) -> Any:
    """An op's argument as the log holds it: a meta tensor by reference, a real one by value, the rest as it is."""
    if isinstance(x, torch.Tensor):  # a real tensor is taken by value: construction may change it later
        return TensorRef.of(x) if x.is_meta else x.detach().clone()
    return x


def on_meta(x: Any) -> Any:
    """A real tensor argument as a meta tensor (for a meta kernel's checks); anything else as it is."""
    if isinstance(x, torch.Tensor) and not x.is_meta and x.dim() > 0:
        return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device="meta")
    return x


def device_is_meta(kwargs: dict) -> bool:
    """Whether an op's keyword arguments ask for the meta device (a factory that makes a meta tensor)."""
    device = kwargs.get("device")
    return device is not None and torch.device(device).type == "meta"
