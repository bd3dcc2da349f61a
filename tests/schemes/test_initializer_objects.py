"""Initializer objects: the same values as their functions (called, or through ``init``), settings validated at
construction, a repr of the non-default settings, equality by settings, and a config (JSON) and pickle round trip."""

import inspect
import json
import math
import pickle
import warnings
from typing import Any

import pytest
import torch
from torch import nn

import torchinit as ti
from conftest import gen
from torchinit.schemes import initializers

CLASSES = [getattr(initializers, n) for n in initializers.__all__ if n != "Initializer"]

# (class, settings, target shape): every public class at least once, with non-default settings where it has
# any, then a few more
CASES = [
    (ti.Uniform, {"a": -0.5, "b": 0.5}, (8, 6)),
    (ti.Normal, {"std": 0.02}, (8, 6)),
    (ti.TruncNormal, {"std": 0.02, "a": -0.04, "b": 0.04}, (8, 6)),
    (ti.TruncNormalStd, {"std": 0.02, "k": 3.0}, (8, 6)),
    (ti.Constant, {"val": 0.25}, (8, 6)),
    (ti.Zeros, {}, (8, 6)),
    (ti.Ones, {}, (8, 6)),
    (ti.Eye, {}, (8, 6)),
    (ti.Dirac, {"groups": 2}, (8, 4, 3, 3)),
    (ti.Identity, {"gain": 0.5, "groups": 2}, (8, 4, 3)),
    (ti.XavierUniform, {"gain": 2.0, "blocks": 2}, (8, 6)),
    (ti.XavierNormal, {"in_dims": 0, "out_dims": 1}, (8, 6)),
    (ti.KaimingUniform, {"a": math.sqrt(5)}, (8, 6, 3)),
    (ti.KaimingNormal, {"mode": "fan_out", "nonlinearity": "gelu"}, (8, 6)),
    (ti.LecunUniform, {}, (8, 6)),
    (ti.LecunNormal, {"blocks": 4}, (8, 6)),
    (ti.VarianceScaling, {"scale": 2.0, "mode": "fan_avg", "distribution": "uniform"}, (8, 6)),
    (ti.Orthogonal, {"gain": 2.0, "blocks": 2}, (8, 6)),
    (ti.DeltaOrthogonal, {"gain": 0.5}, (8, 4, 3, 3)),
    (ti.Sparse, {"sparsity": 0.5, "std": 0.1}, (8, 6)),
    (ti.Hadamard, {"gain": 2.0}, (8, 6)),
    (ti.Glass, {"isometric": True, "zero_mean": True}, (6, 8)),
    (ti.Glass, {"in_dims": (1, 2), "out_dims": 0, "gain": 0.5}, (6, 4, 3)),
    (ti.KaimingNormal, {"nonlinearity": nn.SiLU(), "blocks": 4}, (8, 6)),
    (ti.LecunUniform, {"out_dims": (0, 2)}, (8, 6, 2)),
    (ti.VarianceScaling, {"scale": 0.5, "mode": "fan_geo_avg"}, (8, 6)),
]
IDS = [f"{c.__name__}{i}" for i, (c, _, _) in enumerate(CASES)]


def _function_call(cls, settings, target, seed):
    kwargs = dict(settings)
    if "generator" in inspect.signature(cls.function).parameters:
        kwargs["generator"] = gen(seed)
    return cls.function(target, **kwargs)


def test_every_public_class_has_a_case_and_its_function_name():
    assert {c for c, _, _ in CASES} == set(CLASSES)
    for cls in CLASSES:
        assert ti.Initializer._registry[cls.__name__] is cls and getattr(ti, cls.__name__) is cls
        assert cls.__module__ == "torchinit.schemes.initializers" and cls.__qualname__ == cls.__name__
        assert cls.function.__name__.rstrip("_").replace("_", "").lower() == cls.__name__.lower()
        assert f"~torchinit.{cls.function.__name__}" in (cls.__doc__ or "")


@pytest.mark.parametrize("cls,settings,shape", CASES, ids=IDS)
def test_call_is_the_function_bit_for_bit(cls, settings, shape):
    init = cls(**settings)
    w = torch.empty(shape)
    out = init(w, generator=gen(7))
    assert out is w
    expected = _function_call(cls, settings, torch.empty(shape), 7)
    assert torch.equal(w, expected)
    # the method form, and an object rebuilt from its config, agree too
    again = ti.Initializer.from_config(json.loads(json.dumps(init.to_config()))) if _jsonable(settings) else init
    assert torch.equal(again.init(torch.empty(shape), generator=gen(7)), expected)


