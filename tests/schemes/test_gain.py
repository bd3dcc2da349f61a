import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchinit as ti
from torchinit.schemes.gains import ACTIVATIONS, second_moment


def trapezoid_gain(f, lo=-14.0, hi=14.0, n=2_000_001):
    """An independent reference: the trapezoid rule on a fine float64 grid (error ~ h^2)."""
    z = torch.linspace(lo, hi, n, dtype=torch.float64)
    y = f(z).double() ** 2 * torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return 1.0 / math.sqrt(float(torch.trapezoid(y, z)))


def test_closed_forms():
    assert ti.variance_gain(torch.relu) == pytest.approx(math.sqrt(2), rel=1e-12)
    assert ti.calculate_gain("identity") == pytest.approx(1.0, rel=1e-12)
    # E[sin(z)^2] = (1 - exp(-2)) / 2
    assert ti.calculate_gain("sin") == pytest.approx(1 / math.sqrt((1 - math.exp(-2)) / 2), rel=1e-10)
    # leaky relu: E[f^2] = (1 + s^2) / 2, torch's formula
    leaky = ti.calculate_gain("leaky_relu", 0.2)
    assert ti.variance_gain(lambda x: F.leaky_relu(x, 0.2)) == pytest.approx(leaky, rel=1e-12)
    # hardtanh: E[clip(z, -1, 1)^2] = 1 - 2 (phi(1) + (1 - Phi(1))) + 2 (1 - Phi(1)) ... via erf:
    p_out = math.erfc(1 / math.sqrt(2))  # P(|z| > 1)
    m2 = (1 - p_out) - 2 * math.exp(-0.5) / math.sqrt(2 * math.pi) + p_out
    assert ti.calculate_gain("hardtanh") == pytest.approx(1 / math.sqrt(m2), rel=1e-10)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_named_activations_match_reference(name):
    fn, _ = ACTIVATIONS[name]
    assert ti.calculate_gain(name) == pytest.approx(trapezoid_gain(lambda x: fn(x, None)), rel=1e-5)


@pytest.mark.parametrize("name,param,fn", [
    ("elu", 0.5, lambda x: F.elu(x, 0.5)),
    ("softplus", 2.0, lambda x: F.softplus(x, beta=2.0)),
    ("gelu", "tanh", lambda x: F.gelu(x, approximate="tanh")),
    ("celu", 2.0, lambda x: F.celu(x, 2.0)),
])
def test_params(name, param, fn):
    assert ti.calculate_gain(name, param) == pytest.approx(trapezoid_gain(fn), rel=1e-5)


def test_modules_and_callables():
    assert ti.calculate_gain(nn.GELU()) == pytest.approx(ti.calculate_gain("gelu"), rel=1e-12)
    assert ti.calculate_gain(nn.SiLU()) == pytest.approx(trapezoid_gain(F.silu), rel=1e-5)
    assert ti.calculate_gain(F.mish) == pytest.approx(trapezoid_gain(F.mish), rel=1e-5)
    assert ti.calculate_gain(nn.Sequential(nn.Tanh())) == pytest.approx(trapezoid_gain(torch.tanh), rel=1e-5)
    prelu = nn.PReLU(init=0.25)  # float32 parameter: evaluated in float32
    assert ti.calculate_gain(prelu) == pytest.approx(math.sqrt(2 / (1 + 0.25**2)), rel=1e-5)


def test_monte_carlo_agrees():
    z = torch.randn(4_000_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for f in (F.gelu, F.silu, F.hardswish):
        m2 = f(z) ** 2
        se = float(m2.std()) / math.sqrt(z.numel())
        assert abs(float(m2.mean()) - second_moment(f)) < 6 * se


def test_cache():
    calls = []

    def f(x):
        calls.append(1)
        return torch.tanh(x)

    g1 = ti.calculate_gain(f)
    g2 = ti.calculate_gain(f)
    assert g1 == g2 and len(calls) == 1
    ti.calculate_gain(nn.GELU(approximate="tanh"))
    assert ti.calculate_gain(nn.GELU(approximate="tanh")) == ti.calculate_gain("gelu", "tanh")


def test_errors():
    with pytest.raises(ValueError, match=r"nonlinearity must be one of.*'relu'.*'gelu'"):
        ti.calculate_gain("gleu")
    with pytest.raises(ValueError, match="param"):
        ti.calculate_gain("leaky_relu", "x")
    with pytest.raises(ValueError, match="param"):
        ti.calculate_gain("silu", 1.0)
    with pytest.raises(ValueError, match="param"):
        ti.calculate_gain(nn.ReLU(), 0.1)
    with pytest.raises(TypeError, match="nonlinearity"):
        ti.calculate_gain(3)  # type: ignore[arg-type]  # on purpose
    with pytest.raises(ValueError, match="second moment"):
        ti.calculate_gain(torch.zeros_like)
    with pytest.raises(TypeError, match="same shape"):
        ti.calculate_gain(lambda x: x.sum())


def test_kaiming_with_any_activation():
    w = torch.empty(256, 512)
    ti.kaiming_normal_(w, nonlinearity="gelu", generator=torch.Generator().manual_seed(0))
    want = ti.calculate_gain("gelu") / math.sqrt(512)
    assert float(w.std()) == pytest.approx(want, rel=6 * math.sqrt(2 / (4 * w.numel())))


def test_a_cached_gain_never_answers_for_another_instance_or_a_changed_setting():
    """A user's activation whose setting is not in its repr: each instance gets its own gain, and a changed
    setting is recomputed (the cache once keyed such modules by type and repr)."""

    class Scaled(nn.Module):
        def __init__(self, c: float) -> None:
            super().__init__()
            self.c = c

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c * torch.tanh(x)

    one, hundred = Scaled(1.0), Scaled(100.0)
    assert repr(one) == repr(hundred)
    g1, g100 = ti.calculate_gain(one), ti.calculate_gain(hundred)
    assert g100 == pytest.approx(g1 / 100, rel=1e-9)
    one.c = 2.0
    assert ti.calculate_gain(one) == pytest.approx(g1 / 2, rel=1e-9)
