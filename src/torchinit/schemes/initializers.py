"""Initializer objects: each scheme as a value with settings, a readable repr, equality and a config round trip.

An initializer is the function form with its arguments fixed::

    init = KaimingNormal(mode="fan_out", nonlinearity="relu")
    init                          # KaimingNormal(mode='fan_out', nonlinearity='relu')
    init.init(w, generator=g)     # == kaiming_normal_(w, mode="fan_out", nonlinearity="relu", generator=g)
    init.init(w, seed=0, name="fc.weight")   # the keyed stream of (0, "fc.weight") instead
    Initializer.from_config(init.to_config()) == init   # True

An initializer is also callable, ``init(w, generator=g)`` being ``init.init(w, generator=g)``.

The objects call the functions; the math and the argument checks live only there.
A class is declared by naming its function: the settings, their order and their
defaults are read from the function's signature (every parameter but the tensor
and the randomness: ``generator``, ``seed``, ``name``), and the settings are validated when the object is built by
running the function on small meta tensors (see :meth:`Initializer._check_settings`),
so a bad setting is a ValueError or TypeError at construction, not at first use.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor

from torchinit._util.warn import quiet
from torchinit.recording.log import thread_recordings
from torchinit.rng.sampling import make_sampler
from torchinit.schemes import basic, glass, structured, truncnorm, variance

__all__ = [
    "Initializer",
    "Uniform", "Normal", "TruncNormal", "TruncNormalStd", "Constant", "Zeros", "Ones", "Eye", "Dirac", "Identity",
    "XavierUniform", "XavierNormal", "KaimingUniform", "KaimingNormal", "LecunUniform", "LecunNormal",
    "VarianceScaling", "Orthogonal", "DeltaOrthogonal", "Sparse", "Hadamard", "Glass",
]  # fmt: skip

#: The parameters that say where random values come from: arguments of each call, not settings.
_RANDOMNESS = ("generator", "seed", "name")

#: Settings whose value may be ``...`` (Ellipsis): written as the string "..." in configs.
_DIMS_SETTINGS = ("in_dims", "out_dims")


class Initializer:
    """Base class: an initialization scheme with fixed settings.

    Subclasses set ``function`` (the in-place function they call). ``uses_layout``
    is True for schemes that read a layer's layout (the fan-based family and
    glass): :class:`~torchinit.Policy` then hands them the owning module, so
    ConvTranspose, grouped convs and transposed (in, out) weights get their true fans.
    Initializers of whole modules, or of a parameter given its owning module, are
    :class:`~torchinit.model.policy.ModuleInitializer` and
    :class:`~torchinit.model.policy.OwnerInitializer` (the presets' ``TorchReset`` and ``TorchBias``).

    Example:
        >>> init = KaimingNormal(mode="fan_out", nonlinearity="relu")
        >>> init
        KaimingNormal(mode='fan_out', nonlinearity='relu')
        >>> Initializer.from_config(init.to_config()) == init
        True
        >>> g = torch.Generator()
        >>> w = init.init(torch.empty(64, 32), generator=g.manual_seed(0))
        >>> torch.equal(w, kaiming_normal_(torch.empty(64, 32), mode="fan_out", nonlinearity="relu",
        ...                                generator=g.manual_seed(0)))
        True
    """

    function: ClassVar[Callable[..., Any]]
    uses_layout: ClassVar[bool] = False
    #: Validate the settings at construction by running ``function`` on meta tensors (see ``_check_settings``).
    #: A scheme whose function takes no tensor can turn it off; schemes without settings are never probed.
    probe_settings: ClassVar[bool] = True

    #: Every class ``from_config`` can build, by its config name (:meth:`config_name`).
    _registry: ClassVar[dict[str, type[Initializer]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if hasattr(cls, "function"):
            Initializer._registry[cls.config_name()] = cls

    @classmethod
    def config_name(cls) -> str:
        """The name ``to_config`` writes: the bare class name for torchinit's own classes, and the module and
        qualified name for any other (``"mypkg.inits.Normal"``), so a user's class never takes over a
        built-in one of the same short name (Keras registers ``package>Name`` for the same reason)."""
        if cls.__module__.split(".")[0] == "torchinit":
            return cls.__name__
        return f"{cls.__module__}.{cls.__qualname__}"

    def __init__(self, *args: Any, **settings: Any) -> None:
        signature = self._signature()
        try:
            bound = signature.bind(*args, **settings)
        except TypeError as err:
            raise TypeError(
                f"{type(self).__name__}: {err}; its settings are {', '.join(signature.parameters) or 'none'}"
            ) from None
        bound.apply_defaults()
        self._settings: dict[str, Any] = dict(bound.arguments)
        if self.probe_settings and self._settings:
            self._check_settings()

    def _check_settings(self) -> None:
        """Raise the function's own ValueError/TypeError now if no tensor could take these settings.

        The function is run, with these settings, on small meta tensors (nothing is written,
        no random number is drawn; warnings are the real call's to give): float64 weights of 2,
        3, 4, 5, 1 and more dims (enough for every dim the settings name), then complex and bool
        ones, each with dim 0 a multiple of every positive int setting (``groups``, ``blocks``)
        and the other dims 1. The first that passes ends the check. A setting that fails on
        every one is rejected with the error of the first probe the function accepts with its
        default settings: its shape and dtype are ones the function takes, so the error is about
        the settings. A probe that raises anything else, or a function that takes none of the
        probes, settles nothing: the settings are then checked when the object is applied.
        """
        function = type(self).function
        errors: list[tuple[tuple[int, torch.dtype], Exception]] = []
        with _unrecorded():
            for probe in _probes(self._settings):
                try:
                    _run_on_probe(function, probe, self._settings)
                    return
                except (ValueError, TypeError) as err:
                    errors.append((probe, err))
                except Exception:  # not an argument error: the probe cannot tell
                    return
            accepted = [err for probe, err in errors if _takes_probe(type(self), probe)]
        if accepted:
            first = accepted[0]
            kind = TypeError if isinstance(first, TypeError) else ValueError
            raise kind(f"{type(self).__name__}: {first}") from None

    @classmethod
    def _signature(cls) -> inspect.Signature:
        """The function's signature without the tensor (first) and the randomness (generator, seed, name)."""
        params = list(inspect.signature(cls.function).parameters.values())[1:]
        return inspect.Signature([p for p in params if p.name not in _RANDOMNESS])

    @classmethod
    def _takes_generator(cls) -> bool:
        return "generator" in inspect.signature(cls.function).parameters

    @property
    def settings(self) -> dict[str, Any]:
        """Every setting, defaults included (a copy)."""
        return dict(self._settings)

    def init(
        self, tensor: Any, *, generator: torch.Generator | None = None, seed: int | None = None, name: str = ""
    ) -> Tensor:
        """Initialize ``tensor`` in place and return it: the function form with these settings.

        ``generator`` draws from torch's RNG; ``seed`` (with ``name``) from the keyed stream
        of ``(seed, name)`` (:mod:`torchinit.rng.sampling`); not both. Deterministic schemes
        (constants, identities, Hadamard) check and then ignore them.
        """
        kwargs = dict(self._settings)
        if self._takes_generator():
            kwargs.update(generator=generator, seed=seed, name=name)
        else:
            make_sampler(generator, seed, name)  # the same checks: both given, a bad type
        return type(self).function(tensor, **kwargs)

    def __call__(
        self, tensor: Any, *, generator: torch.Generator | None = None, seed: int | None = None, name: str = ""
    ) -> Tensor:
        """``init(tensor, generator=g)`` is ``init.init(tensor, generator=g)`` (``seed``, ``name`` likewise)."""
        # only when given: a subclass's init may not take them
        keyed: dict[str, Any] = {"seed": seed, "name": name} if seed is not None or name else {}
        return self.init(tensor, generator=generator, **keyed)

    def __repr__(self) -> str:
        defaults = {n: p.default for n, p in self._signature().parameters.items()}
        shown = [f"{n}={_show(v)}" for n, v in self._settings.items() if not _same(v, defaults[n])]
        return f"{type(self).__name__}({', '.join(shown)})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(_same(v, other._settings[n]) for n, v in self._settings.items())

    __hash__ = None  # type: ignore[assignment]  # settings may be unhashable (an nn.Module nonlinearity)

    def to_config(self) -> dict[str, Any]:
        """A plain JSON-able dict: ``{"class": name, "config": {setting: value}}`` (``name``: :meth:`config_name`).

        ``...`` is written as the string ``"..."`` and tuples as lists. A setting
        that has no JSON form (a module or callable nonlinearity) is a TypeError.
        """
        config = {}
        for name, value in self._settings.items():
            config[name] = _to_json(value, f"{type(self).__name__}.{name}")
        return {"class": type(self).config_name(), "config": config}

    @staticmethod
    def from_config(config: dict[str, Any]) -> Initializer:
        """The initializer described by ``config`` (the inverse of :meth:`to_config`).

        A user's class is found by the name ``to_config`` writes, or by its bare class name when exactly
        one user class has it (configs written by torchinit 0.1, or in a script run as ``__main__``); a
        bare name of a built-in class always means the built-in one.
        """
        if not isinstance(config, dict) or "class" not in config:
            raise ValueError(f"config must be a dict with a 'class' key, as to_config() writes; got {config!r}")
        cls = _registered(config["class"])
        settings = {k: _from_json(k, v) for k, v in dict(config.get("config", {})).items()}
        return cls(**settings)


def _registered(name: Any) -> type[Initializer]:
    """The class registered as ``name``, else the one user class whose own name is ``name``'s last part."""
    registry = Initializer._registry
    if isinstance(name, str) and name in registry:
        return registry[name]
    short = name.rsplit(".", 1)[-1] if isinstance(name, str) else None
    users = [cls for key, cls in registry.items() if "." in key and cls.__name__ == short]
    if len(users) == 1:
        return users[0]
    if users:
        raise ValueError(f"config: class {name!r} is ambiguous: {', '.join(cls.config_name() for cls in users)}")
    raise ValueError(f"config: unknown initializer class {name!r}; known: {', '.join(registry)}")


#: The dtypes settings are probed with: float64 holds every float32/bf16/fp16 value (tightest bounds checks);
#: complex and bool tensors take fill values float ones refuse (``Constant(1j)``, ``Constant(True)``).
_PROBE_DTYPES = (torch.float64, torch.complex128, torch.bool)
_MAX_DIMS = 64  # torch's limit on a tensor's dims
_TAKES_PROBE: dict[tuple[Callable[..., Any], int, torch.dtype], bool] = {}


def _ints(value: Any) -> Iterator[int]:
    """The ints in a setting (bools excluded), looking into tuples and lists."""
    if isinstance(value, (tuple, list)):
        for v in value:
            yield from _ints(v)
    elif isinstance(value, int) and not isinstance(value, bool):
        yield value


def _probes(settings: dict[str, Any]) -> Iterator[tuple[int, torch.dtype]]:
    """(dims, dtype) of the meta tensors ``settings`` are tried on, most common first."""
    ints = [i for v in settings.values() for i in _ints(v)]
    needed = [i + 1 if i >= 0 else -i for i in ints]  # the dims a tensor needs for dim i to exist
    most = min(_MAX_DIMS, max([5] + [n + 1 for n in needed if n < _MAX_DIMS]))
    for dtype in _PROBE_DTYPES:
        for ndim in (2, 3, 4, 5, 1, *range(6, most + 1)):
            yield ndim, dtype


def _probe_tensor(ndim: int, dtype: torch.dtype, settings: dict[str, Any]) -> Tensor:
    """A meta tensor of ``ndim`` dims whose dim 0 every positive int setting divides; the other dims are 1."""
    size0 = math.lcm(1, *(i for v in settings.values() for i in _ints(v) if i > 0))
    return torch.empty((size0 if size0 < 2**40 else 1,) + (1,) * (ndim - 1), dtype=dtype, device="meta")


def _run_on_probe(function: Callable[..., Any], probe: tuple[int, torch.dtype], settings: dict[str, Any]) -> None:
    with quiet():  # the real call warns
        function(_probe_tensor(*probe, settings), **settings)


def _takes_probe(cls: type[Initializer], probe: tuple[int, torch.dtype]) -> bool:
    """Whether ``cls.function`` with its default settings accepts the probe (all probes count when it has none)."""
    params = cls._signature().parameters.values()
    if any(p.default is inspect.Parameter.empty for p in params):
        return True  # a required setting: no default to tell the function's shapes and dtypes by
    key = (cls.function, *probe)
    if key not in _TAKES_PROBE:
        try:
            _run_on_probe(cls.function, probe, {})
            _TAKES_PROBE[key] = True
        except Exception:
            _TAKES_PROBE[key] = False
    return _TAKES_PROBE[key]


@contextlib.contextmanager
def _unrecorded() -> Iterator[None]:
    """Pause this thread's ``deferred()`` recordings: probing settings is not part of a model's construction."""
    modes = [mode for _, mode in thread_recordings()]
    paused = [mode.paused for mode in modes]
    for mode in modes:
        mode.paused = True
    try:
        yield
    finally:
        for mode, was in zip(modes, paused):
            mode.paused = was


def _same(a: Any, b: Any) -> bool:
    """Settings equality: 1 == 1.0, but True is not 1; sequences elementwise."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    try:
        return bool(a == b)
    except (TypeError, RuntimeError):  # e.g. objects whose == is not a bool
        return a is b


def _show(value: Any) -> str:
    return "..." if value is ... else repr(value)


def _to_json(value: Any, where: str) -> Any:
    if value is ...:
        return "..."
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        return [_to_json(v, where) for v in value]
    raise TypeError(f"{where}={value!r} has no JSON form; to_config() needs numbers, strings, None, ... or lists")


def _from_json(name: str, value: Any) -> Any:
    if name in _DIMS_SETTINGS and value == "...":
        return ...
    if isinstance(value, list):
        return tuple(_from_json(name, v) for v in value)
    return value


def _scheme(function: Callable[..., Any], detail: str = "", *, uses_layout: bool = False) -> type[Initializer]:
    """The Initializer class of ``function``, named after it (``kaiming_normal_`` -> ``KaimingNormal``).

    Everything else (settings, validation, call, repr, equality, config) the base class
    derives from ``function``; ``detail`` ends the class docstring.
    """
    name = "".join(part.capitalize() for part in function.__name__.rstrip("_").split("_"))
    namespace = {
        "__doc__": f":func:`~torchinit.{function.__name__}` as an object{detail}.",
        "__module__": __name__,
        "__qualname__": name,
        "function": staticmethod(function),
        "uses_layout": uses_layout,
    }
    return type(name, (Initializer,), namespace)


# One row per scheme; ``uses_layout``: the fan-based family and glass read a layer's layout.
Uniform = _scheme(basic.uniform_, ": ``Uniform(a=-0.1, b=0.1)``")
Normal = _scheme(basic.normal_, ": ``Normal(std=0.02)``")
TruncNormal = _scheme(truncnorm.trunc_normal_, " (absolute bounds): ``TruncNormal(std=0.02, a=-0.04, b=0.04)``")
TruncNormalStd = _scheme(truncnorm.trunc_normal_std_, " (bounds at ``k`` std): ``TruncNormalStd(std=0.02)``")
Constant = _scheme(basic.constant_, ": ``Constant(0.1)``")
Zeros = _scheme(basic.zeros_)
Ones = _scheme(basic.ones_)
Eye = _scheme(basic.eye_)
Dirac = _scheme(basic.dirac_, ": ``Dirac(groups=2)``")
Identity = _scheme(basic.identity_, ": ``Identity(gain=0.5)``")
XavierUniform = _scheme(variance.xavier_uniform_, ": ``XavierUniform(gain=1.0, blocks=3)``", uses_layout=True)
XavierNormal = _scheme(variance.xavier_normal_, uses_layout=True)
KaimingUniform = _scheme(
    variance.kaiming_uniform_, ": ``KaimingUniform(a=5 ** 0.5)`` is torch's Linear default", uses_layout=True
)
KaimingNormal = _scheme(
    variance.kaiming_normal_, ': ``KaimingNormal(mode="fan_out", nonlinearity="relu")``', uses_layout=True
)
LecunUniform = _scheme(variance.lecun_uniform_, uses_layout=True)
LecunNormal = _scheme(variance.lecun_normal_, uses_layout=True)
VarianceScaling = _scheme(
    variance.variance_scaling_, ': ``VarianceScaling(2.0, "fan_out", "normal")``', uses_layout=True
)
Orthogonal = _scheme(structured.orthogonal_, ": ``Orthogonal(gain=2 ** 0.5, blocks=4)``")
DeltaOrthogonal = _scheme(structured.delta_orthogonal_)
Sparse = _scheme(structured.sparse_, ": ``Sparse(0.9, std=0.01)``")
Hadamard = _scheme(structured.hadamard_, " (ZerO)")
Glass = _scheme(glass.glass_, ": ``Glass(isometric=True, zero_mean=False)``", uses_layout=True)