def _jsonable(settings):
    return not any(isinstance(v, nn.Module) for v in settings.values())


LAYOUT_CASES = [c for c in CASES if c[0].uses_layout]


@pytest.mark.parametrize("cls,settings,shape", LAYOUT_CASES, ids=lambda x: getattr(x, "__name__", None))
def test_call_on_a_layer_is_the_function_on_it(cls, settings, shape):
    settings = {k: v for k, v in settings.items() if k not in ("in_dims", "out_dims")}  # a layer has its own layout
    make = lambda: nn.Conv2d(4, 6, 3, groups=2) if not settings.get("blocks") else nn.Linear(6, 8)  # noqa: E731
    layer, twin = make(), make()
    out = cls(**settings)(layer, generator=gen(3))
    assert out is layer.weight
    assert torch.equal(layer.weight, _function_call(cls, settings, twin, 3))


def test_a_transposed_conv_gets_its_own_fans():
    conv, twin = nn.ConvTranspose2d(16, 64, 3), nn.ConvTranspose2d(16, 64, 3)
    assert ti.KaimingUniform().init(conv, generator=gen(4)) is conv.weight
    assert torch.equal(conv.weight, ti.kaiming_uniform_(twin, generator=gen(4)))


def test_call_without_generator_uses_the_global_rng_like_the_function():
    torch.manual_seed(11)
    a = ti.KaimingUniform(nonlinearity="relu")(torch.empty(16, 8))
    torch.manual_seed(11)
    b = ti.kaiming_uniform_(torch.empty(16, 8), nonlinearity="relu")
    assert torch.equal(a, b)


def test_call_keeps_a_subclass_init_override():
    class Scaled(ti.Normal):  # type: ignore[valid-type, misc]  # the class is built by _scheme(), at run time
        def init(self, tensor, *, generator=None):
            return super().init(tensor, generator=generator).mul_(2)

    w = Scaled(std=0.5)(torch.empty(4, 4), generator=gen(1))
    assert torch.equal(w, ti.normal_(torch.empty(4, 4), std=0.5, generator=gen(1)) * 2)


def test_call_with_generator_positionally_is_refused():
    with pytest.raises(TypeError):
        ti.Normal()(torch.empty(2, 2), gen(0))  # type: ignore[call-arg]  # on purpose


