"""Initializer configs on hostile input: built-in class names that no user class can take, bounded and
linear-time reading, a ValueError/TypeError naming the field for every malformed config, and strict JSON out
(non-finite floats and complex numbers tagged), round-tripping every built-in with extreme settings."""

from __future__ import annotations

import contextlib
import json
import math
import sys
import types
from typing import Any

import pytest
import torch
from fuzz_profiles import PROFILE
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import torchinit as ti
from torchinit.schemes import initializers
from torchinit.schemes.initializers import CONFIG_MAX_DEPTH, CONFIG_MAX_SIZE, Initializer
from torchinit.schemes.layout import MAX_DIMS

#: torchinit's own classes from_config can build (the schemes' objects and the presets' TorchReset, ...).
BUILTINS = sorted(set(initializers._BUILTINS.values()), key=lambda cls: cls.__name__)
#: A value for each required setting, so every built-in can be built.
REQUIRED = {"val": 0.5, "sparsity": 0.5}


@pytest.fixture
def registry():
    """The registry as it was: the classes a test defines or registers are gone after it."""
    saved = dict(Initializer._registry), dict(initializers._REGISTERED_AS)
    yield
    for table, before in zip((Initializer._registry, initializers._REGISTERED_AS), saved):
        table.clear()
        table.update(before)


def _required(cls: type[Initializer]) -> dict[str, Any]:
    params = cls._signature().parameters
    missing = [n for n, p in params.items() if p.default is p.empty and n not in REQUIRED]
    assert not missing, f"{cls.__name__}: give REQUIRED a value for {missing}"
    return {n: REQUIRED[n] for n, p in params.items() if p.default is p.empty}


def _roundtrip(init: Initializer) -> Initializer:
    text = json.dumps(init.to_config(), allow_nan=False)  # strict JSON: raises on inf and NaN
    return Initializer.from_config(json.loads(text))


def _nested(depth: int, leaf: Any, wrap) -> Any:
    """``leaf`` inside ``depth`` levels of ``wrap``, built without recursion."""
    value = leaf
    for _ in range(depth):
        value = wrap(value)
    return value


# --- class names ---------------------------------------------------------------------------------------------


def test_the_builtins_are_the_public_classes_and_the_presets():
    names = {cls.__name__ for cls in BUILTINS}
    public = {n for n in initializers.__all__ if n != "Initializer"}
    assert public <= names and names - public == {"TorchReset", "TorchWeight", "TorchBias"}


@pytest.mark.parametrize("cls", BUILTINS, ids=lambda c: c.__name__)
def test_a_builtin_loads_by_its_bare_and_its_qualified_names(cls):
    config = cls(**_required(cls)).to_config()
    assert config["class"] == cls.__name__  # what to_config writes, and torchinit 0.1 wrote
    for name in (cls.__name__, f"{cls.__module__}.{cls.__qualname__}", f"torchinit.{cls.__name__}"):
        assert type(Initializer.from_config({**config, "class": name})) is cls, name


def test_a_users_class_of_a_builtins_name_never_replaces_it(registry):
    class Normal(Initializer):
        function = staticmethod(ti.zeros_)

    qualified = f"{__name__}.{Normal.__qualname__}"
    assert Normal().to_config() == {"class": qualified, "config": {}}
    assert type(Initializer.from_config({"class": qualified})) is Normal
    # the bare name is the built-in's, also with a user class of that name registered
    assert type(Initializer.from_config({"class": "Normal"})) is ti.Normal
    assert Initializer._registry["Normal"] is ti.Normal


def test_a_class_claiming_a_builtins_name_is_refused_naming_it(registry):
    with pytest.raises(ValueError, match=r"'Normal' is torchinit's built-in class Normal"):

        class Normal(Initializer):
            __module__ = "torchinit.schemes.initializers"  # pretends to be the built-in
            function = staticmethod(ti.zeros_)

    with pytest.raises(ValueError, match=r"'torchinit\.schemes\.initializers\.Normal' is torchinit's built-in"):

        class Other(Initializer):
            __module__ = "torchinit.schemes.initializers"
            __qualname__ = "Normal"  # a new bare name, but the built-in's qualified one
            function = staticmethod(ti.zeros_)

    assert "Other" not in initializers._BUILTINS and "Other" not in Initializer._registry  # nothing half-done
    for name in ("Normal", "torchinit.schemes.initializers.Normal"):
        assert initializers._BUILTINS[name] is ti.Normal
        assert type(Initializer.from_config({"class": name})) is ti.Normal


