"""Complex tensors in the variance family (E|w|^2 = scale/fan for every distribution), the complex
truncated normal, and ``batch_dims`` (JAX's ``batch_axis``) on fans and the fan-based initializers.

Statistical checks use fixed seeds and tolerances of K standard errors, the standard error
computed from the sample itself (std of the statistic / sqrt(n)).
"""

import math

import pytest
import torch
from torch import nn

import torchinit as ti
from conftest import torch_nn_init
from torchinit.schemes.layout import Fans, fans
from torchinit.schemes.truncnorm import complex_truncated_std_factor, trunc_normal_std_, truncated_std_factor

K = 5.0  # standard errors
COMPLEX = (torch.complex64, torch.complex128)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_mean_within(samples: torch.Tensor, expected: float, k: float = K) -> None:
    """The sample mean of ``samples`` lies within k standard errors of ``expected``."""
    x = samples.double().flatten()
    se = float(x.std()) / math.sqrt(x.numel())
    assert abs(float(x.mean()) - expected) <= k * se, (float(x.mean()), expected, se)


def abs64(w: torch.Tensor) -> torch.Tensor:
    return w.to(torch.complex128).abs()


# --- complex: E|w|^2 = sigma^2 for normal, uniform and truncated normal ---------------------------


@pytest.mark.parametrize("dtype", COMPLEX)
@pytest.mark.parametrize("distribution", ["normal", "uniform", "truncated_normal"])
@pytest.mark.parametrize("mode", ["fan_in", "fan_out", "fan_avg"])
def test_complex_variance_scaling_total_variance(dtype, distribution, mode):
    w = torch.empty(384, 256, dtype=dtype)
    ti.variance_scaling_(w, 2.0, mode, distribution, generator=gen(1))
    f = fans(w)
    fan = {"fan_in": f.fan_in, "fan_out": f.fan_out, "fan_avg": (f.fan_in + f.fan_out) / 2}[mode]
    var = 2.0 / fan
    assert_mean_within(abs64(w).pow(2) / var, 1.0)
    # circular: each part carries half, no correlation between parts, zero pseudo-variance E[w^2]
    wd = w.to(torch.complex128)
    assert_mean_within(wd.real.pow(2) / var, 0.5)
    assert_mean_within(wd.imag.pow(2) / var, 0.5)
    assert_mean_within(wd.real * wd.imag / var, 0.0)
    assert_mean_within(wd.real / math.sqrt(var), 0.0)
    assert_mean_within(wd.imag / math.sqrt(var), 0.0)


@pytest.mark.parametrize("dtype", COMPLEX)
def test_complex_uniform_is_the_disk(dtype):
    """lecun/kaiming/xavier uniform on complex: uniform on |w| <= sqrt(2) sigma, so |w|^2 / (2 sigma^2) ~ U[0, 1)."""
    cases = [
        (ti.lecun_uniform_, {}, lambda f: 1.0 / f.fan_in),
        (ti.kaiming_uniform_, {"nonlinearity": "relu"}, lambda f: 2.0 / f.fan_in),
        (ti.xavier_uniform_, {}, lambda f: 2.0 / (f.fan_in + f.fan_out)),
    ]
    for init, kwargs, variance in cases:
        w = init(torch.empty(300, 200, dtype=dtype), generator=gen(2), **kwargs)
        var = variance(fans(w))
        m = abs64(w)
        assert float(m.max()) <= math.sqrt(2.0 * var)
        assert float(m.max()) > 0.999 * math.sqrt(2.0 * var)
        q = m.pow(2) / (2 * var)  # U[0, 1): mean 1/2, and P(q <= 1/4) = 1/4
        assert_mean_within(q, 0.5)
        assert_mean_within((q <= 0.25).double(), 0.25)
        assert_mean_within(m.pow(2) / var, 1.0)


def test_complex_normal_keeps_torch_convention():
    """The normal path is torch's complex normal_ (E|z|^2 = std^2): unchanged, bit for bit."""
    w = ti.kaiming_normal_(torch.empty(128, 64, dtype=torch.complex64), generator=gen(3))
    ref = torch.empty(128, 64, dtype=torch.complex64).normal_(0, math.sqrt(2 / 64), generator=gen(3))
    assert torch.equal(w, ref)