# (class, settings, error, the argument the message names)
BAD: list[tuple[type[ti.Initializer], dict[str, Any], type[Exception], str]] = [
    (ti.Uniform, {"a": 1.0, "b": 0.0}, ValueError, "a must be less than b"),
    (ti.Uniform, {"a": float("nan")}, ValueError, "a must not be NaN"),
    (ti.Uniform, {"b": "1"}, TypeError, "b must be a real number"),
    (ti.Normal, {"std": -0.1}, ValueError, "std"),
    (ti.Normal, {"mean": float("inf")}, ValueError, "mean"),
    (ti.Normal, {"std": None}, TypeError, "std"),
    (ti.TruncNormal, {"a": 1.0, "b": -1.0}, ValueError, "a must be less than b"),
    (ti.TruncNormal, {"std": -1.0}, ValueError, "std"),
    (ti.TruncNormal, {"std": 0.0, "mean": 5.0}, ValueError, "mean"),
    (ti.TruncNormalStd, {"k": 0.0}, ValueError, "k must be > 0"),
    (ti.TruncNormalStd, {"std": float("nan")}, ValueError, "std"),
    (ti.Constant, {"val": "0.5"}, TypeError, "val"),
    (ti.Constant, {"val": float("nan")}, ValueError, "val"),
    (ti.Constant, {"val": None}, TypeError, "val"),
    (ti.Dirac, {"groups": 0}, ValueError, "groups"),
    (ti.Dirac, {"groups": 1.5}, ValueError, "groups"),
    (ti.Identity, {"gain": float("nan")}, ValueError, "gain"),
    (ti.Identity, {"groups": -2}, ValueError, "groups"),
    (ti.XavierUniform, {"gain": float("nan")}, ValueError, "gain"),
    (ti.XavierUniform, {"blocks": 0}, ValueError, "blocks"),
    (ti.XavierNormal, {"in_dims": "1"}, TypeError, "in_dims"),
    (ti.XavierNormal, {"in_dims": 0, "out_dims": 0}, ValueError, "in_dims and out_dims"),
    (ti.KaimingUniform, {"mode": "fan"}, ValueError, "mode"),
    (ti.KaimingUniform, {"nonlinearity": "nope"}, ValueError, "nonlinearity"),
    (ti.KaimingNormal, {"mode": "fan"}, ValueError, "mode"),
    (ti.KaimingNormal, {"nonlinearity": 3}, TypeError, "nonlinearity"),
    (ti.KaimingNormal, {"a": float("nan")}, ValueError, "a must not be NaN"),
    (ti.KaimingNormal, {"blocks": True}, ValueError, "blocks"),
    (ti.LecunUniform, {"out_dims": (0, 0)}, ValueError, "out_dims"),
    (ti.LecunNormal, {"in_dims": ..., "out_dims": ...}, ValueError, "in_dims and out_dims"),
    (ti.VarianceScaling, {"scale": -1.0}, ValueError, "scale"),
    (ti.VarianceScaling, {"mode": "fan_sum"}, ValueError, "mode"),
    (ti.VarianceScaling, {"distribution": "gaussian"}, ValueError, "distribution"),
    (ti.Orthogonal, {"gain": float("nan")}, ValueError, "gain"),
    (ti.Orthogonal, {"blocks": -1}, ValueError, "blocks"),
    (ti.DeltaOrthogonal, {"gain": "1"}, TypeError, "gain"),
    (ti.Sparse, {"sparsity": 1.0}, ValueError, "sparsity"),
    (ti.Sparse, {"sparsity": -0.1}, ValueError, "sparsity"),
    (ti.Sparse, {"sparsity": 0.5, "std": -1.0}, ValueError, "std"),
    (ti.Sparse, {"sparsity": "half"}, TypeError, "sparsity"),
    (ti.Hadamard, {"gain": float("inf")}, ValueError, "gain"),
    (ti.Glass, {"zero_mean": 1}, TypeError, "zero_mean"),
    (ti.Glass, {"sparse": True, "isometric": True}, ValueError, "sparse and isometric"),
    (ti.Glass, {"gain": float("nan")}, ValueError, "gain"),
    (ti.Glass, {"in_dims": 0, "out_dims": 0}, ValueError, "in_dims and out_dims"),
    (ti.Glass, {"out_dims": "0"}, TypeError, "out_dims"),
]


@pytest.mark.parametrize("cls,settings,error,named", BAD, ids=[f"{c.__name__}-{'-'.join(s)}" for c, s, _, _ in BAD])
def test_bad_settings_fail_at_construction(cls, settings, error, named):
    with pytest.raises(error) as info:
        cls(**settings)
    assert type(info.value) is error
    message = str(info.value)
    assert message.startswith(f"{cls.__name__}: ") and named in message, message
    # the message is the function's own: the check lives only there
    shape = (6, 4, 3, 3) if cls in (ti.Dirac, ti.DeltaOrthogonal) else (6, 4)
    with pytest.raises(error) as direct:
        _function_call(cls, settings, torch.empty(shape, dtype=torch.float64), 0)
    assert str(direct.value) in message


def test_every_class_with_settings_has_a_bad_case():
    with_settings = {c for c in CLASSES if c._signature().parameters}
    assert with_settings <= {c for c, _, _, _ in BAD}


def test_bad_config_fails_in_from_config():
    config = ti.KaimingNormal(mode="fan_out").to_config()
    config["config"]["mode"] = "fan_sideways"
    with pytest.raises(ValueError, match="KaimingNormal: mode"):
        ti.Initializer.from_config(config)


def _param_id(value: object) -> str:
    """A tensor's test id from its shape and dtype, not its (uninitialized) values: the same ids in every process
    (pytest-xdist's workers must collect the same tests)."""
    if isinstance(value, torch.Tensor):
        return f"{tuple(value.shape)}-{value.dtype}"
    return repr(value)


