"""Drop-in parity with torch.nn.init 2.13: names, signatures, and bit-identical values."""

import inspect

import pytest
import torch
import torch.nn.init as tnn

import torchinit as ti
from conftest import gen, torch_nn_init

SHAPES = [
    (3, 5), (5, 3), (64, 64), (1, 7), (7, 1), (16, 8, 3), (32, 16, 3, 3), (8, 4, 3, 3, 3), (6, 4, 2, 1, 3),
    (128, 64, 1, 1),
]  # fmt: skip

RANDOM = [
    ("uniform_", {}),
    ("uniform_", {"a": -0.3, "b": 0.7}),
    ("normal_", {}),
    ("normal_", {"mean": 0.5, "std": 0.02}),
    ("xavier_uniform_", {}),
    ("xavier_uniform_", {"gain": 1.7}),
    ("xavier_normal_", {}),
    ("xavier_normal_", {"gain": 0.3}),
    ("kaiming_uniform_", {}),
    ("kaiming_uniform_", {"a": 5**0.5}),
    ("kaiming_uniform_", {"mode": "fan_out", "nonlinearity": "relu"}),
    ("kaiming_uniform_", {"nonlinearity": "tanh"}),
    ("kaiming_normal_", {}),
    ("kaiming_normal_", {"a": 0.2, "mode": "fan_out"}),
    ("kaiming_normal_", {"nonlinearity": "selu"}),
    ("orthogonal_", {}),
    ("orthogonal_", {"gain": 2.0}),
]


@pytest.mark.parametrize("name", ti.TORCH_NN_INIT)
def test_same_name_and_signature(name):
    ours = inspect.signature(getattr(ti, name)).parameters.values()
    theirs = inspect.signature(getattr(tnn, name)).parameters.values()
    positional = [(p.name, p.default, p.kind) for p in ours if p.kind != p.KEYWORD_ONLY]
    expected = [(p.name, p.default, p.kind) for p in theirs]
    if "generator" in {p.name for p in ours} and "generator" not in {p[0] for p in expected}:
        expected.append(("generator", None, inspect.Parameter.POSITIONAL_OR_KEYWORD))  # torch 2.1: added in 2.2
    assert positional == expected
    # extras are keyword-only and come after torch's
    kinds = [p.kind for p in ours]
    assert kinds == sorted(kinds)


@pytest.mark.parametrize("name,kwargs", RANDOM, ids=[f"{n}{k}" for n, k in RANDOM])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bit_identical_with_generator(name, kwargs, dtype):
    for shape in SHAPES:
        ours, theirs = torch.empty(shape, dtype=dtype), torch.empty(shape, dtype=dtype)
        getattr(ti, name)(ours, generator=gen(7), **kwargs)
        torch_nn_init(name, theirs, gen(7), **kwargs)
        assert torch.equal(ours, theirs), (name, shape)


@pytest.mark.parametrize("name,kwargs", RANDOM[::2], ids=[f"{n}{k}" for n, k in RANDOM[::2]])
def test_bit_identical_with_global_seed(name, kwargs):
    for shape in SHAPES[:6]:
        torch.manual_seed(11)
        ours = getattr(ti, name)(torch.empty(shape), **kwargs)
        torch.manual_seed(11)
        theirs = getattr(tnn, name)(torch.empty(shape), **kwargs)
        assert torch.equal(ours, theirs), (name, shape)


@pytest.mark.parametrize("shape", SHAPES)
def test_deterministic_fills_identical(shape):
    for fn, args in [("constant_", (0.37,)), ("ones_", ()), ("zeros_", ())]:
        ours, theirs = torch.randn(shape), torch.randn(shape)
        getattr(ti, fn)(ours, *args)
        getattr(tnn, fn)(theirs, *args)
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("shape", [(3, 5), (5, 3), (4, 4), (1, 9)])
def test_eye_identical(shape):
    assert torch.equal(ti.eye_(torch.randn(shape)), tnn.eye_(torch.randn(shape)))


@pytest.mark.parametrize("shape,groups", [((4, 4, 3), 1), ((6, 3, 5), 2), ((8, 16, 3, 3), 1), ((24, 8, 3, 3), 3),
                                          ((16, 8, 4, 4), 1), ((4, 2, 3, 3, 3), 2), ((3, 5, 1, 2, 2), 1)])
def test_dirac_identical(shape, groups):
    assert torch.equal(ti.dirac_(torch.randn(shape), groups), tnn.dirac_(torch.randn(shape), groups))


@pytest.mark.parametrize("name,param", [("linear", None), ("conv1d", None), ("conv2d", None), ("conv3d", None),
                                        ("conv_transpose1d", None), ("conv_transpose2d", None),
                                        ("conv_transpose3d", None), ("sigmoid", None), ("tanh", None), ("relu", None),
                                        ("leaky_relu", None), ("leaky_relu", 0.2), ("leaky_relu", 3), ("selu", None)])
def test_calculate_gain_torch_values(name, param):
    assert ti.calculate_gain(name, param) == tnn.calculate_gain(name, param)


def test_kaiming_accepts_modes_beyond_torch():
    w = torch.empty(40, 10)
    ti.kaiming_normal_(w, mode="fan_avg", generator=gen())
    ref = torch.empty(40, 10).normal_(0, 2**0.5 * (2.0 / 50) ** 0.5, generator=gen())  # a=0: slope 0, gain sqrt(2)
    assert torch.allclose(w, ref, rtol=1e-6)
