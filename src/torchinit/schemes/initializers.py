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

Configs may come from untrusted files, so :meth:`Initializer.from_config` reads them within bounds
(:data:`CONFIG_MAX_DEPTH`, :data:`CONFIG_MAX_SIZE`, at most 64 dims in ``in_dims``/``out_dims``/``batch_dims``)
in time linear in their size, and every malformed one is a ValueError or TypeError naming the field by its
path (``config.config.in_dims[3]``) and the valid values. :meth:`Initializer.to_config` writes strict JSON:
non-finite floats are tagged (``{"float": "inf"}``, ``"-inf"``, ``"nan"``) and complex numbers too
(``{"complex": [real, imag]}``), so ``json.dumps(config, allow_nan=False)`` works. Class names: a built-in
class is written by its bare name (``"Normal"``), and also read by its qualified one
(``"torchinit.schemes.initializers.Normal"``, or any ``"torchinit.<...>.Normal"``); a user's class by
``module.QualName``, or by the name given to :meth:`Initializer.register`. No user class can take a
built-in's name.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import reprlib
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor

from torchinit._util.warn import quiet
from torchinit.recording.log import thread_recordings
from torchinit.rng.sampling import make_sampler
from torchinit.schemes import basic, glass, structured, truncnorm, variance
from torchinit.schemes.layout import MAX_DIMS

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
#: Settings that name dims of a tensor: a config's list of them holds at most ``MAX_DIMS`` ints.
_DIMS_NAMED = ("in_dims", "out_dims", "batch_dims")

#: The deepest a value may sit in a config: the config dict is level 0, its "config" dict 1, a setting 2.
CONFIG_MAX_DEPTH = 16
#: The most a config may hold: each dict entry and list item counts 1, each string also its length.
CONFIG_MAX_SIZE = 100_000
#: The longest class name a config may give.
_MAX_CLASS_NAME = 1000