@pytest.mark.parametrize(
    "init,target",
    [
        (ti.Dirac(groups=3), torch.empty(6, 2, 3)),  # groups: any divisor of the conv's out channels
        (ti.Dirac(groups=5), torch.empty(10, 4, 3, 3)),
        (ti.XavierUniform(blocks=3), torch.empty(9, 4)),
        (ti.Orthogonal(blocks=7), torch.empty(14, 3)),
        (ti.Glass(in_dims=(1, 2), out_dims=0), torch.empty(4, 3, 2)),
        (ti.Glass(in_dims=-1, out_dims=0), torch.empty(4, 3)),
        (ti.KaimingNormal(in_dims=(1, 2, 3, 4, 5, 6), out_dims=0), torch.empty(2, 2, 1, 1, 1, 1, 2)),
        (ti.Identity(groups=4), torch.empty(8, 2)),
        (ti.Eye(), torch.empty(3, 3)),
        (ti.Constant(True), torch.empty(3, dtype=torch.bool)),  # a bool for a bool tensor
        (ti.Constant(1 + 2j), torch.empty(3, dtype=torch.complex64)),  # a complex value for a complex tensor
        (ti.Constant(2**40), torch.empty(3, dtype=torch.int64)),
        (ti.TruncNormal(a=1.0000000001, b=1.0000000002, mean=1.0, std=1.0), torch.empty(3, dtype=torch.float64)),
    ],
    ids=_param_id,
)
def test_settings_that_fit_some_tensors_are_accepted(init, target):
    assert init(target, generator=gen()) is target


@pytest.mark.parametrize(
    "init,target,named",
    [
        (ti.Dirac(), torch.empty(4, 4), "dims"),  # shape errors are the target's, found when applied
        (ti.Dirac(groups=3), torch.empty(4, 2, 3), "groups"),
        (ti.XavierUniform(blocks=3), torch.empty(8, 6), "blocks"),
        (ti.Glass(in_dims=(1, 2), out_dims=0), torch.empty(4, 3), "in_dims"),
        (ti.Constant(True), torch.empty(3), "val"),
        (ti.TruncNormal(a=1.0000000001, b=1.0000000002, mean=1.0, std=1.0), torch.empty(3), "bounds"),
    ],
    ids=_param_id,
)
def test_settings_that_do_not_fit_the_target_fail_when_applied_without_writing(init, target, named):
    before = target.clone() if target.dtype == torch.bool else target.fill_(0.5).clone()
    with pytest.raises((ValueError, TypeError), match=named):
        init(target, generator=gen())
    assert torch.equal(target, before)


@pytest.mark.parametrize("cls,settings,shape", CASES, ids=IDS)
@pytest.mark.parametrize(
    "target", ["weight", [1.0, 2.0], None, 3.0, nn.ReLU()], ids=["str", "list", "None", "float", "ReLU"]
)
def test_wrong_type_target_is_a_type_error(cls, settings, shape, target):
    if isinstance(target, nn.Module):  # a layer with tensor dims is refused first (a ValueError): leave them out
        settings = {k: v for k, v in settings.items() if k not in ("in_dims", "out_dims")}
    with pytest.raises(TypeError):
        cls(**settings)(target, generator=gen())


@pytest.mark.parametrize("cls,settings,shape", CASES, ids=IDS)
def test_construction_draws_and_records_nothing(cls, settings, shape):
    state = torch.get_rng_state()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cls(**settings)
    assert not caught, [str(w.message) for w in caught]
    assert torch.equal(torch.get_rng_state(), state)


def test_a_warning_of_the_function_comes_when_applied_not_when_built():
    init = ti.TruncNormal(std=0.02)  # default bounds [-2, 2]: nothing truncated, the function warns
    with pytest.warns(UserWarning, match="nothing is truncated"):
        init(torch.empty(4), generator=gen())


def test_construction_inside_deferred_is_not_recorded():
    from torchinit.recording.log import thread_recordings

    def build(with_inits):
        torch.manual_seed(5)
        with ti.deferred():
            model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
            recording = thread_recordings()[-1][0]
            ops, produced = len(recording.ops), len(recording.produced)
            if with_inits:
                ti.KaimingNormal(mode="fan_out", blocks=2)
                ti.Glass(in_dims=(1, 2), out_dims=0)
                with pytest.raises(ValueError, match="mode"):
                    ti.KaimingNormal(mode="fan")
            assert (len(recording.ops), len(recording.produced)) == (ops, produced)  # the probes left no trace
        ti.materialize_(model)
        return model

    plain, probed = build(False), build(True)
    for (n, a), (_, b) in zip(plain.named_parameters(), probed.named_parameters()):
        assert not b.is_meta and torch.equal(a, b), n


def test_schemes_without_settings_or_tensor_targets_still_build():
    from torchinit.model.presets import TorchBias, TorchReset, TorchWeight

    for cls in (TorchBias, TorchReset, TorchWeight, ti.Zeros, ti.Ones, ti.Eye, ti.LecunNormal):
        assert repr(cls()) == f"{cls.__name__}()"
    layer, twin = nn.Linear(3, 4), nn.Linear(3, 4)
    TorchBias()(layer, generator=gen(2))
    bound = 1 / math.sqrt(3)
    assert torch.equal(layer.bias, ti.uniform_(twin.bias, -bound, bound, generator=gen(2)))


