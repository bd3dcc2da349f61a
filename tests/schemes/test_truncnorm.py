import math
import threading
import warnings

import pytest
import torch

import torchinit as ti
from conftest import gen, ks_critical, new_thread_count, std_tolerance
from torchinit._util.floats import next_float
from torchinit.schemes import truncnorm

SQ2 = math.sqrt(2.0)


def phi_cdf(x):
    return 0.5 * math.erfc(-x / SQ2)


def trunc_cdf(x: torch.Tensor, mean, std, a, b):
    z = (x.double() - mean) / std
    lo, hi = phi_cdf((a - mean) / std), phi_cdf((b - mean) / std)
    return ((0.5 * torch.erfc(-z / SQ2)) - lo) / (hi - lo)


def ks_stat(x: torch.Tensor, cdf) -> float:
    xs, _ = torch.sort(x.reshape(-1).double())
    n = xs.numel()
    f = cdf(xs)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return float(torch.maximum(i / n - f, f - (i - 1) / n).max())


def test_std_factor_constant():
    assert ti.truncated_std_factor(2.0) == pytest.approx(0.87962566103423978, rel=1e-15)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("std", [0.02, 0.002, 0.001])
def test_bounds_exact_and_no_pile(dtype, std):
    # the case where inverse-CDF + clamp code piles values on the bounds: +-2 std bounds, small std, low precision
    a, b = -2 * std, 2 * std
    n = 1 << 20
    w = ti.trunc_normal_(torch.empty(n, dtype=dtype), 0.0, std, a, b, generator=gen())
    x = w.double()
    assert bool((x >= a).all()) and bool((x <= b).all())
    # The edge value may hold the mass of (hi - half a spacing, b]: density * width, no more.
    for bound, side in ((b, 1), (a, -1)):
        edge = float(x.max()) if side > 0 else float(x.min())
        count = int((x == edge).sum())
        spacing = abs(float(next_float(torch.tensor(edge, dtype=dtype), up=edge < 0)) - edge)  # toward 0
        width = abs(bound - edge) + spacing / 2
        mass_density = math.exp(-0.5 * ((bound) / std) ** 2) / (std * math.sqrt(2 * math.pi)) / math.erf(2 / SQ2)
        inner_density = (
            math.exp(-0.5 * ((abs(bound) - spacing) / std) ** 2) / (std * math.sqrt(2 * math.pi)) / math.erf(2 / SQ2)
        )
        expected = n * max(mass_density, inner_density) * width
        assert count <= expected + 6 * math.sqrt(expected) + 6, (edge, count, expected)


