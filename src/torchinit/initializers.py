"""Initializer objects: each scheme as a value with settings, a readable repr, equality and a config round trip.

An initializer is the function form with its arguments fixed::

    init = KaimingNormal(mode="fan_out", nonlinearity="relu")
    init                          # KaimingNormal(mode='fan_out', nonlinearity='relu')
    init.init(w, generator=g)     # == kaiming_normal_(w, mode="fan_out", nonlinearity="relu", generator=g)
    Initializer.from_config(init.to_config()) == init   # True

The objects call the functions; the math lives only there. A class is declared
by naming its function: the settings, their order and their defaults are read
from the function's signature (every parameter but the tensor and the generator).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from torchinit.basic import constant_, dirac_, eye_, identity_, normal_, ones_, uniform_, zeros_
from torchinit.glass import glass_
from torchinit.structured import delta_orthogonal_, hadamard_, orthogonal_, sparse_
from torchinit.truncnorm import trunc_normal_, trunc_normal_std_
from torchinit.variance import (
    kaiming_normal_,
    kaiming_uniform_,
    lecun_normal_,
    lecun_uniform_,
    variance_scaling_,
    xavier_normal_,
    xavier_uniform_,
)

__all__ = [
    "Initializer",
    "Uniform", "Normal", "TruncNormal", "TruncNormalStd", "Constant", "Zeros", "Ones", "Eye", "Dirac", "Identity",
    "XavierUniform", "XavierNormal", "KaimingUniform", "KaimingNormal", "LecunUniform", "LecunNormal",
    "VarianceScaling", "Orthogonal", "DeltaOrthogonal", "Sparse", "Hadamard", "Glass",
]  # fmt: skip

#: Settings whose value may be ``...`` (Ellipsis): written as the string "..." in configs.
_DIMS_SETTINGS = ("in_dims", "out_dims")


class Initializer:
    """Base class: an initialization scheme with fixed settings.

    Subclasses set ``function`` (the in-place function they call). ``uses_layout``
    is True for schemes that read a layer's layout (the fan-based family and
    glass): :class:`~torchinit.Policy` then hands them the owning module, so
    ConvTranspose, grouped convs and transposed (in, out) weights get their true fans.
    ``wants_owner`` schemes get the owning module for any parameter (torch's bias
    default, whose bound depends on the weight).

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
    wants_owner: ClassVar[bool] = False
    #: A module-level scheme initializes a whole module (its "unit") at once, in an order of its own; see
    #: :class:`~torchinit.presets.TorchReset`. It defines ``unit`` and ``covers``.
    module_level: ClassVar[bool] = False

    def unit(self, path: list[tuple[str, nn.Module]], attr: str) -> tuple[str, nn.Module] | None:
        """For a parameter ``attr`` of the last module of ``path`` (root first): the module to initialize, or None."""
        raise NotImplementedError
    _registry: ClassVar[dict[str, type[Initializer]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "function" in cls.__dict__:
            Initializer._registry[cls.__name__] = cls

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

    @classmethod
    def _signature(cls) -> inspect.Signature:
        """The function's signature without the tensor (first) and the generator."""
        params = list(inspect.signature(cls.function).parameters.values())[1:]
        return inspect.Signature([p for p in params if p.name != "generator"])

    @classmethod
    def _takes_generator(cls) -> bool:
        return "generator" in inspect.signature(cls.function).parameters

    @property
    def settings(self) -> dict[str, Any]:
        """Every setting, defaults included (a copy)."""
        return dict(self._settings)

    def init(self, tensor: Any, *, generator: torch.Generator | None = None) -> Tensor:
        """Initialize ``tensor`` in place and return it: the function form with these settings.

        Deterministic schemes (constants, identities, Hadamard) ignore ``generator``.
        """
        kwargs = dict(self._settings)
        if self._takes_generator():
            kwargs["generator"] = generator
        return type(self).function(tensor, **kwargs)


    def __repr__(self) -> str:
        defaults = {n: p.default for n, p in self._signature().parameters.items()}
        shown = [f"{n}={_show(v)}" for n, v in self._settings.items() if not _same(v, defaults[n])]
        return f"{type(self).__name__}({', '.join(shown)})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(_same(v, other._settings[n]) for n, v in self._settings.items())  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]  # settings may be unhashable (an nn.Module nonlinearity)

    def to_config(self) -> dict[str, Any]:
        """A plain JSON-able dict: ``{"class": name, "config": {setting: value}}``.

        ``...`` is written as the string ``"..."`` and tuples as lists. A setting
        that has no JSON form (a module or callable nonlinearity) is a TypeError.
        """
        config = {}
        for name, value in self._settings.items():
            config[name] = _to_json(value, f"{type(self).__name__}.{name}")
        return {"class": type(self).__name__, "config": config}

    @staticmethod
    def from_config(config: dict[str, Any]) -> Initializer:
        """The initializer described by ``config`` (the inverse of :meth:`to_config`)."""
        if not isinstance(config, dict) or "class" not in config:
            raise ValueError(f"config must be a dict with a 'class' key, as to_config() writes; got {config!r}")
        name = config["class"]
        if name not in Initializer._registry:
            raise ValueError(f"config: unknown initializer class {name!r}; known: {', '.join(Initializer._registry)}")
        settings = {k: _from_json(k, v) for k, v in dict(config.get("config", {})).items()}
        return Initializer._registry[name](**settings)


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


class Uniform(Initializer):
    """:func:`~torchinit.uniform_` as an object: ``Uniform(a=-0.1, b=0.1)``."""

    function = uniform_


class Normal(Initializer):
    """:func:`~torchinit.normal_` as an object: ``Normal(std=0.02)``."""

    function = normal_


class TruncNormal(Initializer):
    """:func:`~torchinit.trunc_normal_` as an object (absolute bounds): ``TruncNormal(std=0.02, a=-0.04, b=0.04)``."""

    function = trunc_normal_


class TruncNormalStd(Initializer):
    """:func:`~torchinit.trunc_normal_std_` as an object (bounds at ``k`` std): ``TruncNormalStd(std=0.02)``."""

    function = trunc_normal_std_


class Constant(Initializer):
    """:func:`~torchinit.constant_` as an object: ``Constant(0.1)``."""

    function = constant_


class Zeros(Initializer):
    """:func:`~torchinit.zeros_` as an object."""

    function = zeros_


class Ones(Initializer):
    """:func:`~torchinit.ones_` as an object."""

    function = ones_


class Eye(Initializer):
    """:func:`~torchinit.eye_` as an object."""

    function = eye_


class Dirac(Initializer):
    """:func:`~torchinit.dirac_` as an object: ``Dirac(groups=2)``."""

    function = dirac_


class Identity(Initializer):
    """:func:`~torchinit.identity_` as an object: ``Identity(gain=0.5)``."""

    function = identity_


class XavierUniform(Initializer):
    """:func:`~torchinit.xavier_uniform_` as an object: ``XavierUniform(gain=1.0, blocks=3)``."""

    function = xavier_uniform_
    uses_layout = True


class XavierNormal(Initializer):
    """:func:`~torchinit.xavier_normal_` as an object."""

    function = xavier_normal_
    uses_layout = True


class KaimingUniform(Initializer):
    """:func:`~torchinit.kaiming_uniform_` as an object: ``KaimingUniform(a=5 ** 0.5)`` is torch's Linear default."""

    function = kaiming_uniform_
    uses_layout = True


class KaimingNormal(Initializer):
    """:func:`~torchinit.kaiming_normal_` as an object: ``KaimingNormal(mode="fan_out", nonlinearity="relu")``."""

    function = kaiming_normal_
    uses_layout = True


class LecunUniform(Initializer):
    """:func:`~torchinit.lecun_uniform_` as an object."""

    function = lecun_uniform_
    uses_layout = True


class LecunNormal(Initializer):
    """:func:`~torchinit.lecun_normal_` as an object."""

    function = lecun_normal_
    uses_layout = True


class VarianceScaling(Initializer):
    """:func:`~torchinit.variance_scaling_` as an object: ``VarianceScaling(2.0, "fan_out", "normal")``."""

    function = variance_scaling_
    uses_layout = True


class Orthogonal(Initializer):
    """:func:`~torchinit.orthogonal_` as an object: ``Orthogonal(gain=2 ** 0.5, blocks=4)``."""

    function = orthogonal_


class DeltaOrthogonal(Initializer):
    """:func:`~torchinit.delta_orthogonal_` as an object."""

    function = delta_orthogonal_


class Sparse(Initializer):
    """:func:`~torchinit.sparse_` as an object: ``Sparse(0.9, std=0.01)``."""

    function = sparse_


class Hadamard(Initializer):
    """:func:`~torchinit.hadamard_` (ZerO) as an object."""

    function = hadamard_


class Glass(Initializer):
    """:func:`~torchinit.glass_` as an object: ``Glass(isometric=True, zero_mean=False)``."""

    function = glass_
    uses_layout = True
