"""Every public initializer works inside torch's contexts: a meta device context, inference_mode, no_grad.

trunc_normal_ once crashed inside ``with torch.device("meta")`` (its scratch tensors were
created on the context's device) and under ``inference_mode`` above 2**18 elements (a helper
thread was outside the mode); these tests keep both fixed.
"""

import math

import pytest
import torch
from torch import nn

import torchinit as ti
from torchinit.rng import keyed
from torchinit.schemes import truncnorm

SMALL = (64, 32)
LARGE = (truncnorm.PARALLEL_THRESHOLD // 256 + 8, 256)  # above every threaded path's threshold

CALLS = {
    "uniform_": lambda t: ti.uniform_(t, -1.0, 1.0),
    "normal_": lambda t: ti.normal_(t, 0.0, 0.02),
    "trunc_normal_": lambda t: ti.trunc_normal_(t, std=0.02, a=-0.04, b=0.04),
    "trunc_normal_std_": lambda t: ti.trunc_normal_std_(t, 0.02),
    "constant_": lambda t: ti.constant_(t, 0.5),
    "ones_": ti.ones_,
    "eye_": ti.eye_,
    "identity_": ti.identity_,
    "xavier_uniform_": ti.xavier_uniform_,
    "xavier_normal_": ti.xavier_normal_,
    "kaiming_uniform_": lambda t: ti.kaiming_uniform_(t, nonlinearity="relu"),
    "kaiming_normal_": lambda t: ti.kaiming_normal_(t, nonlinearity="relu"),
    "lecun_normal_": ti.lecun_normal_,
    "variance_scaling_": lambda t: ti.variance_scaling_(t, 2.0, "fan_avg", "truncated_normal"),
    "orthogonal_": ti.orthogonal_,
    "sparse_": lambda t: ti.sparse_(t, 0.5),
    "hadamard_": ti.hadamard_,
    "glass_": ti.glass_,
}


def check_written(t, name):
    assert t.device.type == "cpu", name
    assert bool(torch.isfinite(t).all()), name
    assert float(t.abs().sum()) > 0, name


@pytest.mark.parametrize("name", sorted(CALLS))
@pytest.mark.parametrize("shape", [SMALL, LARGE], ids=["small", "large"])
def test_inside_a_meta_device_context(name, shape):
    t = torch.zeros(shape, device="cpu")
    with torch.device("meta"):
        CALLS[name](t)
    check_written(t, name)


@pytest.mark.parametrize("name", sorted(CALLS))
@pytest.mark.parametrize("shape", [SMALL, LARGE], ids=["small", "large"])
def test_under_inference_mode(name, shape):
    with torch.inference_mode():
        t = torch.zeros(shape)
        CALLS[name](t)
    check_written(t, name)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_under_no_grad_on_a_parameter_that_requires_grad(name):
    p = nn.Parameter(torch.zeros(LARGE))
    with torch.no_grad():
        CALLS[name](p)
    check_written(p.detach(), name)
    assert p.requires_grad and p.grad_fn is None


def test_keyed_fills_inside_contexts():
    stream, n = keyed.Stream.of(0, "w"), keyed.PARALLEL_THRESHOLD + 5
    want = keyed.normal_(torch.empty(n), stream)
    with torch.device("meta"):
        got = keyed.normal_(torch.empty(n, device="cpu"), stream)
        key = keyed.Stream.from_generator(torch.Generator().manual_seed(0))
    assert torch.equal(got, want) and key == keyed.Stream.from_generator(torch.Generator().manual_seed(0))
    with torch.inference_mode():
        t = keyed.uniform_(torch.empty(n, dtype=torch.bfloat16), stream)
    assert float(t.min()) >= 0 and float(t.max()) < 1 and not math.isnan(float(t.sum()))