def test_an_entry_written_into_the_registry_does_not_take_a_builtin_name(registry):
    class Zeros(Initializer):
        function = staticmethod(ti.ones_)

    Initializer._registry["Zeros"] = Zeros  # bypassing every check
    Initializer._registry["torchinit.schemes.initializers.Zeros"] = Zeros
    assert type(Initializer.from_config({"class": "Zeros"})) is ti.Zeros
    assert type(Initializer.from_config({"class": "torchinit.schemes.initializers.Zeros"})) is ti.Zeros


def test_register_gives_a_user_class_a_name_of_its_own(registry):
    class Halves(Initializer):
        function = staticmethod(lambda tensor, factor=0.5: tensor.fill_(factor))

    old = Halves().to_config()["class"]
    assert old == f"{__name__}.{Halves.__qualname__}"
    assert Initializer.register(Halves, "mypkg.Halves") is Halves
    assert Halves(0.25).to_config() == {"class": "mypkg.Halves", "config": {"factor": 0.25}}
    for name in ("mypkg.Halves", old, "Halves"):  # the new name, the old one, the unambiguous bare one
        assert Initializer.from_config({"class": name, "config": {"factor": 0.25}}) == Halves(0.25)
    assert Initializer.register(Halves, "mypkg.Halves") is Halves  # again: nothing changes

    class Again(Initializer):  # the same module and qualified name: a notebook cell run again
        __qualname__ = Halves.__qualname__
        function = staticmethod(lambda tensor, factor=0.5: tensor.fill_(factor))

    Initializer.register(Again, "mypkg.Halves")
    assert type(Initializer.from_config({"class": "mypkg.Halves"})) is Again


@pytest.mark.parametrize(
    "name,named",
    [
        ("Normal", "built-in class Normal"),
        ("torchinit.schemes.initializers.Normal", "built-in class Normal"),
        ("torchinit.Normal", "built-in class Normal"),
        ("torchinit.model.presets.TorchReset", "built-in class TorchReset"),
        ("torchinit.mine", "torchinit's namespace"),
        ("torchinit", "torchinit's namespace"),
    ],
)
def test_register_refuses_a_builtin_name(registry, name, named):
    class Mine(Initializer):
        function = staticmethod(ti.zeros_)

    with pytest.raises(ValueError, match=f"{name!r} is .*{named}") as info:
        Initializer.register(Mine, name)
    assert "mypkg.Mine" in str(info.value)  # what to do instead
    assert type(Initializer.from_config({"class": "Normal"})) is ti.Normal
    assert Mine.config_name() == f"{__name__}.{Mine.__qualname__}"


def test_register_refuses_what_it_cannot_register(registry):
    class Mine(Initializer):
        function = staticmethod(ti.zeros_)

    class Theirs(Initializer):
        function = staticmethod(ti.ones_)

    Initializer.register(Theirs, "shared.Name")
    with pytest.raises(ValueError, match=r"'shared\.Name' is already Theirs"):
        Initializer.register(Mine, "shared.Name")
    with pytest.raises(ValueError, match="torchinit's own classes"):
        Initializer.register(ti.Normal, "mypkg.Normal")
    for bad in (Mine(), int, nn.Linear, Initializer):
        with pytest.raises(TypeError, match="Initializer subclass with a function"):
            Initializer.register(bad)  # type: ignore[arg-type]  # on purpose
    for name in ("", 3, "x" * 1001):
        with pytest.raises(TypeError, match="name must be a string of 1 to 1000"):
            Initializer.register(Mine, name)  # type: ignore[arg-type]  # on purpose


def test_a_bare_name_of_two_user_classes_is_ambiguous_and_one_of_a_builtin_is_the_builtin(registry):
    def make(module):
        return type("Eye", (Initializer,), {"__module__": module, "function": staticmethod(ti.zeros_)})

    first, second = make("pkg_a.inits"), make("pkg_b.inits")
    assert type(Initializer.from_config({"class": "pkg_a.inits.Eye"})) is first
    assert type(Initializer.from_config({"class": "pkg_b.inits.Eye"})) is second
    assert type(Initializer.from_config({"class": "Eye"})) is ti.Eye
    with pytest.raises(ValueError, match=r"config\.class: 'elsewhere\.Eye' is ambiguous: .*pkg_a.*pkg_b"):
        Initializer.from_config({"class": "elsewhere.Eye"})