CASES = [  # (mean, std, a, b): exercising the polynomial, rejection and exact inverse-CDF samplers
    (0.0, 1.0, -2.0, 2.0),
    (0.0, 1.0, -0.5, 0.5),
    (1.0, 2.0, -1.0, 7.0),
    (0.0, 1.0, -1.0, 10.0),
    (0.0, 1.0, -5.0, 4.5),
    (0.0, 1.0, 3.0, 5.0),
    (0.0, 1.0, -math.inf, -1.5),
    (0.0, 1.0, 0.0, math.inf),
    (0.5, 0.01, 0.49, 0.5),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mean,std,a,b", CASES)
def test_distribution_ks(mean, std, a, b, dtype):
    n = 200_000
    w = ti.trunc_normal_(torch.empty(n, dtype=dtype), mean, std, a, b, generator=gen(1))
    assert bool((w.double() >= a).all() and (w.double() <= b).all())
    assert ks_stat(w, lambda x: trunc_cdf(x, mean, std, a, b)) < ks_critical(n)


@pytest.mark.parametrize("mean,std,a,b", [c for c in CASES if max(abs(c[2] - c[0]), abs(c[3] - c[0])) / c[1] <= 3.5])
def test_distribution_ks_on_the_parallel_kernel_path(mean, std, a, b):
    n = truncnorm.PARALLEL_THRESHOLD + truncnorm.CHUNK + 3  # chunked in threads, computed by the keyed kernel
    w = ti.trunc_normal_(torch.empty(n), mean, std, a, b, generator=gen(2))
    assert bool((w.double() >= a).all() and (w.double() <= b).all())
    assert ks_stat(w, lambda x: trunc_cdf(x, mean, std, a, b)) < ks_critical(n)


def test_all_three_samplers_are_exercised():
    kinds = set()
    for mean, std, a, b in CASES:
        for dtype in (torch.float32, torch.float64):
            s = truncnorm._choose_sampler((a - mean) / std, (b - mean) / std, dtype, mean, std, 16, torch.device("cpu"))
            kinds.add(type(s).__name__ if not hasattr(s, "func") else s.func.__name__)
    assert kinds == {"_PolySampler", "_fill_rejection", "_fill_inverse_cdf"}


def test_multiple_chunks_and_noncontiguous(monkeypatch):
    monkeypatch.setattr(truncnorm, "CHUNK", 1000)
    base = torch.zeros(300, 40)
    view = base[:, ::2]  # not contiguous
    ti.trunc_normal_(view, 0.0, 1.0, -1.0, 1.0, generator=gen())
    assert bool((base[:, 1::2] == 0).all())
    assert bool((view.abs() <= 1).all()) and view.std() > 0.4
    assert ks_stat(view, lambda x: trunc_cdf(x, 0.0, 1.0, -1.0, 1.0)) < ks_critical(view.numel())


@pytest.mark.parametrize("k", [1.0, 2.0, 3.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_trunc_normal_std_has_requested_std(k, dtype):
    n = 1 << 21
    w = ti.trunc_normal_std_(torch.empty(n, dtype=dtype), std=0.02, k=k, generator=gen(2)).double()
    sigma_u = 0.02 / ti.truncated_std_factor(k)
    assert bool((w.abs() <= k * sigma_u).all())
    rounding = 2**-8 if dtype == torch.bfloat16 else 0
    assert float(w.std()) == pytest.approx(0.02, rel=std_tolerance(n, kurtosis=3.0) + rounding)
    assert abs(float(w.mean())) < 6 * 0.02 / math.sqrt(n)


def test_seeded_reproducible():
    a = ti.trunc_normal_(torch.empty(5000), std=0.5, generator=gen(4))
    b = ti.trunc_normal_(torch.empty(5000), std=0.5, generator=gen(4))
    c = ti.trunc_normal_(torch.empty(5000), std=0.5, generator=gen(5))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_warns_when_nothing_is_truncated():
    with pytest.warns(UserWarning, match="nothing is truncated"):
        ti.trunc_normal_(torch.empty(10), std=0.02)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ti.trunc_normal_(torch.empty(10), std=0.02, a=-0.04, b=0.04)
        ti.trunc_normal_(torch.empty(10), std=1.0, a=-math.inf, b=math.inf)
        ti.trunc_normal_(torch.empty(10), std=0.02, a=-math.inf, b=0.01)


def test_zero_std_and_errors():
    assert bool((ti.trunc_normal_(torch.empty(5), 0.3, 0.0, 0.0, 1.0) == 0.3).all())
    with pytest.raises(ValueError, match="mean"):
        ti.trunc_normal_(torch.empty(5), 3.0, 0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match=r"no torch.bfloat16 value"):
        ti.trunc_normal_(torch.empty(5, dtype=torch.bfloat16), 1.0, 1.0, 1.0001, 1.0002)
    with pytest.raises(ValueError, match="underflows"):
        ti.trunc_normal_(torch.empty(5, dtype=torch.float64), 0.0, 1.0, 50.0, 60.0)
    with pytest.raises(ValueError, match="k must be > 0"):
        ti.trunc_normal_std_(torch.empty(5), 1.0, k=0.0)


N_PAR = truncnorm.PARALLEL_THRESHOLD + truncnorm.CHUNK + 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_parallel_values_do_not_depend_on_threads_and_settings_are_untouched(monkeypatch, dtype):
    from torchinit.rng import keyed

    n = truncnorm.PARALLEL_THRESHOLD + 3 * truncnorm.CHUNK + 5  # the threaded, keyed path
    main_before, new_before = torch.get_num_threads(), new_thread_count()
    a = ti.trunc_normal_(torch.empty(n, dtype=dtype), 0.1, 0.5, -0.7, 0.9, generator=gen(1))
    assert torch.get_num_threads() == main_before and new_thread_count() == new_before
    monkeypatch.setattr(keyed, "threads", lambda: 1)
    b = ti.trunc_normal_(torch.empty(n, dtype=dtype), 0.1, 0.5, -0.7, 0.9, generator=gen(1))
    assert torch.equal(a, b)
    torch.manual_seed(3)  # the global RNG: one draw keys the stream
    c = ti.trunc_normal_(torch.empty(n, dtype=dtype), 0.1, 0.5, -0.7, 0.9)
    monkeypatch.setattr(keyed, "threads", lambda: 3)
    torch.manual_seed(3)
    assert torch.equal(c, ti.trunc_normal_(torch.empty(n, dtype=dtype), 0.1, 0.5, -0.7, 0.9))
    assert float(c.min()) >= -0.7 and float(c.max()) <= 0.9 and not torch.equal(a, c)


def test_an_interrupt_half_way_leaves_the_tensor_unchanged(monkeypatch):
    from torchinit.rng import keyed

    original, calls = keyed.kernel_trunc_poly, []

    def interrupted(stream, first, *args):
        calls.append(first)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(stream, first, *args)

    monkeypatch.setattr(keyed, "kernel_trunc_poly", interrupted)
    t = torch.zeros(truncnorm.PARALLEL_THRESHOLD + 6 * truncnorm.CHUNK)
    with pytest.raises(KeyboardInterrupt):
        ti.trunc_normal_(t, std=1.0, a=-1.0, b=1.0, generator=gen(0))
    assert bool((t == 0).all()) and len(calls) < t.numel() // truncnorm.CHUNK
    def interrupt(*args):
        raise KeyboardInterrupt

    small = torch.zeros(1000)  # the serial path: an interrupt in the sampler leaves the tensor unchanged too
    monkeypatch.setattr(truncnorm._PolySampler, "transform", interrupt)
    with pytest.raises(KeyboardInterrupt):
        ti.trunc_normal_(small, std=1.0, a=-1.0, b=1.0)
    assert bool((small == 0).all())


def test_concurrent_calls_keep_the_thread_count_and_their_own_streams():
    threads_before = torch.get_num_threads()
    results = {}

    def work(i):
        results[i] = ti.trunc_normal_(torch.empty(N_PAR), std=1.0, a=-1.0, b=1.0, generator=gen(i))

    workers = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert torch.get_num_threads() == threads_before
    for i, t in results.items():  # each call still draws exactly its own stream
        assert torch.equal(t, ti.trunc_normal_(torch.empty(N_PAR), std=1.0, a=-1.0, b=1.0, generator=gen(i)))