# --- the complex truncated normal -----------------------------------------------------------------


def test_complex_truncated_std_factor():
    assert complex_truncated_std_factor(2.0) == pytest.approx(math.sqrt(1 - 4 / math.expm1(4)), rel=1e-15)
    # small k: the series branch agrees with the closed form near the switch and with k^2/2 as k -> 0
    for k in (0.70, 0.7072, 0.71):
        x = k * k
        assert complex_truncated_std_factor(k) == pytest.approx(math.sqrt(1 - x / math.expm1(x)), rel=1e-12)
    assert complex_truncated_std_factor(1e-4) == pytest.approx(1e-4 / math.sqrt(2), rel=1e-8)
    assert complex_truncated_std_factor(30.0) == pytest.approx(1.0)
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="k"):
            complex_truncated_std_factor(bad)


@pytest.mark.parametrize("dtype", COMPLEX)
@pytest.mark.parametrize("std,k", [(1.0, 2.0), (0.02, 2.0), (0.5, 1.0), (3.0, 0.5)])
def test_complex_trunc_normal_std_moments_and_bound(dtype, std, k):
    w = trunc_normal_std_(torch.empty(400, 300, dtype=dtype), std, k, generator=gen(4))
    sigma_u = std / complex_truncated_std_factor(k)
    bound = k * sigma_u
    m = abs64(w)
    assert float(m.max()) <= bound
    assert float(m.max()) > 0.99 * bound
    assert_mean_within(m.pow(2) / std**2, 1.0)
    # |w|^2 / sigma_u^2 is Exp(1) cut at k^2: P(|w| <= sigma_u k / 2) = (1 - e^{-k^2/4}) / (1 - e^{-k^2})
    p = -math.expm1(-k * k / 4) / -math.expm1(-k * k)
    assert_mean_within((m <= bound / 2).double(), p)
    # uniform phase
    theta = torch.angle(w.to(torch.complex128))
    assert_mean_within(torch.cos(theta), 0.0)
    assert_mean_within(torch.sin(theta), 0.0)


def test_complex_truncated_normal_via_variance_scaling_bound():
    for dtype in COMPLEX:
        w = ti.variance_scaling_(torch.empty(512, 256, dtype=dtype), 1.0, generator=gen(5))
        sigma = 1 / math.sqrt(256)
        assert float(abs64(w).max()) <= 2 * sigma / complex_truncated_std_factor(2.0)
        assert_mean_within(abs64(w).pow(2) / sigma**2, 1.0)


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")  # torch's, making a complex32 tensor
def test_complex_trunc_normal_std_mean_zero_std_and_half():
    w = trunc_normal_std_(torch.empty(200, 100, dtype=torch.complex128), 0.5, 2.0, 0.3, generator=gen(6))
    d = w - complex(0.3, 0.3)  # mean on both parts, as torch's complex normal_
    assert float(d.abs().max()) <= 2 * 0.5 / complex_truncated_std_factor(2.0) * (1 + 1e-12)
    assert_mean_within(d.abs().pow(2) / 0.25, 1.0)
    z = trunc_normal_std_(torch.empty(5, 5, dtype=torch.complex64), 0.0, mean=1.5)
    assert torch.equal(z, torch.full((5, 5), 1.5 + 1.5j, dtype=torch.complex64))
    ref = torch.empty(1000, dtype=torch.complex64).normal_(1.5, 0.0)
    assert torch.equal(ref, torch.full((1000,), 1.5 + 1.5j, dtype=torch.complex64))  # torch's convention
    try:
        h = torch.empty(64, 64, dtype=torch.complex32)
    except (RuntimeError, TypeError):  # pragma: no cover - ComplexHalf unavailable
        return
    trunc_normal_std_(h, 1.0, generator=gen(7))
    assert float(abs64(h.to(torch.complex64)).max()) <= 2 / complex_truncated_std_factor(2.0)