# --- malformed configs ---------------------------------------------------------------------------------------

KNOWN = "known: Uniform, Normal"
VALUES = "config values are null, booleans, numbers, strings, lists"
NORMAL_SETTINGS = "its settings are mean, std"


def of(cls: str, **settings: Any) -> dict[str, Any]:
    """The config of ``cls`` with ``settings``."""
    return {"class": cls, "config": settings}


IN_BOTH = "config.config: Glass: dims [0] are named in both in_dims and out_dims"
FLOAT_TAGS = 'config.config.std.float must be "inf", "-inf" or "nan"'

# (config, error, what the message says: the field's path, then the valid values)
MALFORMED: list[tuple[Any, type[Exception], list[str]]] = [
    (None, TypeError, ["config must be a dict {'class'"]),
    (["Normal"], TypeError, ["config must be a dict", "got ['Normal']"]),
    ("Normal", TypeError, ["config must be a dict"]),
    (3, TypeError, ["config must be a dict"]),
    ({}, ValueError, ["'class' key"]),
    ({"config": {}}, ValueError, ["'class' key"]),
    ({"class": "Normal", "extra": 1}, ValueError, ["config: unknown key 'extra'", "'class' and 'config'"]),
    ({"class": "Normal", 1: 1}, ValueError, ["config: unknown key 1"]),
    ({"class": ["Normal"]}, ValueError, ["config.class: unknown initializer class ['Normal']", "string", KNOWN]),
    ({"class": None}, ValueError, ["config.class: unknown initializer class None", KNOWN]),
    ({"class": {"class": "Normal"}}, ValueError, ["config.class: unknown", KNOWN]),
    ({"class": 1.5}, ValueError, ["config.class", KNOWN]),
    ({"class": "Nromal"}, ValueError, ["config.class: unknown initializer class 'Nromal'", KNOWN]),
    ({"class": "os.system"}, ValueError, ["config.class: unknown initializer class 'os.system'", KNOWN]),
    ({"class": ""}, ValueError, ["config.class: unknown initializer class ''", KNOWN]),
    ({"class": "Normal", "config": "std"}, TypeError, ["config.config must be a dict", NORMAL_SETTINGS]),
    ({"class": "Normal", "config": ["std", 1.0]}, TypeError, ["config.config must be a dict", NORMAL_SETTINGS]),
    ({"class": "Normal", "config": None}, TypeError, ["config.config must be a dict", NORMAL_SETTINGS]),
    (of("Normal", sdt=1.0), ValueError, ["config.config: unknown setting 'sdt'", NORMAL_SETTINGS]),
    ({"class": "Normal", "config": {1: 1.0}}, ValueError, ["config.config: unknown setting 1 of Normal"]),
    (of("Normal", generator=1), ValueError, ["unknown setting 'generator'", NORMAL_SETTINGS]),
    (of("Zeros", val=1), ValueError, ["unknown setting 'val' of Zeros", "settings are none"]),
    (of("Constant"), ValueError, ["config.config: Constant needs the setting(s) val", "settings are val"]),
    (of("Sparse", std=0.1), ValueError, ["Sparse needs the setting(s) sparsity"]),
    (of("Normal", std="big"), TypeError, ["config.config: Normal: std must be a real number"]),
    (of("Normal", std=None), TypeError, ["config.config: Normal: std"]),
    (of("Normal", std=[1.0]), TypeError, ["config.config: Normal: std"]),
    (of("Normal", std=-1.0), ValueError, ["config.config: Normal: std"]),
    (of("KaimingNormal", mode="fan"), ValueError, ["config.config: KaimingNormal: mode", "fan_in"]),
    (of("Normal", std={"std": 1}), TypeError, ["config.config.std: a dict is not", VALUES]),
    (of("Normal", std={"class": "Normal"}), TypeError, ["config.config.std: an initializer's config", VALUES]),
    (of("Normal", std={"float": "Infinity"}), ValueError, [FLOAT_TAGS]),
    (of("Normal", std={"float": 1.0}), ValueError, [FLOAT_TAGS]),
    (of("Normal", std={"float": "inf", "x": 1}), TypeError, ["config.config.std: a dict", VALUES]),
    (of("Constant", val={"complex": [1.0]}), ValueError, ["config.config.val.complex must be [real, imag]"]),
    (of("Constant", val={"complex": [1.0, "2"]}), ValueError, ["config.config.val.complex must be"]),
    (of("Constant", val={"complex": [True, 1]}), ValueError, ["config.config.val.complex must be"]),
    (of("Constant", val={"complex": 1.0}), ValueError, ["config.config.val.complex must be"]),
    (of("Constant", val={"complex": [[1.0], 2.0]}), ValueError, ["config.config.val.complex must be"]),
    (of("Constant", val={"complex": [1.0, {"float": "Inf"}]}), ValueError, ["config.config.val.complex[1].float"]),
    (of("Constant", val=b"1"), TypeError, ["config.config.val: a bytes is not a config value", VALUES]),
    (of("Constant", val={1, 2}), TypeError, ["config.config.val: a set is not", VALUES]),
    (of("Constant", val=object()), TypeError, ["config.config.val: a object is not", VALUES]),
    (of("Glass", in_dims=[0, 1, 2, "3"]), TypeError, ["config.config.in_dims[3] must be an int"]),
    (of("Glass", in_dims=[0, True]), TypeError, ["config.config.in_dims[1] must be an int"]),
    (of("Glass", in_dims=[1.0]), TypeError, ["config.config.in_dims[0] must be an int"]),
    (of("Glass", in_dims=[[1]]), TypeError, ["config.config.in_dims[0] must be an int"]),
    (of("Glass", out_dims=[0, "..."]), TypeError, ["config.config.out_dims[1] must be an int"]),
    (of("KaimingNormal", batch_dims=[None]), TypeError, ["config.config.batch_dims[0]"]),
    (of("Glass", in_dims=list(range(MAX_DIMS + 1))), ValueError, ["config.config.in_dims: 65 dims", "at most 64"]),
    (of("Glass", in_dims=0, out_dims=0), ValueError, [IN_BOTH]),
    (of("Glass", in_dims="1"), TypeError, ["config.config: Glass: in_dims"]),
]


