import pytest
import torch
from torch import nn
from torch.nn.init import _calculate_fan_in_and_fan_out

import torchinit as ti
from conftest import gen
from torchinit import Fans, fans


@pytest.mark.parametrize("shape", [(3, 5), (16, 8, 3), (32, 16, 3, 3), (8, 4, 3, 3, 3), (1, 1)])
def test_default_matches_torch(shape):
    assert fans(torch.empty(shape)) == _calculate_fan_in_and_fan_out(torch.empty(shape))


def test_explicit_dims():
    w = torch.empty(64, 128)
    assert fans(w, in_dims=0, out_dims=1) == Fans(64, 128)
    assert fans(w, in_dims=0) == Fans(64, 128)  # other side is "everything else"
    assert fans(w, out_dims=-2) == Fans(128, 64)
    k = torch.empty(3, 3, 16, 32)  # HWIO (JAX/TF layout)
    assert fans(k, in_dims=2, out_dims=3) == Fans(16 * 9, 32 * 9)
    assert fans(k, in_dims=-2, out_dims=-1) == Fans(16 * 9, 32 * 9)
    assert fans(k, in_dims=(0, 1, 2), out_dims=...) == Fans(144, 32)
    assert fans(k, in_dims=..., out_dims=3) == Fans(144, 32)
    heads = torch.empty(512, 8, 64)  # (d_model, heads, head_dim) used as x @ w
    assert fans(heads, in_dims=0, out_dims=(1, 2)) == Fans(512, 512)
    assert fans(torch.empty(7), in_dims=0) == Fans(7, 1)


@pytest.mark.parametrize("kwargs,exc,words", [
    ({}, ValueError, "at least 2 dims"),
    ({"in_dims": ..., "out_dims": ...}, ValueError, "both"),
    ({"in_dims": 3, "out_dims": 0}, ValueError, "in_dims"),
    ({"in_dims": 0, "out_dims": 0}, ValueError, "both"),
    ({"in_dims": (1, 1), "out_dims": 0}, ValueError, "twice"),
    ({"in_dims": 1.0, "out_dims": 0}, TypeError, "in_dims"),
    ({"in_dims": 1, "out_dims": True}, TypeError, "out_dims"),
])
def test_bad_dims(kwargs, exc, words):
    shape = (5,) if not kwargs else (4, 5, 3)
    with pytest.raises(exc, match=words):
        fans(torch.empty(shape), **kwargs)


def test_module_fans_count_groups_and_transposition():
    # grouped and transposed convs, whose fans torch's (in, out) reading of dims 0 and 1 gets wrong
    assert fans(nn.Conv2d(32, 32, 3, groups=32)) == Fans(9, 9)
    assert fans(nn.Conv2d(64, 128, 3, groups=8)) == Fans(72, 144)
    assert fans(nn.ConvTranspose2d(16, 64, 3)) == Fans(144, 576)
    assert fans(nn.ConvTranspose1d(16, 64, 5, groups=4)) == Fans(20, 80)
    assert fans(nn.Conv3d(4, 8, (1, 2, 3))) == Fans(24, 48)
    assert fans(nn.Linear(10, 20)) == Fans(10, 20)
    assert fans(nn.Embedding(1000, 64)) == Fans(1000, 64)


def test_module_errors():
    with pytest.raises(TypeError, match=r"LayerNorm.*Linear"):
        fans(nn.LayerNorm(4))
    with pytest.raises(ValueError, match="in_dims"):
        fans(nn.Linear(2, 3), in_dims=0)
    with pytest.raises(TypeError, match="x must be"):
        fans([1, 2])


def test_initializer_uses_module_fans():
    conv = nn.ConvTranspose2d(16, 64, 3)
    before = conv.weight.detach().clone()
    w = ti.kaiming_uniform_(conv, nonlinearity="relu", generator=gen())
    assert w is conv.weight and not torch.equal(before, w)
    bound = 2**0.5 * (3.0 / 144) ** 0.5  # fan_in of the layer: 16 * 9, not torch's 64 * 9
    assert w.abs().max() <= bound and w.abs().max() > 0.99 * bound


def test_initializer_explicit_dims_bound():
    w = torch.empty(64, 256)  # used as x @ w: fan_in = 64
    ti.kaiming_uniform_(w, nonlinearity="relu", in_dims=0, out_dims=1, generator=gen())
    bound = 2**0.5 * (3.0 / 64) ** 0.5
    assert w.abs().max() <= bound and w.abs().max() > 0.99 * bound
    for fn in (ti.xavier_uniform_, ti.xavier_normal_, ti.lecun_uniform_, ti.lecun_normal_, ti.kaiming_normal_,
               ti.variance_scaling_):
        a, b = torch.empty(64, 256), torch.empty(256, 64)
        fn(a, in_dims=0, out_dims=1, generator=gen(3))
        fn(b, generator=gen(3))
        assert abs(a.std() / b.std() - 1) < 6 * (2 / a.numel()) ** 0.5  # both std samples, ~N(s, s^2/2n)