def test_complex_truncated_is_reproducible_and_real_path_unchanged():
    a = trunc_normal_std_(torch.empty(50, 40, dtype=torch.complex64), generator=gen(8))
    b = trunc_normal_std_(torch.empty(50, 40, dtype=torch.complex64), generator=gen(8))
    assert torch.equal(a, b)
    r = trunc_normal_std_(torch.empty(300, 200), 0.02, generator=gen(9))
    assert float(r.abs().max()) <= 2 * 0.02 / truncated_std_factor(2.0)


def test_trunc_normal_absolute_bounds_still_reject_complex():
    with pytest.raises(TypeError, match="trunc_normal_std_"):
        ti.trunc_normal_(torch.empty(4, 4, dtype=torch.complex64))


# --- real dtypes: unchanged, bit for bit ---------------------------------------------------------


@pytest.mark.parametrize("name", ["xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_"])
def test_real_parity_with_torch_with_batch_dims_none(name):
    ours = getattr(ti, name)(torch.empty(64, 32, 3), generator=gen(10), batch_dims=None)
    ref = torch_nn_init(name, torch.empty(64, 32, 3), gen(10))
    assert torch.equal(ours, ref)


# --- batch_dims -----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,batch,slicer", [
    ((8, 32, 16), 0, lambda w: w[0]),
    ((8, 32, 16), -3, lambda w: w[0]),
    ((4, 32, 16, 3, 3), (0,), lambda w: w[0]),
    ((2, 3, 32, 16), (0, 1), lambda w: w[0, 0]),
    ((32, 5, 16), 1, lambda w: w[:, 0]),
    ((32, 16, 3, 6), [3], lambda w: w[..., 0]),
])
def test_batch_dims_give_per_slice_fans(shape, batch, slicer):
    w = torch.empty(shape)
    assert fans(w, batch_dims=batch) == fans(slicer(w))


def test_batch_dims_with_explicit_sides():
    w = torch.empty(8, 16, 32, 3)  # experts, in, out, kernel; used as x @ w[e]
    assert fans(w, batch_dims=0, in_dims=1, out_dims=2) == Fans(16 * 3, 32 * 3)
    assert fans(w, batch_dims=0, in_dims=1) == Fans(16, 32 * 3)  # out = ... : every dim but in and batch
    assert fans(w, batch_dims=0, out_dims=(2, 3)) == Fans(16, 96)
    assert fans(w, batch_dims=(0, 3), in_dims=1, out_dims=2) == Fans(16, 32)
    assert fans(w, batch_dims=()) == fans(w) == Fans(16 * 32 * 3, 8 * 32 * 3)


def test_batch_dims_numpy():
    np = pytest.importorskip("numpy")
    assert fans(np.empty((4, 10, 20)), batch_dims=0) == Fans(20, 10)


@pytest.mark.parametrize("init,kwargs,variance,dist", [
    (ti.variance_scaling_, {"scale": 3.0, "distribution": "normal"}, lambda f: 3.0 / f.fan_in, "normal"),
    (ti.variance_scaling_, {"mode": "fan_out", "distribution": "uniform"}, lambda f: 1.0 / f.fan_out, "uniform"),
    (ti.xavier_uniform_, {}, lambda f: 2.0 / (f.fan_in + f.fan_out), "uniform"),
    (ti.xavier_normal_, {}, lambda f: 2.0 / (f.fan_in + f.fan_out), "normal"),
    (ti.kaiming_uniform_, {"nonlinearity": "relu"}, lambda f: 2.0 / f.fan_in, "uniform"),
    (ti.kaiming_normal_, {"nonlinearity": "relu", "mode": "fan_out"}, lambda f: 2.0 / f.fan_out, "normal"),
    (ti.lecun_uniform_, {}, lambda f: 1.0 / f.fan_in, "uniform"),
    (ti.lecun_normal_, {}, lambda f: 1.0 / f.fan_in, "normal"),
])
def test_batch_dims_on_the_family(init, kwargs, variance, dist):
    """A stacked (experts, out, in) weight gets each slice's variance; bit-identical to a plain draw at that std."""
    w = torch.empty(6, 96, 40)
    var = variance(fans(w[0]))
    assert var != pytest.approx(variance(fans(w)))  # the batch dim matters
    init(w, generator=gen(11), batch_dims=0, **kwargs)
    std = math.sqrt(var)
    if dist == "normal":
        ref = torch.empty_like(w).normal_(0, std, generator=gen(11))
    else:
        ref = torch.empty_like(w).uniform_(-math.sqrt(3) * std, math.sqrt(3) * std, generator=gen(11))
    torch.testing.assert_close(w, ref, rtol=1e-6, atol=0)
    assert_mean_within(w.pow(2) / var, 1.0)


