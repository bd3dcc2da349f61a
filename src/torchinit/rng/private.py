"""A thread's torch random draws from private generators, never the global ones: :class:`private_random`.

Used where torchinit runs code that draws from the global RNG but must not touch it: the forward
passes of ``probe``, ``jacobian_spectrum`` and ``lsuv_`` (a private copy of the global state: the
same numbers, the global generators only read), and torch's ``reset_parameters`` or a replayed
``randn_like`` under ``generator=``/``seed=`` (a private generator seeded from the caller's:
:func:`torchinit.rng.seeds.seeded_torch_rng`). Another thread drawing from the global generators
meanwhile sees its own stream, never rewound.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["private_random"]

#: Device types whose random operations :class:`private_random` gives a private generator.
_PRIVATE_DEVICES = ("cpu", "cuda")
#: Arguments of a random operation that takes no generator: at 0 (or ``train=False``) it draws nothing.
_RATES = ("p", "dropout", "dropout_p")


class private_random(TorchDispatchMode):  # lower case: used like a function, ``with private_random() as rng``
    """Within, in this thread: torch's random operations draw from private generators, not the global ones.

    One ``torch.Generator`` per device (CPU and CUDA), made at that device's first draw
    with a copy of the device's global generator's state: the numbers are those the
    global generator would give now, so a forward pass (dropout masks, ``torch.rand``,
    ``randn_like``, ...) computes what it computes outside, but the global generators are
    only read, never advanced nor set, and another thread drawing from them at the same
    time sees its own stream, unrepeated. An operation given a generator keeps it; one
    whose overloads take none draws through its twin that does (``rand`` through
    ``rand.generator``); ``native_dropout`` (CUDA's dropout), whose kernel takes none, is
    computed as torch's own decomposition does, ``input * mask / (1 - p)`` with
    ``mask ~ Bernoulli(1 - p)`` from the private generator (same distribution, other
    numbers than the fused kernel). What still draws from a global generator, named in
    :attr:`global_draws` (see :func:`warn_global_draws`): operations that take no
    generator at all (fused CUDA attention and cuDNN RNNs with dropout), tensor
    subclasses (DTensor keeps its own stream), other device types, draws made in other
    threads, and Python's ``random`` and NumPy, which torch does not see.

    It is a ``TorchDispatchMode``, whose stack is per thread: other threads are untouched.

    Example:
        >>> state = torch.get_rng_state()
        >>> with private_random():
        ...     a = torch.rand(3)
        >>> torch.equal(torch.get_rng_state(), state), torch.equal(a, torch.rand(3))
        (True, True)
    """

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False  # as RecordingMode: nothing here is compiled, and the wrapper would import torch._dynamo

    def __init__(self, seed: int | None = None) -> None:
        super().__init__()
        #: None: each private generator starts as a copy of its device's global generator; an int: it starts
        #: from ``manual_seed(seed)``, as ``torch.manual_seed(seed)`` would start the global ones.
        self.seed = seed
        self.generators: dict[torch.device, torch.Generator] = {}
        #: The operations (``aten.op.overload on device``) that drew from a global generator.
        self.global_draws: set[str] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = dict(kwargs or {})
        if torch.Tag.nondeterministic_seeded not in func.tags or _given_generator(func, args, kwargs):
            return func(*args, **kwargs)
        device = _draw_device(args, kwargs)
        if device is not None and device.type in _PRIVATE_DEVICES:
            if func is torch.ops.aten.native_dropout.default:
                return _native_dropout(self.generator(device), *args, **kwargs)
            twin = _generator_overload(func)
            if twin is not None:
                return _call_with(twin[0], twin[1], args, kwargs, self.generator(device))
            if _LIKE_FILLS.get(func._schema.name) is not None:
                return _drawn_like(func, self.generator(device), args, kwargs)
        if _draws(func, args, kwargs, device):
            self.global_draws.add(f"{func} on {device if device is not None else 'a tensor subclass'}")
        return func(*args, **kwargs)

    def generator(self, device: torch.device) -> torch.Generator:
        """The private generator of ``device`` (a CPU or CUDA device): a copy of its global one's state, or seeded."""
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        generator = self.generators.get(device)
        if generator is None:
            generator = torch.Generator(device=device)
            if self.seed is not None:
                generator.manual_seed(self.seed)
            else:
                state = torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()
                generator.set_state(state)
            self.generators[device] = generator
        return generator


def _given_generator(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """The call names a generator of its own (a module's): it draws from that, as it would anywhere."""
    names = [a.name for a in func._schema.arguments]
    if "generator" not in names:
        return False
    slot = names.index("generator")
    return (args[slot] if slot < len(args) else kwargs.get("generator")) is not None


def _draw_device(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.device | None:
    """Where an operation draws: its first tensor's device (None for a tensor subclass, which keeps its own
    stream), else its ``device`` argument (CPU when None, as for a factory)."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, Tensor):
            return value.device if type(value) in (Tensor, nn.Parameter) else None
    device = kwargs.get("device")
    return torch.device(device) if device is not None else torch.device("cpu")


@functools.cache
def _generator_overload(func: Any) -> tuple[Any, int] | None:
    """``func`` with its generator argument's position, or its overload that takes the same arguments and a
    keyword-only generator (``rand`` -> ``rand.generator``), or None."""
    arguments = func._schema.arguments
    names = [a.name for a in arguments]
    if "generator" in names:
        return func, names.index("generator")
    packet = func.overloadpacket
    for overload in packet.overloads():
        other = getattr(packet, overload)
        generators = [a for a in other._schema.arguments if a.name == "generator" and a.kwarg_only]
        if generators and [a.name for a in other._schema.arguments if a.name != "generator"] == names:
            return other, len(other._schema.arguments)  # keyword-only: passed by name
    return None


def _call_with(func: Any, slot: int, args: tuple[Any, ...], kwargs: dict[str, Any], generator: torch.Generator) -> Any:
    """``func(*args, **kwargs)`` with ``generator`` as its (unset) generator argument at position ``slot``."""
    if slot < len(args):
        args = (*args[:slot], generator, *args[slot + 1:])
    else:
        kwargs["generator"] = generator
    return func(*args, **kwargs)


#: The ``*_like`` factories and the in-place fill each is defined as in ATen (``randn_like(x)`` is
#: ``empty_like(x).normal_(0, 1)``): where they have no generator overload (torch 2.2 has none), they are drawn as
#: that fill from the private generator, which gives the numbers the factory would.
_LIKE_FILLS: dict[str, str] = {"aten::randn_like": "normal_", "aten::rand_like": "uniform_",
                               "aten::randint_like": "random_"}


def _drawn_like(func: Any, generator: torch.Generator, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
    """``func(*args, **kwargs)``, a ``*_like`` factory without a generator overload, drawn from ``generator``."""
    source, bounds = args[0], args[1:]
    out = torch.empty_like(source, **kwargs)
    fill = _LIKE_FILLS[func._schema.name]
    if fill == "random_":  # randint_like(x, high) or randint_like(x, low, high)
        low, high = (0, bounds[0]) if len(bounds) == 1 else bounds
        return out.random_(low, high, generator=generator)
    return getattr(out, fill)(0.0, 1.0, generator=generator)


def _native_dropout(generator: torch.Generator, input: Tensor, p: float, train: bool | None = None) -> Any:
    """``aten.native_dropout`` (its kernels take no generator) from ``generator``: torch's decomposition,
    ``(input * mask / (1 - p), mask)`` with ``mask ~ Bernoulli(1 - p)``."""
    if train is False:
        return torch.ops.aten.native_dropout.default(input, p, train)  # draws nothing
    keep = 1.0 - p
    mask = torch.empty_like(input).bernoulli_(keep, generator=generator)
    return input * mask * (1.0 / keep if keep > 0 else 0.0), mask.bool()


def _draws(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], device: torch.device | None) -> bool:
    """Whether a random operation left to the global RNG does draw: not on meta tensors, nor with a rate of 0 or
    ``train=False`` (attention and RNN kernels are tagged random for their dropout)."""
    if device is not None and device.type == "meta":
        return False
    values = {**dict(zip((a.name for a in func._schema.arguments), args)), **kwargs}
    if values.get("train") is False:
        return False
    return not any(isinstance(values.get(name), (int, float)) and values[name] == 0 for name in _RATES)