def test_a_custom_subclass_is_validated_by_its_own_function():
    def scaled_(tensor, factor: float = 1.0):
        if factor <= 0:
            raise ValueError(f"factor must be > 0; got {factor}")
        return tensor if tensor.is_meta else tensor.mul_(factor)

    class Scaled(ti.Initializer):
        function = staticmethod(scaled_)

    assert Scaled(2.0)(torch.ones(2)).tolist() == [2.0, 2.0]
    with pytest.raises(ValueError, match="Scaled: factor must be > 0"):
        Scaled(factor=-1)

    def meta_hostile_(tensor, factor: float = 1.0):  # cannot run on meta tensors: checked when applied
        return tensor.mul_(float(tensor.sum()) * factor)

    class Hostile(ti.Initializer):
        function = staticmethod(meta_hostile_)

    assert Hostile(factor=3.0) == Hostile(3)

    class Unchecked(Scaled):
        probe_settings = False  # opted out: a bad setting surfaces when applied

    late = Unchecked(factor=-1)
    with pytest.raises(ValueError, match="factor must be > 0"):
        late(torch.ones(2))


@pytest.mark.parametrize("cls,settings,shape", CASES, ids=IDS)
def test_repr_equality_and_config_round_trip(cls, settings, shape):
    init = cls(**settings)
    assert init == cls(**settings) and repr(init) == repr(cls(**settings))
    assert repr(init).startswith(f"{cls.__name__}(")
    for name, value in settings.items():
        assert f"{name}=" in repr(init) or value == init._signature().parameters[name].default
    if _jsonable(settings):
        back = ti.Initializer.from_config(json.loads(json.dumps(init.to_config())))
        assert back == init and type(back) is cls and repr(back) == repr(init)
        copy = pickle.loads(pickle.dumps(init))
        assert copy == init and type(copy) is cls


def test_repr_shows_non_defaults_only():
    assert repr(ti.KaimingNormal()) == "KaimingNormal()"
    assert repr(ti.KaimingNormal(mode="fan_out")) == "KaimingNormal(mode='fan_out')"
    relu_fan_out = ti.KaimingNormal(mode="fan_out", nonlinearity="relu")
    assert repr(relu_fan_out) == "KaimingNormal(mode='fan_out', nonlinearity='relu')"
    assert repr(ti.Constant(0.5)) == "Constant(val=0.5)"
    assert repr(ti.Sparse(0.9, std=0.01)) == "Sparse(sparsity=0.9)"
    assert repr(ti.Glass(in_dims=(1, 2))) == "Glass(in_dims=(1, 2))"
    assert repr(ti.Glass(in_dims=...)) == "Glass()"


def test_equality_by_settings():
    assert ti.Normal(std=0.02) == ti.Normal(0.0, 0.02)
    by_name = ti.VarianceScaling(scale=2, mode="fan_out", distribution="normal")
    assert ti.VarianceScaling(2.0, "fan_out", "normal") == by_name
    assert ti.Orthogonal(gain=1) == ti.Orthogonal(gain=1.0)
    assert ti.Normal(std=0.02) != ti.Normal(std=0.03)
    assert ti.Orthogonal(blocks=2) != ti.Orthogonal(blocks=4)
    assert ti.Zeros() != ti.Ones()
    assert ti.Uniform(a=-1) != ti.Normal()
    # a bool is not an int setting (Glass(zero_mean=1) is refused at construction: zero_mean must be a bool)
    assert ti.Constant(True) != ti.Constant(1)
    assert ti.Glass(in_dims=[1, 2]) == ti.Glass(in_dims=(1, 2))


def test_bad_settings_name_the_valid_ones():
    with pytest.raises(TypeError, match=r"mode.*nonlinearity"):
        ti.KaimingNormal(mod="fan_out")
    with pytest.raises(TypeError, match=r"Constant.*val"):
        ti.Constant()
    with pytest.raises(TypeError, match=r"nonlinearity=GELU.*no JSON form"):
        ti.KaimingNormal(nonlinearity=nn.GELU()).to_config()
    with pytest.raises(ValueError, match="unknown initializer class 'Foo'"):
        ti.Initializer.from_config({"class": "Foo", "config": {}})
    with pytest.raises(ValueError, match="'class' key"):
        ti.Initializer.from_config({"config": {}})