@pytest.mark.parametrize("config,error,says", MALFORMED, ids=[str(i) for i in range(len(MALFORMED))])
def test_a_malformed_config_names_the_field_and_the_valid_values(config, error, says):
    with pytest.raises((ValueError, TypeError)) as info:
        Initializer.from_config(config)
    assert type(info.value) is error, info.value
    message = str(info.value)
    for part in says:
        assert part in message, (part, message)


def test_wrong_types_at_every_field_of_every_builtin_are_refused():
    """Each setting of each built-in given a value of a type it never takes: an error naming the setting."""
    for cls in BUILTINS:
        for name in cls._signature().parameters:
            for junk in ({"not": "a number"}, b"bytes", [[[["deep"]]]], {1, 2}):
                config = {"class": cls.__name__, "config": {**_required(cls), name: junk}}
                with pytest.raises((ValueError, TypeError)) as info:
                    Initializer.from_config(config)
                assert f"config.config.{name}" in str(info.value) or f"{name}" in str(info.value), info.value


# --- size bombs: refused before they are read, so fast (asserted on the exception, never on time) ---------------


def test_a_megabyte_of_in_dims_is_refused():
    text = json.dumps({"class": "KaimingNormal", "config": {"in_dims": list(range(200_000)), "out_dims": 0}})
    assert len(text) > 1_000_000
    with pytest.raises(ValueError, match=r"config\.config\.in_dims: 200000 dims; a tensor has at most 64"):
        Initializer.from_config(json.loads(text))


