r"""The one sampling layer: every random draw of every initializer goes through a :class:`Sampler`.

A scheme never asks where its randomness comes from. It is handed a sampler and calls
``sampler.normal_(buf, mean, std)``, ``sampler.uniform_(buf, low, high)``,
``sampler.coin_flips(count, device)`` or ``sampler.child(k)`` (an independent sampler
for a second random quantity, such as sparse's zero pattern). There are two samplers:

* :class:`GeneratorSampler`: torch's RNG, a ``torch.Generator`` or the global one
  (``generator=``). Draws are sequential, exactly the calls torch makes, so every
  function stays bit-identical to its ``torch.nn.init`` twin.
* :class:`KeyedSampler`: the counter-based stream of :mod:`torchinit.rng.keyed` named by
  ``(seed, name)`` (``seed=``, ``name=``). Element ``i`` of the target gets a value that
  is a pure function of ``(seed, name, i)``, so any part of a tensor (a DTensor's local
  shard, a chunk in another thread) is generated without the rest, and the values never
  depend on the device, the call order or the world size.

:func:`make_sampler` turns a public call's ``generator``, ``seed`` and ``name`` into one.

Sharded tensors (``torch.distributed.tensor.DTensor``). :func:`shardable` wraps each
public initializer. With ``seed=`` and a scheme whose values are element-wise (the
real normal, uniform and truncated normal families), each rank generates only its
local shard: :meth:`KeyedSampler.target` maps the shard's elements to their global
row-major indices (:class:`Region`). Every other case (a scheme that needs the whole
matrix, such as orthogonal; ``generator=``; complex dtypes) computes the whole tensor on
each rank and keeps the local part, which costs one full-size temporary per rank.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from torchinit._util.checks import check_generator
from torchinit.rng import keyed

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor

__all__ = [
    "Sampler", "GeneratorSampler", "KeyedSampler", "Region", "make_sampler", "shardable", "is_dtensor",
    "local_region", "local_part",
]  # fmt: skip

#: Sub-stream bits reserved for :meth:`KeyedSampler.child` (the low bits number a tensor's random operations).
_CHILD_SHIFT = 48


# ---- where a tensor's elements sit in the stream -------------------------------------------------------------


class Region:
    """Where the elements of a (local) tensor sit in the row-major order of the whole tensor.

    The local tensor is the box ``[offsets[d], offsets[d] + local_shape[d])`` of a tensor
    of ``global_shape``. Its row-major elements form runs that are contiguous in the
    global order: every dim after the last partial one is whole.

    Example:
        >>> r = Region((2, 3), (4, 6), (1, 3))  # rows 1-2, columns 3-5 of a 4 x 6 tensor
        >>> list(r.runs(0, 6))  # (local start, length, global index)
        [(0, 3, 9), (3, 3, 15)]
    """

    def __init__(self, local_shape: tuple[int, ...], global_shape: tuple[int, ...], offsets: tuple[int, ...]) -> None:
        self.local_shape, self.global_shape, self.offsets = tuple(local_shape), tuple(global_shape), tuple(offsets)
        partial = [d for d in range(len(local_shape)) if local_shape[d] != global_shape[d]]
        self.split = partial[-1] if partial else -1  # the last partial dim
        self.run = math.prod(local_shape[max(self.split, 0):]) if self.split >= 0 else math.prod(local_shape)
        strides, s = [], 1
        for size in reversed(global_shape):
            strides.append(s)
            s *= size
        self.strides = tuple(reversed(strides))

    @classmethod
    def whole(cls, numel: int) -> Region:
        """The region of a tensor that is not sharded: one run, local index = global index."""
        return cls((numel,), (numel,), (0,))

    def _run_start(self, r: int) -> int:
        """The global index of the first element of run ``r``."""
        q = self.split
        if q < 0:
            return 0
        index = self.offsets[q] * self.strides[q]
        for d in range(q - 1, -1, -1):
            r, j = divmod(r, self.local_shape[d])
            index += (self.offsets[d] + j) * self.strides[d]
        return index

    def runs(self, start: int, count: int) -> Iterator[tuple[int, int, int]]:
        """``(local start, length, global index)`` of the pieces of the local range ``[start, start + count)``."""
        end = start + count
        if self.run == 0:
            return
        r = start // self.run
        while start < end:
            stop = min(end, (r + 1) * self.run)
            yield start, stop - start, self._run_start(r) + start - r * self.run
            start, r = stop, r + 1


def is_dtensor(t: Any) -> bool:
    """Whether ``t`` is a ``torch.distributed.tensor.DTensor`` (False where torch.distributed is missing)."""
    if not isinstance(t, Tensor) or type(t) in (Tensor, nn.Parameter):
        return False
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed, or older than 2.5
        _refuse_private_dtensor(t)
        return False
    return isinstance(t, DTensor)


def _refuse_private_dtensor(t: Tensor) -> None:
    """Before torch 2.5, DTensor lived in the private ``torch.distributed._tensor``, whose placement and RNG API
    torchinit does not use: filling one as a plain tensor would draw other values on every world size."""
    try:
        from torch.distributed._tensor import DTensor
    except ImportError:
        return
    if isinstance(t, DTensor):
        raise TypeError(f"tensor: a DTensor needs torch >= 2.5 (torch.distributed.tensor) for torchinit's sharded "
                        f"init; this is torch {torch.__version__}")


def local_region(t: Tensor) -> Region | None:
    """The :class:`Region` of a DTensor's local shard, or None when it is not a box of the whole tensor.

    Placements made only of ``Shard`` (any dim, uneven included) and ``Replicate`` give a
    box; others (FSDP2's ``_StridedShard`` on a 2-D mesh, ``Partial``) return None.
    """
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    t = _as_dtensor(t)
    if any(type(p) not in (Shard, Replicate) for p in t.placements):
        return None
    shape, offsets = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
    if tuple(shape) != tuple(t.to_local().shape):  # pragma: no cover - a layout this code does not know
        return None
    return Region(tuple(shape), tuple(t.shape), tuple(offsets))


def local_part(t: Tensor, full: Tensor) -> Tensor:
    """The part of ``full`` (the whole value of the DTensor ``t``) that ``t``'s rank holds, by torch's own
    splitting rules for ``t``'s placements; no communication."""
    from torch.distributed.tensor import distribute_tensor

    dtensor = _as_dtensor(t)
    return distribute_tensor(full, dtensor.device_mesh, dtensor.placements, src_data_rank=None).to_local()


def _as_dtensor(t: Tensor) -> DTensor:
    """``t``, which the caller knows to be a DTensor, typed as one (DTensor's attributes are not Tensor's)."""
    return cast("DTensor", t)


# ---- samplers -------------------------------------------------------------------------------------------


class Sampler:
    """Where an initializer's random values come from (see the module docstring)."""

    #: Whether element ``i``'s value depends only on ``i`` (a keyed stream), not on the order of draws.
    elementwise: bool = False

    def target(self, t: Tensor) -> tuple[Tensor, Sampler]:
        """The tensor to write for ``t`` (``t``, or a DTensor's local shard) and the sampler that fills it."""
        return t, self

    def fill(self, t: Tensor, kind: str, a: float, b: float) -> Tensor:
        """Fill the target ``t`` (a DTensor: its local shard) by ``kind`` (``"normal_"`` or ``"uniform_"``)."""
        local, sampler = self.target(t)
        getattr(sampler, kind)(local, a, b)
        return t

    def normal_(self, buf: Tensor, mean: float = 0.0, std: float = 1.0, *, start: int = 0) -> Tensor:
        """Fill ``buf`` with normals; its element ``j`` is the target's element ``start + j``."""
        raise NotImplementedError

    def uniform_(self, buf: Tensor, low: float = 0.0, high: float = 1.0, *, start: int = 0) -> Tensor:
        """Fill ``buf`` with uniforms on ``[low, high)``; element ``j`` is the target's element ``start + j``."""
        raise NotImplementedError

    def coin_flips(self, count: int, device: torch.device) -> Tensor:
        """``count`` fair coin flips (a bool tensor on the CPU), the ``j``-th for the ``j``-th draw."""
        raise NotImplementedError

    def child(self, k: int) -> Sampler:
        """The sampler of a scheme's ``k``-th other random quantity (``k >= 1``)."""
        raise NotImplementedError

    def philox(self) -> tuple[keyed.Stream, Region | None]:
        """A keyed stream and region for kernels that compute their own transform of the words."""
        raise NotImplementedError


class GeneratorSampler(Sampler):
    """torch's RNG: ``generator`` (a ``torch.Generator``), or the global RNG when it is None.

    Draws are the calls torch makes, in order; ``start`` is ignored.
    """

    def __init__(self, generator: torch.Generator | None = None) -> None:
        self.generator = generator

    def __repr__(self) -> str:
        return f"GeneratorSampler({self.generator!r})"

    def normal_(self, buf: Tensor, mean: float = 0.0, std: float = 1.0, *, start: int = 0) -> Tensor:
        return buf.normal_(mean, std, generator=self.generator)

    def uniform_(self, buf: Tensor, low: float = 0.0, high: float = 1.0, *, start: int = 0) -> Tensor:
        return buf.uniform_(low, high, generator=self.generator)

    def coin_flips(self, count: int, device: torch.device) -> Tensor:
        where = device if self.generator is None else self.generator.device  # torch draws on the generator's device
        flips = torch.randint(0, 2, (count,), generator=self.generator, dtype=torch.int8, device=where)
        return flips.bool().cpu()

    def child(self, k: int) -> Sampler:
        return self  # the next draws of the same generator

    def philox(self) -> tuple[keyed.Stream, Region | None]:
        return keyed.Stream.from_generator(self.generator), None


class KeyedSampler(Sampler):
    """The keyed stream ``stream`` (:mod:`torchinit.rng.keyed`): element ``i`` gets the stream's value ``i``.

    ``region`` maps the elements of a DTensor's local shard to their global indices
    (None: the tensor is whole).

    Example:
        >>> s = KeyedSampler(keyed.Stream.of(0, "w"))
        >>> a = s.normal_(torch.empty(6))
        >>> torch.equal(a[2:], s.normal_(torch.empty(4), start=2))
        True
    """

    elementwise = True

    def __init__(self, stream: keyed.Stream, region: Region | None = None) -> None:
        self.stream, self.region = stream, region

    def __repr__(self) -> str:
        return f"KeyedSampler({self.stream!r})"

    def target(self, t: Tensor) -> tuple[Tensor, Sampler]:
        if not is_dtensor(t):
            return t, self
        region = local_region(t)
        if region is None:
            raise ValueError(
                f"the local shard of a DTensor with placements {_as_dtensor(t).placements} is not a box of the "
                "whole tensor; compute the whole tensor and keep the local part (torchinit.rng.sampling.shardable)"
            )
        return _as_dtensor(t).to_local(), KeyedSampler(self.stream, region)

    def _fill(self, fill: Callable[..., Tensor], buf: Tensor, a: float, b: float, start: int) -> Tensor:
        if buf.dtype.is_complex:  # the real and imaginary parts of element i are values 2i and 2i + 1
            if self.region is not None:
                raise ValueError("complex DTensor shards are computed whole (torchinit.rng.sampling.shardable)")
            if buf.is_conj():  # a conjugate view has no real view: fill a plain tensor, then copy (conjugating)
                return buf.copy_(self._fill(fill, torch.empty(buf.shape, dtype=buf.dtype, device=buf.device), a, b,
                                            start))
            fill(torch.view_as_real(buf), self.stream, a, b, offset=2 * start)
            return buf
        if self.region is None:
            return fill(buf, self.stream, a, b, offset=start)
        flat = buf.view(-1) if buf.is_contiguous() else torch.empty(buf.numel(), dtype=buf.dtype, device=buf.device)
        for local, length, index in self.region.runs(start, buf.numel()):
            fill(flat[local - start:local - start + length], self.stream, a, b, offset=index)
        if not buf.is_contiguous():
            buf.copy_(flat.view(buf.shape))
        return buf

    def normal_(self, buf: Tensor, mean: float = 0.0, std: float = 1.0, *, start: int = 0) -> Tensor:
        if buf.dtype.is_complex:  # torch's complex normal: each part N(mean, std^2 / 2)
            std = std / math.sqrt(2.0)
        return self._fill(keyed.normal_, buf, mean, std, start)

    def uniform_(self, buf: Tensor, low: float = 0.0, high: float = 1.0, *, start: int = 0) -> Tensor:
        return self._fill(keyed.uniform_, buf, low, high, start)

    def coin_flips(self, count: int, device: torch.device) -> Tensor:
        return (keyed.words(self.stream, 0, count) & 1).bool()

    def child(self, k: int) -> Sampler:
        if not 1 <= k < 1 << (64 - _CHILD_SHIFT):
            raise ValueError(f"k must be in [1, {1 << (64 - _CHILD_SHIFT)}); got {k}")
        sub = (self.stream.sub + (k << _CHILD_SHIFT)) % (1 << 64)
        return KeyedSampler(self.stream.substream(sub), self.region)

    def philox(self) -> tuple[keyed.Stream, Region | None]:
        return self.stream, self.region


def make_sampler(generator: Any = None, seed: Any = None, name: Any = "", tensor: Tensor | None = None) -> Sampler:
    """The sampler of a public call's ``generator=``, ``seed=`` and ``name=`` (validated).

    ``seed`` (an int in ``[0, 2**64)``) selects the keyed stream ``Stream.of(seed, name)``;
    otherwise ``generator`` (None: the global RNG). Passing both is a TypeError; ``name``
    without ``seed`` is a ValueError. ``tensor``, when given, is checked against the
    generator's device.

    Example:
        >>> make_sampler(seed=0, name="fc.weight")
        KeyedSampler(Stream(k0=..., k1=..., sub=0))
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str; got {type(name).__name__}")
    if seed is not None:
        if generator is not None:
            raise TypeError("pass generator= or seed=, not both: seed= draws from the keyed stream of (seed, name), "
                            "generator= from torch's RNG")
        return KeyedSampler(keyed.Stream.of(seed, name))
    if name:
        raise ValueError(f"name={name!r} keys the stream of seed=; pass seed= too (or leave name out)")
    if tensor is not None:
        check_generator(generator, tensor)
    elif generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None; got {type(generator).__name__}")
    return GeneratorSampler(generator)


# ---- sharded targets ----------------------------------------------------------------------------------------


def _written(target: Any) -> Any:
    return target.weight if isinstance(target, nn.Module) and isinstance(getattr(target, "weight", None), Tensor) \
        else target  # fmt: skip


def shardable(local: Callable[[Tensor], bool] | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Make the in-place initializer ``func(target, ...)`` work on DTensors (see the module docstring).

    ``local(t)`` says whether the scheme's values on ``t`` are element-wise, so that with
    ``seed=`` each rank generates only its shard. Otherwise, for a DTensor target (or a
    module whose ``weight`` is one), ``func`` runs on a full-size plain tensor (a shallow
    copy of the module holding it) and each rank keeps its part.
    """

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def wrapper(target: Any, *args: Any, **kwargs: Any) -> Any:
            weight = _written(target)
            if not is_dtensor(weight):
                return func(target, *args, **kwargs)
            if kwargs.get("seed") is not None and local is not None and local(weight) and local_region(weight):
                return func(target, *args, **kwargs)  # KeyedSampler.target generates the local shard
            shard = weight.to_local()
            full = torch.empty(weight.shape, dtype=weight.dtype, device=shard.device)
            if isinstance(target, nn.Module):
                stand_in = copy.copy(target)
                stand_in._parameters = dict(target._parameters)
                stand_in._parameters["weight"] = nn.Parameter(full, requires_grad=weight.requires_grad)
                func(stand_in, *args, **kwargs)
            else:
                func(full, *args, **kwargs)
            if not shard.is_meta:
                with torch.no_grad():
                    shard.copy_(local_part(weight, full))
            return weight if isinstance(target, nn.Module) else target

        return wrapper

    return decorate


def real_dtype(t: Tensor) -> bool:
    """``shardable``'s test for element-wise schemes whose values are element-wise for real dtypes only."""
    return not t.dtype.is_complex
