"""Initializer objects (issue 5, item 1): same values as the functions, repr, equality, config round trip."""

import inspect
import json
import math

import pytest
import torch
from torch import nn

import torchinit as ti
from conftest import gen

# (class, settings, shape): one case per scheme
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
]
IDS = [f"{c.__name__}{i}" for i, (c, _, _) in enumerate(CASES)]


@pytest.mark.parametrize("cls,settings,shape", CASES, ids=IDS)
def test_object_equals_function(cls, settings, shape):
    obj = cls(**settings)
    a = obj.init(torch.empty(shape), generator=gen(3))
    fn_kwargs = dict(settings)
    if "generator" in inspect.signature(cls.function).parameters:
        fn_kwargs["generator"] = gen(3)
    b = cls.function(torch.empty(shape), **fn_kwargs)
    assert torch.equal(a, b)


@pytest.mark.parametrize("cls,settings,shape", CASES, ids=IDS)
def test_config_round_trip_is_json_and_equal(cls, settings, shape):
    obj = cls(**settings)
    text = json.dumps(obj.to_config())
    back = ti.Initializer.from_config(json.loads(text))
    assert back == obj and type(back) is cls
    assert repr(back) == repr(obj)


def test_repr_shows_non_defaults_only():
    assert repr(ti.KaimingNormal()) == "KaimingNormal()"
    assert repr(ti.KaimingNormal(mode="fan_out", nonlinearity="relu")) == "KaimingNormal(mode='fan_out', nonlinearity='relu')"
    assert repr(ti.Constant(0.5)) == "Constant(val=0.5)"
    assert repr(ti.Glass(in_dims=(1, 2))) == "Glass(in_dims=(1, 2))"
    assert repr(ti.Glass(in_dims=...)) == "Glass()"


def test_equality_by_settings():
    assert ti.Normal(std=0.02) == ti.Normal(0.0, 0.02)
    assert ti.Orthogonal(gain=1) == ti.Orthogonal(gain=1.0)
    assert ti.Normal(std=0.02) != ti.Normal(std=0.03)
    assert ti.Zeros() != ti.Ones()
    # a bool is not an int setting (Glass(zero_mean=1) is now refused at construction: zero_mean must be a bool)
    assert ti.Constant(True) != ti.Constant(1)
    assert ti.Glass(in_dims=[1, 2]) == ti.Glass(in_dims=(1, 2))


def test_bad_settings_name_the_valid_ones():
    with pytest.raises(TypeError, match="mode.*nonlinearity"):
        ti.KaimingNormal(mod="fan_out")
    with pytest.raises(TypeError, match="Constant.*val"):
        ti.Constant()
    with pytest.raises(TypeError, match="nonlinearity=GELU.*no JSON form"):
        ti.KaimingNormal(nonlinearity=nn.GELU()).to_config()
    with pytest.raises(ValueError, match="unknown initializer class 'Foo'"):
        ti.Initializer.from_config({"class": "Foo", "config": {}})
    with pytest.raises(ValueError, match="'class' key"):
        ti.Initializer.from_config({"config": {}})


def test_module_nonlinearity_and_module_targets():
    init = ti.KaimingNormal(nonlinearity=nn.SiLU())
    w = init.init(torch.empty(64, 32), generator=gen())
    assert torch.equal(w, ti.kaiming_normal_(torch.empty(64, 32), nonlinearity=nn.SiLU(), generator=gen()))
    conv = nn.ConvTranspose2d(16, 64, 3)
    assert ti.KaimingUniform().init(conv) is conv.weight  # layer-aware: the module's own fans


def test_invalid_values_fail_at_init_without_writing():
    t = torch.randn(4, 4, generator=gen())
    before = t.clone()
    with pytest.raises(ValueError, match="mode"):
        ti.KaimingNormal(mode="fan").init(t)
    assert torch.equal(t, before)