def test_a_megabyte_list_string_or_dict_anywhere_else_is_refused():
    big_list = [0.5] * 1_000_000
    for config in (
        {"class": "Constant", "config": {"val": big_list}},
        {"class": "Constant", "config": {"val": "x" * 1_000_000}},
        {"class": "Constant", "config": {"val": {"complex": big_list}}},
        {"class": "Constant", "config": dict.fromkeys(map(str, range(CONFIG_MAX_SIZE + 1)), 1)},
    ):
        with pytest.raises(ValueError, match=f"config is larger than {CONFIG_MAX_SIZE}"):
            Initializer.from_config(config)
    with pytest.raises(ValueError, match="unknown key"):
        Initializer.from_config({"class": "Normal", **dict.fromkeys(map(str, range(100_000)))})
    with pytest.raises(ValueError, match="at most 1000 characters"):
        Initializer.from_config({"class": "Normal" * 200_000})


def test_many_small_values_together_are_refused():
    """No one list is too long, but together they are more than CONFIG_MAX_SIZE."""
    rows = [[0.5] * 1000 for _ in range(CONFIG_MAX_SIZE // 1000 + 1)]
    with pytest.raises(ValueError, match="config is larger than"):
        Initializer.from_config({"class": "Constant", "config": {"val": rows}})


@pytest.mark.parametrize(
    "wrap",
    [
        lambda v: [v],
        lambda v: {"complex": [v, 0.0]},
        lambda v: (v,),
    ],
    ids=["lists", "complex", "tuples"],
)
@pytest.mark.parametrize("setting", ["val", "in_dims"])
def test_ten_thousand_levels_of_nesting_are_refused(wrap, setting):
    deep = _nested(10_000, 0.5, wrap)
    cls = "Constant" if setting == "val" else "Glass"
    with pytest.raises(ValueError, match=f"nests deeper than {CONFIG_MAX_DEPTH} levels"):
        Initializer.from_config({"class": cls, "config": {setting: deep}})


def test_deep_dicts_and_cycles_are_refused():
    deep_floats = _nested(10_000, "inf", lambda v: {"float": v})
    with pytest.raises(ValueError, match=r"config\.config\.val\.float must be"):
        Initializer.from_config({"class": "Constant", "config": {"val": deep_floats}})
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(ValueError, match="nests deeper than"):
        Initializer.from_config({"class": "Constant", "config": {"val": cycle}})
    loop: dict[str, Any] = {"complex": [0.0, 0.0]}
    loop["complex"][0] = loop
    with pytest.raises(ValueError, match="nests deeper than"):
        Initializer.from_config({"class": "Constant", "config": {"val": loop}})


def test_the_bounds_admit_what_to_config_writes_at_their_edges():
    at_depth = _nested(CONFIG_MAX_DEPTH - 2, 0.5, lambda v: [v])  # the setting is at level 2
    with pytest.raises((ValueError, TypeError)) as info:
        Initializer.from_config({"class": "Constant", "config": {"val": at_depth}})
    assert "deeper" not in str(info.value) and "config.config: Constant: val" in str(info.value)
    with pytest.raises(ValueError, match="deeper"):
        Initializer.from_config({"class": "Constant", "config": {"val": [at_depth]}})
    dims = tuple(range(1, MAX_DIMS))
    init = ti.KaimingNormal(in_dims=dims, out_dims=0)  # 63 + 1 dims: a 64-dim tensor's
    assert _roundtrip(init) == init


def test_constructing_with_a_huge_dims_list_is_refused_by_its_length():
    """Not from a config: the function's own check (layout.dim_tuple) refuses more than 64 dims at once."""
    with pytest.raises(ValueError, match=r"KaimingNormal: in_dims names 300000 dims; a tensor has at most 64"):
        ti.KaimingNormal(in_dims=list(range(300_000)), out_dims=0)
    with pytest.raises(ValueError, match=r"out_dims names 65 dims"):
        ti.fans(torch.empty(2, 2), out_dims=[0] * 65)


def test_probing_settings_reads_each_int_once(monkeypatch, registry):
    """Building an object computes dim 0 of its probes once, and stops at 2**40: thousands of ints are not
    multiplied into a number of thousands of digits for each of ~200 probes (linear, not quadratic)."""
    calls = []
    lcm = math.lcm
    fake_math = types.SimpleNamespace(**{n: getattr(math, n) for n in dir(math) if not n.startswith("_")})
    fake_math.lcm = lambda *a: calls.append(a) or lcm(*a)
    monkeypatch.setattr(initializers, "math", fake_math)
    dim0 = []
    real_dim0 = initializers._dim0
    monkeypatch.setattr(initializers, "_dim0", lambda s: dim0.append(1) or real_dim0(s))

    class Many(Initializer):
        function = staticmethod(lambda tensor, sizes=(1,): tensor)

    primes = [p for p in range(2, 20_000) if all(p % q for q in range(2, math.isqrt(p) + 1))]
    Many(sizes=tuple(primes))
    assert len(dim0) == 1
    assert len(calls) < 20  # the product of the first primes passes 2**40 after a dozen
    assert real_dim0({"sizes": tuple(primes)}) == 1
    assert real_dim0({"a": (4, 6), "b": 10, "c": -3, "d": True}) == 60


# --- strict JSON out, and back -----------------------------------------------------------------------------------

EXTREME_FLOATS = [math.inf, -math.inf, math.nan, sys.float_info.max, -sys.float_info.max, 5e-324, -0.0, 1e-300]


def _extreme_cases() -> list[Initializer]:
    """Every built-in with its defaults, then each float setting at each extreme it accepts."""
    cases = []
    for cls in BUILTINS:
        base = _required(cls)
        cases.append(cls(**base))
        for name, param in cls._signature().parameters.items():
            if isinstance(base.get(name, param.default), float):
                for value in EXTREME_FLOATS:
                    with contextlib.suppress(ValueError, TypeError):  # not a value this setting takes
                        cases.append(cls(**{**base, name: value}))
    cases += [
        ti.TruncNormal(a=-math.inf, b=math.inf),
        ti.Constant(complex(1.5, -2.5)),
        ti.Constant(complex(sys.float_info.max, -0.0)),
        ti.Constant(2**62),
        ti.Constant(True),
        ti.Glass(in_dims=..., out_dims=(0,)),
        ti.KaimingNormal(nonlinearity="leaky_relu", a=1e300, batch_dims=(0,)),
    ]
    return cases


EXTREMES = _extreme_cases()


def test_the_extremes_include_the_infinities():
    assert any(isinstance(v, float) and math.isinf(v) for init in EXTREMES for v in init.settings.values())
    assert {type(init) for init in EXTREMES} == set(BUILTINS)


@pytest.mark.parametrize("init", EXTREMES, ids=repr)
def test_every_builtin_round_trips_through_strict_json(init):
    back = _roundtrip(init)
    assert type(back) is type(init) and back == init and repr(back) == repr(init)
    for name, value in init.settings.items():  # bit for bit: -0.0 stays -0.0
        if isinstance(value, float):
            assert math.copysign(1, back.settings[name]) == math.copysign(1, value), name


def test_non_finite_floats_and_complex_numbers_are_tagged(registry):
    assert ti.TruncNormal(a=-math.inf, b=math.inf).to_config()["config"] == {
        "mean": 0.0, "std": 1.0, "a": {"float": "-inf"}, "b": {"float": "inf"},
    }  # fmt: skip
    assert ti.Constant(1 + 2j).to_config()["config"] == {"val": {"complex": [1.0, 2.0]}}

    class Anything(Initializer):  # a user class that takes NaN: tagged too, and equal to itself again
        function = staticmethod(lambda tensor, x=0.0, xs=(): tensor)

    init = Anything(x=math.nan, xs=(math.inf, complex(math.nan, -math.inf), [1, "a"]))
    config = init.to_config()
    assert config["config"] == {
        "x": {"float": "nan"},
        "xs": [{"float": "inf"}, {"complex": [{"float": "nan"}, {"float": "-inf"}]}, [1, "a"]],
    }
    assert _roundtrip(init) == init and init == init


def test_to_config_refuses_what_from_config_would(registry):
    class Holder(Initializer):
        function = staticmethod(lambda tensor, value=None: tensor)

    with pytest.raises(ValueError, match=f"nests deeper than a config may \\({CONFIG_MAX_DEPTH}"):
        Holder(value=_nested(10_000, 1, lambda v: [v])).to_config()
    with pytest.raises(ValueError, match=r"Holder\.to_config\(\): config\.config\.value: the config is larger"):
        Holder(value=[0] * (CONFIG_MAX_SIZE + 1)).to_config()
    with pytest.raises(TypeError, match=r"Holder\.value=\{1: 2\} has no JSON form"):
        Holder(value={1: 2}).to_config()
    with pytest.raises(TypeError, match=r"nonlinearity=SiLU\(\) has no JSON form"):
        ti.KaimingNormal(nonlinearity=nn.SiLU()).to_config()


# --- fuzz -----------------------------------------------------------------------------------------------------

_CLASS_NAMES = [cls.__name__ for cls in BUILTINS] + ["torchinit.schemes.initializers.Normal", "Nope", "a.b.C"]
_SETTING_NAMES = sorted({n for cls in BUILTINS for n in cls._signature().parameters} | {"generator", "junk"})

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8),
    st.sampled_from(["...", "inf", "fan_in", "fan_out", "relu", "leaky_relu", "normal", "uniform", "linear"]),
    st.integers(-70, 70),
)  # fmt: skip
_tagged = st.one_of(
    st.builds(lambda s: {"float": s}, st.sampled_from(["inf", "-inf", "nan", "Infinity", ""]) | _scalars),
    st.builds(lambda p: {"complex": p}, st.lists(st.floats() | st.integers() | _scalars, max_size=3)),
)
_keys = st.text(max_size=6) | st.sampled_from(["float", "complex", "class"])
_values = st.recursive(
    _scalars | _tagged,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(_keys, inner, max_size=3),
    max_leaves=12,
)
_settings = st.dictionaries(st.sampled_from(_SETTING_NAMES) | st.text(max_size=5), _values, max_size=4)
_configs = st.one_of(
    st.fixed_dictionaries({"class": st.sampled_from(_CLASS_NAMES), "config": _settings}),
    st.fixed_dictionaries({"class": st.sampled_from(_CLASS_NAMES)}, optional={"config": _values, "extra": _values}),
    st.fixed_dictionaries({"class": _values}, optional={"config": _settings}),
    _values,
)


