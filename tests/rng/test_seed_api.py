"""``seed=``/``name=`` on every random initializer: the keyed stream through the one sampling layer."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import torchinit as ti
from torchinit.rng import keyed
from torchinit.rng.sampling import GeneratorSampler, KeyedSampler, Region, make_sampler
from torchinit.schemes.truncnorm import _inner_bounds, sample_truncated_

# every public random initializer, called on a tensor with its other arguments fixed
RANDOM = {
    "uniform_": lambda t, **k: ti.uniform_(t, -0.5, 0.5, **k),
    "normal_": lambda t, **k: ti.normal_(t, 0.1, 0.3, **k),
    "trunc_normal_": lambda t, **k: ti.trunc_normal_(t, 0.0, 0.5, -1.0, 1.0, **k),
    "trunc_normal_std_": lambda t, **k: ti.trunc_normal_std_(t, 0.02, **k),
    "variance_scaling_": lambda t, **k: ti.variance_scaling_(t, 2.0, **k),
    "xavier_uniform_": lambda t, **k: ti.xavier_uniform_(t, **k),
    "xavier_normal_": lambda t, **k: ti.xavier_normal_(t, **k),
    "kaiming_uniform_": lambda t, **k: ti.kaiming_uniform_(t, **k),
    "kaiming_normal_": lambda t, **k: ti.kaiming_normal_(t, **k),
    "lecun_uniform_": lambda t, **k: ti.lecun_uniform_(t, **k),
    "lecun_normal_": lambda t, **k: ti.lecun_normal_(t, **k),
    "orthogonal_": lambda t, **k: ti.orthogonal_(t, **k),
    "sparse_": lambda t, **k: ti.sparse_(t, 0.25, **k),
    "glass_": lambda t, **k: ti.glass_(t, **k),
    "delta_orthogonal_": lambda t, **k: ti.delta_orthogonal_(t.view(t.shape[0], -1, 1), **k),
}


@pytest.mark.parametrize("fn", sorted(RANDOM))
def test_seed_and_name_decide_the_values(fn):
    f = RANDOM[fn]
    a = f(torch.empty(40, 24), seed=7, name="layer.weight")
    b = f(torch.empty(40, 24), seed=7, name="layer.weight")
    assert torch.equal(a, b)
    assert not torch.equal(a, f(torch.empty(40, 24), seed=7, name="other.weight"))
    assert not torch.equal(a, f(torch.empty(40, 24), seed=8, name="layer.weight"))
    state = torch.get_rng_state()
    f(torch.empty(40, 24), seed=7)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is not touched


@pytest.mark.parametrize("fn", sorted(RANDOM))
def test_seed_with_generator_is_a_type_error_and_writes_nothing(fn):
    t = torch.full((8, 6), 3.0)
    with pytest.raises(TypeError, match="generator= or seed=, not both"):
        RANDOM[fn](t, seed=0, generator=torch.Generator())
    with pytest.raises(ValueError, match="name='w' keys the stream of seed="):
        RANDOM[fn](t, name="w")
    with pytest.raises(TypeError, match="seed must be an int"):
        RANDOM[fn](t, seed=1.5)
    with pytest.raises(ValueError, match=r"seed must be an int in \[0, 2\*\*64\)"):
        RANDOM[fn](t, seed=-1)
    with pytest.raises(TypeError, match="name must be a str"):
        RANDOM[fn](t, seed=0, name=3)
    assert torch.equal(t, torch.full((8, 6), 3.0))


def test_keyed_values_are_the_documented_stream():
    """``normal_(t, mean, std, seed=s, name=n)`` is element i of Stream.of(s, n); uniform likewise."""
    s = keyed.Stream.of(11, "fc.weight")
    got = ti.normal_(torch.empty(33, 7), 0.5, 2.0, seed=11, name="fc.weight")
    assert torch.equal(got, keyed.normal_(torch.empty(33, 7), s, 0.5, 2.0))
    got = ti.uniform_(torch.empty(33, 7, dtype=torch.float64), -1.0, 3.0, seed=11, name="fc.weight")
    assert torch.equal(got, keyed.uniform_(torch.empty(33, 7, dtype=torch.float64), s, -1.0, 3.0))
    # the variance family draws the same stream, scaled: kaiming_normal_ is normal_ with its std
    std = math.sqrt(2.0) / math.sqrt(7)
    got = ti.kaiming_normal_(torch.empty(33, 7), seed=11, name="fc.weight")
    assert torch.equal(got, keyed.normal_(torch.empty(33, 7), s, 0.0, std))


def test_deterministic_schemes_check_seed_and_ignore_it():
    assert torch.equal(ti.Eye().init(torch.empty(3, 3), seed=4, name="x"), torch.eye(3))
    with pytest.raises(TypeError, match="not both"):
        ti.Zeros().init(torch.empty(3), seed=4, generator=torch.Generator())


@pytest.mark.parametrize("init", [ti.KaimingNormal(mode="fan_out"), ti.TruncNormalStd(std=0.02),
                                  ti.Orthogonal(gain=2.0), ti.Glass(isometric=True), ti.Sparse(sparsity=0.5)])
def test_initializer_objects_take_seed_and_name(init):
    a = init.init(torch.empty(12, 10), seed=3, name="w")
    b = init(torch.empty(12, 10), seed=3, name="w")
    f = type(init).function
    c = f(torch.empty(12, 10), **init.settings, seed=3, name="w")
    assert torch.equal(a, b) and torch.equal(a, c)


def test_keyed_glass_signs_are_the_streams_low_bits():
    w = ti.glass_(torch.empty(6, 6), seed=2, name="skip")  # square: the identity, one sign per diagonal entry
    bits = keyed.words(keyed.Stream.of(2, "skip"), 0, 6) & 1
    assert torch.equal(torch.diagonal(w), torch.where(bits.bool(), 1.0, -1.0))


def test_orthogonal_with_seed_is_orthogonal_and_draws_the_keyed_gaussian():
    w = ti.orthogonal_(torch.empty(20, 30, dtype=torch.float64), seed=1, name="q")
    assert torch.allclose(w @ w.T, torch.eye(20, dtype=torch.float64), atol=1e-12)
    g = keyed.normal_(torch.empty(20, 30, dtype=torch.float64), keyed.Stream.of(1, "q"))
    q, r = torch.linalg.qr(g.T)
    assert torch.allclose(w, (q * torch.diagonal(r).sign()).T, atol=1e-12)


def test_sparse_with_seed_draws_values_and_mask_from_two_substreams():
    w = ti.sparse_(torch.empty(10, 300), 0.3, std=1.0, seed=5, name="s")
    assert ((w == 0).sum(0) == 3).all()
    values = keyed.normal_(torch.empty(10, 300), keyed.Stream.of(5, "s"))
    kept = w != 0
    assert torch.equal(w[kept], values[kept])


# ---- regions: any part of a tensor without the rest ------------------------------------------------------


def _boxes():
    yield (6, 10), (0, 0), (6, 10)  # whole
    yield (6, 10), (2, 0), (3, 10)  # rows (Shard(0))
    yield (6, 10), (0, 7), (6, 3)  # columns (Shard(1)), uneven
    yield (6, 10), (1, 4), (4, 5)  # both
    yield (4, 5, 6), (1, 2, 0), (2, 3, 6)
    yield (4, 5, 6), (0, 0, 5), (4, 5, 1)
    yield (7, 3), (7, 0), (0, 3)  # an empty shard


@pytest.mark.parametrize("shape,offsets,local", list(_boxes()))
def test_a_region_gets_the_whole_tensors_values_at_its_positions(shape, offsets, local):
    stream = keyed.Stream.of(9, "w")
    box = tuple(slice(o, o + n) for o, n in zip(offsets, local))
    region = Region(local, shape, offsets)
    for kind, a, b in (("normal_", 0.0, 1.0), ("uniform_", -2.0, 2.0)):
        whole = getattr(KeyedSampler(stream), kind)(torch.empty(shape, dtype=torch.float64), a, b)
        part = getattr(KeyedSampler(stream, region), kind)(torch.empty(local, dtype=torch.float64), a, b)
        assert torch.equal(part, whole[box])
        half = torch.empty(local, dtype=torch.float64).transpose(0, 1).contiguous().transpose(0, 1)  # not contiguous
        assert torch.equal(getattr(KeyedSampler(stream, region), kind)(half, a, b), whole[box])
    # the truncated normal, every sampler it has: polynomial (float32), inverse CDF (float64, far tails)
    for dtype, (mean, std, lo_b, hi_b) in (
        (torch.float32, (0.0, 1.0, -2.0, 2.0)), (torch.float64, (0.0, 1.0, -1.0, 1.0)),
        (torch.float32, (0.0, 1.0, 4.0, 5.0)), (torch.bfloat16, (0.0, 1.0, -2.0, 2.0)),
    ):
        lo, hi = _inner_bounds(lo_b, hi_b, dtype)
        whole = sample_truncated_(torch.empty(shape, dtype=dtype), mean, std, lo_b, hi_b, lo, hi, KeyedSampler(stream))
        part = sample_truncated_(torch.empty(local, dtype=dtype), mean, std, lo_b, hi_b, lo, hi,
                                 KeyedSampler(stream, region))
        assert torch.equal(part, whole[box])


def test_keyed_truncated_normal_does_not_depend_on_size_or_threads():
    """Small tensors and chunked threaded ones take values from one definition (kernel = reference)."""
    big = ti.trunc_normal_std_(torch.empty(1 << 20), 1.0, seed=3, name="t")
    assert torch.equal(ti.trunc_normal_std_(torch.empty(1000), 1.0, seed=3, name="t"), big[:1000])
    part = torch.empty(777)
    sampler = KeyedSampler(keyed.Stream.of(3, "t"), Region((777,), (1 << 20,), (500_000,)))
    sigma_u = 1.0 / ti.truncated_std_factor(2.0)
    a, b = -2.0 * sigma_u, 2.0 * sigma_u
    lo, hi = _inner_bounds(a, b, torch.float32)
    sample_truncated_(part, 0.0, sigma_u, a, b, lo, hi, sampler)
    assert torch.equal(part, big[500_000:500_777])


def test_keyed_truncated_polynomial_reference_equals_kernel():
    if keyed.KERNEL is None:
        pytest.skip("the C kernel is not built here")
    stream = keyed.Stream.of(1, "p")
    from torchinit.schemes.truncnorm import _poly_fit

    plan = _poly_fit(-2.0, 2.0, 1.0)
    assert plan is not None
    args = (plan.y_lo, plan.y_hi, 0.25, plan.k0, plan.k1, plan.coeffs, -1.5, 2.0)
    for first in (0, 3, 1 << 34):
        kernel = keyed.trunc_poly_(torch.empty(5000), stream, first, *args)
        reference = keyed.trunc_poly_(torch.empty(10000)[::2], stream, first, *args)  # not contiguous: torch ops
        assert torch.equal(kernel, reference)


def test_keyed_truncated_normal_moments():
    """Mean 0 and std exactly as asked within 5 standard errors (n = 2**20, fixed seed)."""
    n = 1 << 20
    w = ti.trunc_normal_std_(torch.empty(n, dtype=torch.float64), 0.02, seed=0, name="m")
    se_mean = 0.02 / math.sqrt(n)
    assert abs(float(w.mean())) < 5 * se_mean
    # the variance's standard error: sqrt((m4 - s^4) / n); m4 of the +-2 truncated normal is below 3 s^4
    assert abs(float(w.std()) - 0.02) < 5 * 0.02 * math.sqrt(2.0 / n)
    assert float(w.abs().max()) <= 2 * 0.02 / ti.truncated_std_factor(2.0)


def test_make_sampler():
    assert isinstance(make_sampler(), GeneratorSampler)
    assert isinstance(make_sampler(seed=1), KeyedSampler)
    with pytest.raises(TypeError, match=r"torch.Generator"):
        make_sampler(generator=3)


def test_module_targets_take_seed():
    layer = nn.Conv2d(4, 8, 3)
    w = ti.kaiming_normal_(layer, seed=1, name="conv.weight")
    assert w is layer.weight
    std = math.sqrt(2.0) / math.sqrt(4 * 9)
    assert torch.equal(w.detach(), keyed.normal_(torch.empty(8, 4, 3, 3), keyed.Stream.of(1, "conv.weight"), 0.0, std))
