import math

import pytest
import torch

import torchinit as ti
from conftest import gen, ks_critical, std_tolerance
from torchinit.schemes import variance
from torchinit.schemes.layout import Fans
from torchinit.schemes.variance import scaled_std

SHAPE = (512, 256, 3)  # fan_in 768, fan_out 1536
FIN, FOUT = 768, 1536
FANS = {"fan_in": FIN, "fan_out": FOUT, "fan_avg": (FIN + FOUT) / 2, "fan_geo_avg": math.sqrt(FIN * FOUT)}
KURTOSIS = {"normal": 3.0, "uniform": 1.8, "truncated_normal": 2.36}  # truncated at 2 sigma: E[z^4]/E[z^2]^2


@pytest.mark.parametrize("mode", variance.MODES)
@pytest.mark.parametrize("distribution", variance.DISTRIBUTIONS)
@pytest.mark.parametrize("scale", [1.0, 2.0, 0.1])
def test_std_is_sqrt_scale_over_fan(mode, distribution, scale):
    w = ti.variance_scaling_(torch.empty(SHAPE), scale, mode, distribution, generator=gen(1))
    want = math.sqrt(scale / FANS[mode])
    assert float(w.std()) == pytest.approx(want, rel=std_tolerance(w.numel(), KURTOSIS[distribution]))
    if distribution == "uniform":
        assert float(w.abs().max()) <= math.sqrt(3) * want
    if distribution == "truncated_normal":
        assert float(w.abs().max()) <= 2 * want / 0.87962566103423978


def test_truncated_kurtosis_constant_is_derived():
    k = 2.0
    mass = math.erf(k / math.sqrt(2))
    pdf = math.exp(-k * k / 2) / math.sqrt(2 * math.pi)
    m2 = 1 - 2 * k * pdf / mass
    m4 = 3 * m2 - 2 * k**3 * pdf / mass  # E[z^4] of N(0,1) truncated to [-k, k]
    assert m4 / m2**2 == pytest.approx(KURTOSIS["truncated_normal"], abs=0.01)


def test_truncated_normal_distribution():
    w = ti.variance_scaling_(torch.empty(256, 1024), 1.0, "fan_in", generator=gen(2))
    sigma_u = 1 / math.sqrt(1024) / 0.87962566103423978
    z = (w.double().reshape(-1) / sigma_u).sort().values
    mass = math.erf(2 / math.sqrt(2))
    cdf = (0.5 * torch.erfc(-z / math.sqrt(2)) - 0.5 * math.erfc(2 / math.sqrt(2))) / mass
    n = z.numel()
    i = torch.arange(1, n + 1, dtype=torch.float64)
    assert float(torch.maximum(i / n - cdf, cdf - (i - 1) / n).max()) < ks_critical(n)


@pytest.mark.parametrize("fn,settings,core", [  # core: variance_scaling_'s (scale, mode, distribution)
    (ti.xavier_uniform_, {}, (1.0, "fan_avg", "uniform")),
    (ti.xavier_normal_, {}, (1.0, "fan_avg", "normal")),
    (ti.kaiming_normal_, {"nonlinearity": "relu"}, (2.0, "fan_in", "normal")),
    (ti.kaiming_uniform_, {"nonlinearity": "relu", "mode": "fan_out"}, (2.0, "fan_out", "uniform")),
    (ti.lecun_uniform_, {}, (1.0, "fan_in", "uniform")),
    (ti.lecun_normal_, {}, (1.0, "fan_in", "normal")),
])
def test_named_schemes_are_the_core(fn, settings, core):
    a = fn(torch.empty(64, 32, 3), generator=gen(5), **settings)
    b = ti.variance_scaling_(torch.empty(64, 32, 3), *core, generator=gen(5))
    assert torch.equal(a, b)


def test_lecun_formulas():
    w = ti.lecun_uniform_(torch.empty(300, 400), generator=gen())
    assert float(w.abs().max()) <= math.sqrt(3 / 400) and float(w.abs().max()) > 0.999 * math.sqrt(3 / 400)
    w = ti.lecun_normal_(torch.empty(300, 400), generator=gen())
    assert float(w.std()) == pytest.approx(1 / math.sqrt(400), rel=std_tolerance(w.numel()))


def test_scaled_std_modes():
    f = Fans(100, 400)
    assert scaled_std(2.0, f, "fan_in") == pytest.approx(2 / 10)
    assert scaled_std(2.0, f, "fan_out") == pytest.approx(2 / 20)
    assert scaled_std(2.0, f, "fan_avg") == pytest.approx(2 / math.sqrt(250))
    assert scaled_std(2.0, f, "fan_geo_avg") == pytest.approx(2 / math.sqrt(200))


def test_complex_and_half_dtypes():
    w = ti.kaiming_normal_(torch.empty(64, 64, dtype=torch.complex64), generator=gen())
    assert w.is_complex() and w.abs().max() > 0
    for dtype in (torch.bfloat16, torch.float16):
        w = ti.variance_scaling_(torch.empty(256, 512, dtype=dtype), generator=gen())
        assert w.dtype == dtype
        assert float(w.float().std()) == pytest.approx(1 / math.sqrt(512), rel=0.02)
    assert ti.variance_scaling_(torch.empty(4, 4, dtype=torch.complex64)).is_complex()  # the complex truncated normal
    with pytest.raises(TypeError, match="trunc_normal_std_"):  # absolute bounds have no meaning off the real line
        ti.trunc_normal_(torch.empty(4, 4, dtype=torch.complex64))