def test_batch_dims_truncated_normal_and_complex():
    w = ti.variance_scaling_(torch.empty(6, 96, 40), generator=gen(12), batch_dims=0)
    assert float(w.abs().max()) <= 2 / math.sqrt(40) / truncated_std_factor(2.0)
    assert_mean_within(w.pow(2) * 40, 1.0)
    z = ti.lecun_uniform_(torch.empty(6, 96, 40, dtype=torch.complex64), generator=gen(13), batch_dims=0)
    assert_mean_within(abs64(z).pow(2) * 40, 1.0)
    assert float(abs64(z).max()) <= math.sqrt(2 / 40)


def test_batch_dims_validation_on_meta_tensors_and_per_function():
    w = torch.empty(6, 96, 40, device="meta")
    ti.kaiming_normal_(w, batch_dims=0)  # fine, writes nothing
    with pytest.raises(ValueError, match="batch_dims"):
        ti.kaiming_normal_(w, batch_dims=0, in_dims=0)


@pytest.mark.parametrize("kwargs,err,match", [
    ({"batch_dims": 0, "in_dims": 0}, ValueError, "batch_dims.*in_dims"),
    ({"batch_dims": (0, 2), "out_dims": 2}, ValueError, "batch_dims.*out_dims"),
    ({"batch_dims": 1, "in_dims": 2, "out_dims": (0, 1)}, ValueError, "batch_dims.*out_dims"),
    ({"batch_dims": 3}, ValueError, "batch_dims.*out of range"),
    ({"batch_dims": -4}, ValueError, "batch_dims.*out of range"),
    ({"batch_dims": (0, -3)}, ValueError, "batch_dims.*twice"),
    ({"batch_dims": 1.0}, TypeError, "batch_dims"),
    ({"batch_dims": (0, "1")}, TypeError, "batch_dims"),
    ({"batch_dims": True}, TypeError, "batch_dims"),
    ({"batch_dims": ...}, TypeError, "batch_dims"),
    ({"batch_dims": (0, 1)}, ValueError, "batch_dims"),  # only 1 dim left: no default fans
])
def test_batch_dims_validation(kwargs, err, match):
    w = torch.empty(4, 8, 16)
    with pytest.raises(err, match=match):
        fans(w, **kwargs)
    for init in (ti.variance_scaling_, ti.xavier_uniform_, ti.kaiming_normal_, ti.lecun_uniform_):
        with pytest.raises(err, match=match):
            init(torch.empty(4, 8, 16), **kwargs)


def test_batch_dims_rejected_for_modules():
    with pytest.raises(ValueError, match="batch_dims"):
        fans(nn.Linear(4, 8), batch_dims=0)
    with pytest.raises(ValueError, match="batch_dims"):
        ti.xavier_uniform_(nn.Linear(4, 8), batch_dims=0)


def test_batch_dims_is_keyword_only():
    import inspect

    for name in ("variance_scaling_", "xavier_uniform_", "xavier_normal_", "kaiming_uniform_",
                 "kaiming_normal_", "lecun_uniform_", "lecun_normal_"):
        p = inspect.signature(getattr(ti, name)).parameters["batch_dims"]
        assert p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is None, name
    assert inspect.signature(fans).parameters["batch_dims"].kind is inspect.Parameter.KEYWORD_ONLY