@pytest.mark.slow  # 600 configs, each built by up to ~200 probes: a few seconds (make fuzz: 20 times more, random)
@settings(max_examples=600 if PROFILE == "default" else 12_000, derandomize=PROFILE == "default", database=None,
          deadline=None, suppress_health_check=list(HealthCheck))
@given(config=_configs)
def test_fuzz_from_config_builds_or_raises_value_or_type_error(config):
    try:
        init = Initializer.from_config(config)
    except (ValueError, TypeError):
        return
    assert isinstance(init, Initializer)
    assert _roundtrip(init) == init  # whatever was accepted writes strict JSON and reads back equal


@pytest.mark.slow
def test_the_fuzz_reaches_built_objects_and_every_kind_of_error():
    """The strategies are not all rejects: a sample has successes, ValueErrors and TypeErrors."""
    outcomes = set()

    @settings(max_examples=300, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(config=_configs)
    def sample(config):
        try:
            Initializer.from_config(config)
            outcomes.add("built")
        except (ValueError, TypeError) as err:
            outcomes.add(type(err).__name__)

    sample()
    assert outcomes == {"built", "ValueError", "TypeError"}


def test_to_config_writes_exactly_what_from_config_reads_at_the_size_bound(registry):
    class Holder(Initializer):
        function = staticmethod(lambda tensor, value=None: tensor)

    outcomes = set()
    for n in range(CONFIG_MAX_SIZE - 8, CONFIG_MAX_SIZE - 3):  # the edge: 1 entry and its 5-letter name, then n
        init = Holder(value=[0] * n)
        try:
            config = init.to_config()
        except ValueError as err:
            assert "larger than" in str(err)
            with pytest.raises(ValueError, match="larger than"):
                Initializer.from_config({"class": Holder.config_name(), "config": {"value": [0] * n}})
            outcomes.add("refused")
        else:
            assert Initializer.from_config(config) == init
            outcomes.add("written")
    assert outcomes == {"refused", "written"}


def test_a_user_class_of_any_name_can_be_defined(registry):
    """Registration when a class is defined never fails for a user's class (only from_config bounds names)."""
    long = type("L" * 2000, (Initializer,), {"__module__": "pkg", "function": staticmethod(ti.zeros_)})
    assert long.config_name() == "pkg." + "L" * 2000
    with pytest.raises(ValueError, match="at most 1000 characters"):
        Initializer.from_config({"class": long.config_name()})
