r"""Where every stream comes from: a seed and a name, or a generator.

torchinit draws random numbers from three kinds of source, and ``generator=`` means a different one
depending on what is being initialized:

1. **One tensor** (``normal_(t, generator=g)``, ``Initializer.init``): ``g`` is drawn from directly,
   exactly as ``torch.nn.init`` does, so the bits are torch's.
2. **A whole model** (``Policy.apply_``, ``materialize_``, ``lsuv_``): one 63-bit number is drawn
   from ``g`` per call (:func:`draw_seed`); each parameter (or module) named ``n`` then draws from
   its own ``torch.Generator`` seeded with :func:`stream_seed` ``(base, n)``, a BLAKE2b hash of the
   number and the name. The values of one parameter do not depend on the order or on other layers.
3. **Code that knows only the global RNG** (``torch_reset_``, a replayed ``randn_like``):
   one number drawn from ``g`` seeds private generators that torch's random operations draw from
   instead of the global ones, in this thread only (:func:`seeded_torch_rng`); the global RNG is
   never touched.

``seed=`` (an int, with ``name=`` on a single tensor) is the fourth source and the only one that is
the same on any number of ranks: the counter-based keyed stream of ``(seed, name)``, derived with
SHAKE-128 in :meth:`torchinit.rng.keyed.Stream.of` (``docs/keyed_rng.md``); whole-model calls key it
with each parameter's qualified name, :func:`stream_kwargs` below. A keyed stream can also be keyed by a
generator (:func:`draw_key_bits`): large fills and the threaded truncated normal under ``generator=`` draw
their key that way.

Every stream named after a qualified name of a model is named after its canonical form
(:func:`canonical_name`): the segments torch's wrapper modules insert are removed, so a model wrapped by
``torch.compile``, activation checkpointing or DDP draws exactly what the unwrapped model draws.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from torchinit.rng.private import private_random

__all__ = [
    "stream_seed", "draw_seed", "draw_key_bits", "derive_seed", "stream_generator", "stream_kwargs",
    "seeded_torch_rng", "canonical_name", "WRAPPER_SEGMENTS",
]  # fmt: skip

_SEED_BOUND = 2**63 - 1

#: The attributes under which torch's wrapper modules hold the module they wrap, anywhere in a model. They
#: name nothing of the model itself (the wrapper has no parameters of its own), so :func:`canonical_name`
#: drops them.
WRAPPER_SEGMENTS: frozenset[str] = frozenset({
    "_orig_mod",  # torch.compile(module): torch._dynamo's OptimizedModule
    "_checkpoint_wrapped_module",  # activation checkpointing's checkpoint_wrapper (CheckpointWrapper, torchtitan)
})  # fmt: skip


def canonical_name(name: str, root: object = None) -> str:
    """The name of the stream of the tensor (or module) ``name``: its qualified name with wrapper segments removed.

    Removed: every segment in :data:`WRAPPER_SEGMENTS` (``_orig_mod`` of ``torch.compile``,
    ``_checkpoint_wrapped_module`` of ``checkpoint_wrapper``), wherever it is; and, when ``root``
    (the model ``name`` is qualified in) is a ``DistributedDataParallel`` or ``nn.DataParallel``,
    the leading ``module`` segment they add. Nothing else changes: the name of a tensor of an
    unwrapped model is its own canonical name, and a submodule of a plain model that happens to be
    called ``module`` keeps it. FSDP2's ``fully_shard`` and tensor parallel add no segment.

    Example:
        >>> canonical_name("blocks.0._checkpoint_wrapped_module.attn._orig_mod.weight")
        'blocks.0.attn.weight'
        >>> ddp_like = torch.nn.DataParallel(torch.nn.Linear(1, 1))
        >>> canonical_name("module.weight"), canonical_name("module.weight", ddp_like)
        ('module.weight', 'weight')
    """
    parts = name.split(".")
    if parts[0] == "module" and isinstance(root, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
        parts = parts[1:]
    return ".".join(part for part in parts if part not in WRAPPER_SEGMENTS)


def stream_seed(seed: int, name: str) -> int:
    """A 63-bit seed for the stream named ``name`` under ``seed``: BLAKE2b, stable across runs and machines.

    Example:
        >>> stream_seed(0, "layer.weight") == stream_seed(0, "layer.weight") != stream_seed(1, "layer.weight")
        True
    """
    digest = hashlib.blake2b(f"{seed}\0{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def draw_seed(generator: torch.Generator) -> int:
    """One 63-bit number drawn from ``generator`` (advancing it): the base of a call's per-name streams.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> a, b = draw_seed(g), draw_seed(g)
        >>> a != b, a == draw_seed(torch.Generator().manual_seed(0))
        (True, True)
    """
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None; got {type(generator).__name__}")
    draw = torch.empty((), dtype=torch.int64, device=generator.device)
    return int(draw.random_(0, _SEED_BOUND, generator=generator))


def draw_key_bits(generator: torch.Generator | None) -> int:
    """One draw of torch's ``random_()`` on an int64 from ``generator`` (None: the global RNG), as an unsigned
    64-bit int: the key of a keyed stream drawn from a generator (:meth:`torchinit.rng.keyed.Stream.from_generator`:
    large fills under ``materialize_(generator=...)``, the truncated normal's threaded sampler)."""
    device = generator.device if generator is not None else "cpu"  # explicit: a device context may be active
    return int(torch.empty((), dtype=torch.int64, device=device).random_(generator=generator)) & ((1 << 64) - 1)


def derive_seed(generator: torch.Generator | None) -> int | None:
    """:func:`draw_seed`, with None (the global RNG) staying None."""
    return None if generator is None else draw_seed(generator)


def stream_generator(base_seed: int | None, name: str, device: torch.device) -> torch.Generator | None:
    """The generator of the stream ``name`` (a qualified name, made canonical: :func:`canonical_name`) under
    ``base_seed`` (from :func:`derive_seed`); None: the global RNG."""
    if base_seed is None:
        return None
    return torch.Generator(device=device).manual_seed(stream_seed(base_seed, canonical_name(name)))


def stream_kwargs(base_seed: int | None, name: str, device: torch.device, keyed: bool,
                  root: object = None) -> dict[str, Any]:
    """The randomness arguments of an initializer's ``init`` for the tensor (or module) ``name`` of the model
    ``root``; the stream is named ``canonical_name(name, root)`` (wrapper segments removed).

    ``keyed``: ``base_seed`` is the user's ``seed=`` and the keyed stream of ``(seed, name)`` is drawn;
    otherwise the generator of :func:`stream_generator` (the global RNG when ``base_seed`` is None).
    """
    name = canonical_name(name, root)
    if keyed:
        return {"seed": base_seed, "name": name}
    return {"generator": stream_generator(base_seed, name, device)}


def seeded_torch_rng(generator: torch.Generator) -> Any:
    """Within, in this thread: torch's random operations that name no generator draw from private generators
    seeded from one draw of ``generator`` (:class:`~torchinit.rng.private.private_random`), for code that only
    uses the global RNG (torch's ``reset_parameters``, ``randn_like``). The numbers are those the global RNG
    would give after ``torch.manual_seed`` of that draw; the global generators are never touched, so another
    thread drawing from them meanwhile is neither rewound nor sees these draws."""
    return private_random(seed=draw_seed(generator))