#: The names reserved for torchinit's own classes (bare and qualified), and their classes.
_BUILTINS: dict[str, type[Initializer]] = {}
#: The names user classes were given by :meth:`Initializer.register` (what ``to_config`` writes for them).
_REGISTERED_AS: dict[type[Initializer], str] = {}


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

    #: Every class ``from_config`` can build, by its config name (:meth:`config_name`) and any name given to
    #: :meth:`register`. torchinit's own classes are looked up in a table of their own first, so that even
    #: an entry written here directly never takes over one of their names.
    _registry: ClassVar[dict[str, type[Initializer]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if hasattr(cls, "function"):
            _register_defined(cls)

    @classmethod
    def config_name(cls) -> str:
        """The name ``to_config`` writes: the bare class name for torchinit's own classes, the name given to
        :meth:`register` for a class registered by one, and the module and qualified name for any other
        (``"mypkg.inits.Normal"``), so a user's class never takes over a built-in one of the same short
        name (Keras registers ``package>Name`` for the same reason)."""
        if _is_torchinits(cls):
            return cls.__name__
        return _REGISTERED_AS.get(cls) or f"{cls.__module__}.{cls.__qualname__}"

    @staticmethod
    def register(cls: type[Initializer], name: str | None = None) -> type[Initializer]:
        """Register a user's ``Initializer`` subclass with :meth:`from_config` under ``name``; return ``cls``.

        Every subclass that has a ``function`` is registered when it is defined, by its module and qualified
        name (``"mypkg.inits.Halves"``). ``register`` adds a name of your choosing (default: that one), one
        that survives moving the class to another module, and :meth:`to_config` writes it from then on; the
        earlier names still load. The same name given again replaces a class of the same module and
        qualified name (a cell of a notebook run again).

        A built-in name can never be taken: torchinit's own class names, bare (``"Normal"``) or qualified
        (``"torchinit.schemes.initializers.Normal"``), and every name in the ``torchinit.`` namespace are a
        ValueError naming the built-in, as is a name another user class holds. ``cls`` must be an
        ``Initializer`` subclass with a ``function`` (else a TypeError), not one of torchinit's own.

        Example:
            >>> class Halves(Initializer):
            ...     __module__ = "mypkg.inits"  # as if defined there
            ...     function = staticmethod(lambda tensor, factor=0.5: tensor.fill_(factor))
            >>> Initializer.register(Halves, "mypkg.Halves") is Halves
            True
            >>> Halves().to_config()
            {'class': 'mypkg.Halves', 'config': {'factor': 0.5}}
            >>> type(Initializer.from_config({"class": "mypkg.Halves"})) is Halves
            True
            >>> Initializer.register(Halves, "Normal")
            Traceback (most recent call last):
            ...
            ValueError: register: the name 'Normal' is torchinit's built-in class Normal ...
        """
        if not (isinstance(cls, type) and issubclass(cls, Initializer) and hasattr(cls, "function")):
            raise TypeError(f"register: cls must be an Initializer subclass with a function; got {_brief(cls)}")
        if _is_torchinits(cls):
            raise ValueError(f"register: {cls.__name__} is one of torchinit's own classes; its names are fixed")
        name = cls.config_name() if name is None else name
        _check_user_name(cls, name)
        Initializer._registry[name] = cls
        _REGISTERED_AS[cls] = name
        return cls

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
        size0 = _dim0(self._settings)  # once: every probe has the same dim 0
        with _unrecorded():
            for probe in _probes(self._settings):
                try:
                    _run_on_probe(function, probe, self._settings, size0)
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
        """A strict-JSON dict: ``{"class": name, "config": {setting: value}}`` (``name``: :meth:`config_name`).

        ``...`` is written as the string ``"..."`` and tuples as lists; ``inf``, ``-inf`` and NaN as
        ``{"float": "inf"}``, ``{"float": "-inf"}`` and ``{"float": "nan"}``, and a complex number as
        ``{"complex": [real, imag]}`` (its parts written the same way), so ``json.dumps(config,
        allow_nan=False)`` works and :meth:`from_config` reads every value back. A setting that has no
        JSON form (a module or callable nonlinearity) is a TypeError; one beyond the bounds
        ``from_config`` reads (:data:`CONFIG_MAX_DEPTH`, :data:`CONFIG_MAX_SIZE`) a ValueError.

        Example:
            >>> TruncNormal(a=-math.inf, b=1.0).to_config()
            {'class': 'TruncNormal', 'config': {'mean': 0.0, 'std': 1.0, 'a': {'float': '-inf'}, 'b': 1.0}}
        """
        config = {}
        for name, value in self._settings.items():
            config[name] = _to_json(value, f"{type(self).__name__}.{name}", 2)
        budget, where = _Budget(), f"{type(self).__name__}.to_config(): config.config"
        budget.take(len(config) + sum(map(len, config)), where)  # as from_config counts: entries, names, values
        for name, value in config.items():  # what from_config would refuse is refused here, not written
            _decode(value, f"{where}.{name}", 2, budget)
        return {"class": type(self).config_name(), "config": config}

    @staticmethod
    def from_config(config: dict[str, Any]) -> Initializer:
        """The initializer described by ``config`` (the inverse of :meth:`to_config`).

        ``config`` is ``{"class": name, "config": {setting: value}}``; ``"config"`` may be left out (no
        settings), and no other key is read. ``name`` is looked up in this order:

        1. a built-in class by its bare name (``"Normal"``, what ``to_config`` writes and torchinit 0.1
           wrote) or its qualified one (``"torchinit.schemes.initializers.Normal"``; any name in the
           ``torchinit.`` namespace ending in a built-in's name). **A bare name shared by a built-in and a
           user class always means the built-in.**
        2. a user class by the name ``to_config`` writes (``module.QualName``, or the one given to
           :meth:`register`);
        3. the one user class whose own name is ``name``'s last part (configs written by torchinit 0.1, or
           in a script run as ``__main__``); two such classes are a ValueError naming both.

        Settings are JSON values: null, booleans, numbers, strings, lists (read as tuples), ``"..."`` for
        Ellipsis in ``in_dims``/``out_dims``, and the tagged numbers ``{"float": "inf" | "-inf" | "nan"}``
        and ``{"complex": [real, imag]}``; the class then validates them as its constructor does.

        Hostile input is refused in time linear in its size: a value deeper than :data:`CONFIG_MAX_DEPTH`
        (16) levels, a config larger than :data:`CONFIG_MAX_SIZE` (100,000: each dict entry and list item
        counts 1, each string also its length), a class name over 1000 characters and more than 64 dims in
        ``in_dims``/``out_dims``/``batch_dims`` (a tensor has at most 64) are ValueErrors. Every error is a
        ValueError or TypeError that names the field by its path (``config.class``,
        ``config.config.in_dims[3]``) and the valid values.

        Example:
            >>> Initializer.from_config({"class": "TruncNormal", "config": {"a": {"float": "-inf"}}})
            TruncNormal(a=-inf)
            >>> Initializer.from_config({"class": "Normal", "config": {"sdt": 0.1}})
            Traceback (most recent call last):
            ...
            ValueError: config.config: unknown setting 'sdt' of Normal; its settings are mean, std
        """
        budget = _Budget()
        cls = _registered(_class_of(config))
        settings = _settings_of(cls, config.get("config", {}), budget)
        try:
            return cls(**settings)
        except (ValueError, TypeError) as err:  # the class's own check: say where in the config it was
            kind = TypeError if isinstance(err, TypeError) else ValueError
            raise kind(f"config.config: {err}") from None


def _is_torchinits(cls: type) -> bool:
    """Whether ``cls`` is defined in torchinit (and so one of its built-in classes)."""
    return cls.__module__.split(".")[0] == "torchinit"


def _register_defined(cls: type[Initializer]) -> None:
    """Register a class when it is defined: torchinit's own under their reserved names, a user's by
    ``module.QualName`` (never a built-in's: those are bare or in the ``torchinit.`` namespace, and a class
    of that namespace is torchinit's). A class claiming a name a built-in holds is a ValueError: it is not
    defined."""
    if not _is_torchinits(cls):
        Initializer._registry[cls.config_name()] = cls
        return
    names = (cls.__name__, f"{cls.__module__}.{cls.__qualname__}")
    for name in names:
        held = _BUILTINS.get(name)
        if held is not None and held is not cls:
            raise ValueError(f"the name {name!r} is torchinit's built-in class {_described(held)}; none can replace it")
    for name in names:
        _BUILTINS[name] = cls
    Initializer._registry[cls.__name__] = cls


def _check_user_name(cls: type[Initializer], name: Any) -> None:
    """Refuse a name for a user class that is not a string, is a built-in's or another user class's."""
    if not isinstance(name, str) or not 0 < len(name) <= _MAX_CLASS_NAME:
        raise TypeError(f"register: name must be a string of 1 to {_MAX_CLASS_NAME} characters; got {_brief(name)}")
    held = _builtin_named(name)
    if held is not None or name == "torchinit" or name.startswith("torchinit."):
        what = f"torchinit's built-in class {_described(held)}" if held else "in torchinit's namespace"
        raise ValueError(
            f"register: the name {name!r} is {what}; a user class cannot take it: "
            f"give it a name of its own, e.g. {f'mypkg.{cls.__name__}'!r}"
        )
    other = Initializer._registry.get(name)
    if other is not None and (other.__module__, other.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"register: the name {name!r} is already {_described(other)}'s; give {cls.__name__} another")


def _described(cls: type) -> str:
    return f"{cls.__name__} ({cls.__module__}.{cls.__qualname__})"


def _builtin_named(name: str) -> type[Initializer] | None:
    """The built-in class ``name`` means: by a name it holds, or ``torchinit.<...>.Name`` for a bare name."""
    held = _BUILTINS.get(name)
    if held is None and name.startswith("torchinit."):
        held = _BUILTINS.get(name.rsplit(".", 1)[-1])
    return held


def _class_of(config: Any) -> Any:
    """``config["class"]``, once ``config`` is a dict with that key and no key besides "class" and "config"."""
    if not isinstance(config, dict):
        raise TypeError(
            "config must be a dict {'class': name, 'config': {setting: value}}, as to_config() writes; "
            f"got {_brief(config)}"
        )
    for key in config:  # stops at the first stray key: a dict of a million keys costs no more than one
        if not (isinstance(key, str) and key in ("class", "config")):
            raise ValueError(f"config: unknown key {_brief(key)}; a config's keys are 'class' and 'config'")
    if "class" not in config:
        raise ValueError("config must have a 'class' key naming the initializer class, as to_config() writes")
    return config["class"]


def _registered(name: Any) -> type[Initializer]:
    """The class ``name`` means (see :meth:`Initializer.from_config` for the order)."""
    registry = Initializer._registry
    if not isinstance(name, str) or len(name) > _MAX_CLASS_NAME:
        raise ValueError(
            f"config.class: unknown initializer class {_brief(name)}: a class is named by a string of at "
            f"most {_MAX_CLASS_NAME} characters; known: {', '.join(registry)}"
        )
    held = _builtin_named(name) or registry.get(name)
    if held is not None:
        return held
    short = name.rsplit(".", 1)[-1]
    builtins = set(_BUILTINS.values())
    users = {id(c): c for c in registry.values() if c not in builtins and c.__name__ == short}
    if len(users) == 1:
        return next(iter(users.values()))
    if users:
        named = ", ".join(c.config_name() for c in users.values())
        raise ValueError(f"config.class: {name!r} is ambiguous: it may be {named}")
    raise ValueError(f"config.class: unknown initializer class {name!r}; known: {', '.join(registry)}")


def _settings_of(cls: type[Initializer], settings: Any, budget: _Budget) -> dict[str, Any]:
    """``config["config"]`` read as keyword arguments of ``cls``: known names, every required one, values decoded."""
    params = cls._signature().parameters
    takes = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    listed = f"its settings are {', '.join(takes) or 'none'}"
    if not isinstance(settings, dict):
        raise TypeError(f"config.config must be a dict {{setting: value}} of {cls.__name__}; {listed}; "
                        f"got {_brief(settings)}")  # fmt: skip
    budget.take(len(settings), "config.config")
    open_ended = any(p.kind is p.VAR_KEYWORD for p in params.values())
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if not isinstance(key, str) or (key not in takes and not open_ended):
            raise ValueError(f"config.config: unknown setting {_brief(key)} of {cls.__name__}; {listed}")
        budget.take(len(key), "config.config")
        out[key] = _decode_setting(key, value, f"config.config.{key}", budget)
    missing = [n for n in takes if params[n].default is inspect.Parameter.empty and n not in out]
    if missing:
        raise ValueError(f"config.config: {cls.__name__} needs the setting(s) {', '.join(missing)}; {listed}")
    return out


class _Budget:
    """What is left of :data:`CONFIG_MAX_SIZE` while one config is read."""

    def __init__(self) -> None:
        self.left = CONFIG_MAX_SIZE

    def take(self, cost: int, path: str) -> None:
        self.left -= cost
        if self.left < 0:
            raise ValueError(
                f"{path}: the config is larger than {CONFIG_MAX_SIZE} (each dict entry and list item counts 1, "
                "each string also its length)"
            )


#: What a config value may be, for error messages.
_VALUES = (
    "config values are null, booleans, numbers, strings, lists and the tagged numbers "
    '{"float": "inf" | "-inf" | "nan"} and {"complex": [real, imag]}'
)
_NONFINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def _decode(value: Any, path: str, depth: int, budget: _Budget) -> Any:
    """A config value as a setting: lists as tuples, tagged numbers as numbers. ``depth``: where it sits."""
    if depth > CONFIG_MAX_DEPTH:
        raise ValueError(f"{path}: the config nests deeper than {CONFIG_MAX_DEPTH} levels")
    if isinstance(value, str):
        budget.take(len(value), path)
        return value
    if value is None or isinstance(value, (bool, int, float, complex)):
        return value
    if isinstance(value, (list, tuple)):
        budget.take(len(value), path)  # before reading any item: a list of a million costs nothing
        return tuple(_decode(v, f"{path}[{i}]", depth + 1, budget) for i, v in enumerate(value))
    if isinstance(value, dict):
        budget.take(len(value), path)
        return _decode_tagged(value, path, depth, budget)
    raise TypeError(f"{path}: a {type(value).__name__} is not a config value; {_VALUES}")


def _decode_tagged(value: dict[Any, Any], path: str, depth: int, budget: _Budget) -> float | complex:
    """``{"float": "inf" | "-inf" | "nan"}`` or ``{"complex": [real, imag]}`` as its number; other dicts are refused."""
    if len(value) == 1 and "float" in value:
        text = value["float"]
        if isinstance(text, str) and text in _NONFINITE:
            return _NONFINITE[text]
        raise ValueError(f'{path}.float must be "inf", "-inf" or "nan"; got {_brief(text)}')
    if len(value) == 1 and "complex" in value:
        parts = _decode(value["complex"], f"{path}.complex", depth + 1, budget)
        if isinstance(parts, tuple) and len(parts) == 2 and all(_is_real(p) for p in parts):
            return complex(*parts)
        raise ValueError(f"{path}.complex must be [real, imag], two real numbers; got {_brief(value['complex'])}")
    what = "an initializer's config" if "class" in value else "a dict"
    raise TypeError(f"{path}: {what} is not a setting value; {_VALUES}")


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _decode_setting(name: str, value: Any, path: str, budget: _Budget) -> Any:
    """One setting's value; the dims settings hold at most ``MAX_DIMS`` ints, ``"..."`` meaning Ellipsis."""
    if name in _DIMS_NAMED and isinstance(value, (list, tuple)) and len(value) > MAX_DIMS:
        raise ValueError(f"{path}: {len(value)} dims; a tensor has at most {MAX_DIMS} dims, each named once")
    decoded = _decode(value, path, 2, budget)
    if name in _DIMS_SETTINGS and decoded == "...":
        return ...
    if name in _DIMS_NAMED and isinstance(decoded, tuple):
        for i, d in enumerate(decoded):
            if not _is_real(d) or isinstance(d, float):
                raise TypeError(f"{path}[{i}] must be an int (a dim of the tensor); got {_brief(d)}")
    return decoded


#: Short reprs of what a config holds, however large or deep (error messages quote it).
_BRIEF = reprlib.Repr()
_BRIEF.maxlevel, _BRIEF.maxstring, _BRIEF.maxother = 3, 60, 60
_BRIEF.maxlist = _BRIEF.maxtuple = _BRIEF.maxdict = _BRIEF.maxset = 4


def _brief(value: Any) -> str:
    """``repr(value)`` cut short for messages (JSON-like values; anything else by its type)."""
    if value is None or isinstance(value, (bool, int, float, complex, str, list, tuple, dict)):
        return _BRIEF.repr(value)
    return f"a {type(value).__name__}"


#: The dtypes settings are probed with: float64 holds every float32/bf16/fp16 value (tightest bounds checks);
#: complex and bool tensors take fill values float ones refuse (``Constant(1j)``, ``Constant(True)``).
_PROBE_DTYPES = (torch.float64, torch.complex128, torch.bool)
_MAX_DIMS = 64  # torch's limit on a tensor's dims
_TAKES_PROBE: dict[tuple[Callable[..., Any], int, torch.dtype], bool] = {}


def _ints(value: Any) -> Iterator[int]:
    """The ints in a setting (bools excluded), looking into tuples and lists (each once: no recursion, so a
    deep or self-containing list costs its size, not a RecursionError)."""
    stack, seen = [value], set()
    while stack:
        v = stack.pop()
        if isinstance(v, (tuple, list)):
            if id(v) not in seen:
                seen.add(id(v))
                stack.extend(reversed(v))
        elif isinstance(v, int) and not isinstance(v, bool):
            yield v


def _probes(settings: dict[str, Any]) -> Iterator[tuple[int, torch.dtype]]:
    """(dims, dtype) of the meta tensors ``settings`` are tried on, most common first."""
    ints = [i for v in settings.values() for i in _ints(v)]
    needed = [i + 1 if i >= 0 else -i for i in ints]  # the dims a tensor needs for dim i to exist
    most = min(_MAX_DIMS, max([5] + [n + 1 for n in needed if n < _MAX_DIMS]))
    for dtype in _PROBE_DTYPES:
        for ndim in (2, 3, 4, 5, 1, *range(6, most + 1)):
            yield ndim, dtype


def _dim0(settings: dict[str, Any]) -> int:
    """The least common multiple of the positive int settings, or 1 when it reaches 2**40 (no tensor is that
    long). Stops there: the multiple of thousands of ints would have as many digits, at quadratic cost."""
    size = 1
    for i in (i for v in settings.values() for i in _ints(v) if i > 0):
        size = math.lcm(size, i)
        if size >= 2**40:
            return 1
    return size


def _run_on_probe(
    function: Callable[..., Any], probe: tuple[int, torch.dtype], settings: dict[str, Any], size0: int = 1
) -> None:
    """Run ``function`` on a meta tensor of the probe's dims and dtype, dim 0 ``size0`` and the others 1."""
    ndim, dtype = probe
    with quiet():  # the real call warns
        function(torch.empty((size0,) + (1,) * (ndim - 1), dtype=dtype, device="meta"), **settings)


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
    """Settings equality: 1 == 1.0, but True is not 1; NaN is NaN (a setting equals itself); sequences
    elementwise."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (float, complex)) and isinstance(b, (float, complex)):
        return _same_number(a, b)
    try:
        return bool(a == b)
    except (TypeError, RuntimeError):  # e.g. objects whose == is not a bool
        return a is b


def _same_number(a: float | complex, b: float | complex) -> bool:
    """``a == b``, NaN equal to NaN (in each part of a complex number)."""
    a, b = complex(a), complex(b)
    return all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in ((a.real, b.real), (a.imag, b.imag)))


def _show(value: Any) -> str:
    return "..." if value is ... else repr(value)


def _to_json(value: Any, where: str, depth: int) -> Any:
    """``value`` in strict JSON (see :meth:`Initializer.to_config`); ``depth``: where it sits in the config."""
    if depth > CONFIG_MAX_DEPTH:  # before recursing further: a deep list is a ValueError, not a RecursionError
        raise ValueError(f"{where}: nests deeper than a config may ({CONFIG_MAX_DEPTH} levels)")
    if value is ...:
        return "..."
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": "nan" if math.isnan(value) else "inf" if value > 0 else "-inf"}
    if isinstance(value, complex):
        return {"complex": [_to_json(part, where, depth + 2) for part in (value.real, value.imag)]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        return [_to_json(v, where, depth + 1) for v in value]
    raise TypeError(f"{where}={value!r} has no JSON form; to_config() needs numbers, strings, None, ... or lists")


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
