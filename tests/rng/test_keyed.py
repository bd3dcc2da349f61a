"""torchinit.rng.keyed: the counter-based stream, its two implementations and its distributions (no timing)."""

import hashlib
import math
import pathlib
import re
import shutil
import struct

import pytest
import torch

from conftest import std_tolerance
from torchinit.rng import keyed
from torchinit.rng.keyed import Stream

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs" / "keyed_rng.md"

# Random123's published known-answer vectors for Philox4x32-10 (its kat_vectors file): counter, key, output.
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


# ---- a third implementation, scalar Python, written from the specification in docs/keyed_rng.md -----------


def spec_key(seed, name):
    digest = hashlib.shake_128(b"torchinit.keyed/v1\0" + seed.to_bytes(8, "little") + name.encode()).digest(8)
    return struct.unpack("<II", digest)


def spec_word(stream, w):
    block = w // 4
    counter = (block & 0xFFFFFFFF, block >> 32, stream.sub & 0xFFFFFFFF, stream.sub >> 32)
    return keyed.philox4x32_10(counter, (stream.k0, stream.k1))[w % 4]


def horner(coefficients, x):
    p = coefficients[-1]
    for c in reversed(coefficients[:-1]):
        p = p * x + c
    return p


def spec_normal(stream, i):
    """z_i from the docs' formulas, in Python floats (IEEE doubles, no fused operations)."""
    b, lane = divmod(i, 4)
    radius_word, angle_word = (spec_word(stream, 4 * b + k) for k in ((0, 1) if lane < 2 else (2, 3)))
    mantissa, exponent = math.frexp(radius_word + 0.5)  # x = mantissa 2^exponent, mantissa in [1/2, 1)
    m, e = 2 * mantissa, exponent - 1  # m in [1, 2)
    if m > math.sqrt(2):
        m, e = m / 2, e + 1
    s = (m - 1) / (m + 1)
    log_u = (e - 32) * keyed._LN2 + (2 * s) * horner([1 / (2 * k + 1) for k in range(9)], s * s)
    r = math.sqrt(-2 * log_u)
    q = angle_word >> 30
    phi = ((angle_word & 0x3FFFFFFF) * 2.0**-30 + (2.0**-31 - 0.5)) * (math.pi / 2)
    sin = phi * horner([(-1) ** k / math.factorial(2 * k + 1) for k in range(7)], phi * phi)
    cos = horner([(-1) ** k / math.factorial(2 * k) for k in range(8)], phi * phi)
    cos_t, sin_t = [(cos, sin), (-sin, cos), (-cos, -sin), (sin, -cos)][q]
    return r * (cos_t if lane % 2 == 0 else sin_t)


def spec_uniform_f32(stream, i, low, high):
    return low + (high - low) * ((spec_word(stream, i) >> 8) * 2.0**-24)


# ---- Philox and the key ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("counter,key,expected", PHILOX_KAT)
def test_philox_known_answers(counter, key, expected):
    assert keyed.philox4x32_10(counter, key) == expected


def test_stream_key_is_shake128_of_domain_seed_and_name():
    for seed, name in [(0, ""), (1, "layer.weight"), (2**64 - 1, "ü/ß")]:
        s = Stream.of(seed, name)
        assert (s.k0, s.k1) == spec_key(seed, name) and s.sub == 0
    assert Stream.of(0, "a") != Stream.of(0, "b") != Stream.of(1, "b")


@pytest.mark.parametrize("impl", ["kernel", "reference"])
def test_words_are_philox_blocks_at_every_counter(impl, monkeypatch):
    if impl == "reference":
        monkeypatch.setattr(keyed, "KERNEL", None)
    cases = [(Stream(0, 0), 0), (Stream(0xA4093822, 0x299F31D0, 0x03707344_13198A2E), 0x85A308D3_243F6A88 >> 2),
             (Stream(0xFFFFFFFF, 0xFFFFFFFF, 2**64 - 1), 2**62 - 3), (Stream(123, 456, 7), 2**32 - 1)]
    for stream, block in cases:
        got = keyed.words(stream, 4 * block + 1, 10).tolist()
        assert got == [spec_word(stream, 4 * block + 1 + k) for k in range(10)]


# ---- the two implementations give the specification's bits ---------------------------------------------------


def test_the_kernel_is_built_where_a_compiler_is():
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler: the install falls back to the torch-operations stream")
    assert keyed.KERNEL is not None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind,a,b", [("normal_", 0.25, 1.5), ("uniform_", -0.5, 2.0)])
@pytest.mark.parametrize("offset,n", [(0, 1000), (3, 1001), (5, 7), (2**34 + 1, 300), (0, keyed.CHUNK + 5)])
def test_kernel_equals_reference(dtype, kind, a, b, offset, n):
    if keyed.KERNEL is None:
        pytest.skip("the kernel is not built")
    stream = Stream.of(7, f"{kind}{dtype}")
    t = getattr(keyed, kind)(torch.empty(n, dtype=dtype), stream, a, b, offset=offset)
    ref = keyed._reference_values(stream, kind, a, b, offset, n, dtype, torch.device("cpu"))
    assert torch.equal(t, ref)


def test_values_follow_the_specification():
    stream = Stream.of(3, "spec")
    n = 64
    z = keyed.normal_(torch.empty(n, dtype=torch.float64), stream, offset=10**12)
    assert z.tolist() == [spec_normal(stream, 10**12 + i) for i in range(n)]
    u = keyed.uniform_(torch.empty(n), stream, -1.0, 3.0)
    assert u.tolist() == [float(torch.tensor(spec_uniform_f32(stream, i, -1.0, 3.0), dtype=torch.float64).float())
                          for i in range(n)]


def test_documented_test_vector():
    """docs/keyed_rng.md lists the key and the first normals of (seed 0, name "weight"); they are the spec's."""
    text = DOCS.read_text()
    key_words = re.search(r"key words: `(0x[0-9a-f]+)`, `(0x[0-9a-f]+)`", text)
    assert key_words is not None
    k0, k1 = (int(h, 16) for h in key_words.groups())
    assert (k0, k1) == spec_key(0, "weight")
    section = text[text.index("## 4. Test vector"):text.index("## 5.")]
    documented = [float.fromhex(h) for h in re.findall(r"`(-?0x1\.[0-9a-f]+p[+-]\d+)`", section)]
    stream = Stream.of(0, "weight")
    assert len(documented) == 8
    assert documented == [spec_normal(stream, i) for i in range(8)]
    assert documented == keyed.normal_(torch.empty(8, dtype=torch.float64), stream).tolist()


# ---- any slice, any chunking, any thread count ------------------------------------------------------------


def test_a_slice_is_the_same_slice_of_the_whole():
    stream, n = Stream.of(1, "w"), 3 * keyed.CHUNK + 11
    whole = keyed.normal_(torch.empty(n), stream)
    for start, stop in [(0, 5), (7, keyed.CHUNK + 3), (keyed.CHUNK - 1, n)]:
        part = keyed.normal_(torch.empty(stop - start), stream, offset=start)
        assert torch.equal(part, whole[start:stop])


@pytest.mark.parametrize("workers", [1, 2, 3, 5])
def test_values_do_not_depend_on_the_threads(workers):
    stream, n = Stream.of(2, "w"), keyed.PARALLEL_THRESHOLD + 3 * keyed.CHUNK + 1
    want = keyed.uniform_(torch.empty(n, dtype=torch.bfloat16), stream, workers=1)
    assert torch.equal(keyed.uniform_(torch.empty(n, dtype=torch.bfloat16), stream, workers=workers), want)


def test_non_contiguous_targets_get_row_major_values():
    stream = Stream.of(4, "w")
    want = keyed.normal_(torch.empty(30, 40), stream)
    t = torch.zeros(40, 30).t()
    keyed.normal_(t, stream)
    assert torch.equal(t, want)
    base = torch.zeros(30, 80)
    keyed.normal_(base[:, ::2], stream)
    assert torch.equal(base[:, ::2], want) and bool((base[:, 1::2] == 0).all())


def test_without_the_kernel_the_values_are_the_same(monkeypatch):
    stream = Stream.of(5, "w")
    cases = [(torch.float32, "normal_"), (torch.float64, "uniform_"), (torch.bfloat16, "normal_")]
    want = [getattr(keyed, kind)(torch.empty(5000, dtype=dt), stream) for dt, kind in cases]
    monkeypatch.setattr(keyed, "KERNEL", None)
    for (dt, kind), w in zip(cases, want):
        assert torch.equal(getattr(keyed, kind)(torch.empty(5000, dtype=dt), stream), w)


def test_from_generator_draws_once_and_follows_the_state():
    g, h = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a, b = Stream.from_generator(g), Stream.from_generator(g)
    assert a != b and Stream.from_generator(h) == a
    torch.empty((), dtype=torch.int64).random_(generator=h)
    assert torch.equal(g.get_state(), h.get_state())


# ---- distributions ----------------------------------------------------------------------------------------


def test_normal_moments_and_shape():
    n = 1 << 22
    z = keyed.normal_(torch.empty(n, dtype=torch.float64), Stream.of(11, "moments"))
    assert abs(float(z.mean())) < 6 / math.sqrt(n)
    assert abs(float(z.std()) - 1) < std_tolerance(n)
    kurtosis = float((z**4).mean())  # 3 for a normal; its sampling std is sqrt(96/n)
    assert abs(kurtosis - 3) < 6 * math.sqrt(96 / n)
    for k in (1, 2, 3, 4):  # two-sided tail mass beyond k sigma, within 6 binomial sigmas
        p = math.erfc(k / math.sqrt(2))
        assert abs(float((z.abs() > k).double().mean()) - p) < 6 * math.sqrt(p * (1 - p) / n)
    # Kolmogorov-Smirnov on a subsample against the normal CDF: D < 1.95/sqrt(m) fails by chance with p = 0.001
    m = 200_000
    x = z[:m].sort().values
    cdf = 0.5 * torch.erfc(-x / math.sqrt(2))
    ranks = torch.arange(1, m + 1, dtype=torch.float64)
    d = max(float((ranks / m - cdf).max()), float((cdf - (ranks - 1) / m).max()))
    assert d < 1.95 / math.sqrt(m)


def test_pairs_are_uncorrelated():
    n = 1 << 20
    z = keyed.normal_(torch.empty(n, dtype=torch.float64), Stream.of(12, "pairs")).view(-1, 4)
    corr = torch.corrcoef(z.T)
    assert float((corr - torch.eye(4, dtype=torch.float64)).abs().max()) < 6 / math.sqrt(n / 4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_uniform_bounds_and_moments(dtype):
    n, low, high = 1 << 20, -0.25, 0.75
    u = keyed.uniform_(torch.empty(n, dtype=dtype), Stream.of(13, "u"), low, high)
    assert float(u.min()) >= low and float(u.max()) < high
    if dtype in (torch.float32, torch.float64):
        d, std = u.double(), (high - low) / math.sqrt(12)
        assert abs(float(d.mean()) - (low + high) / 2) < 6 * std / math.sqrt(n)
        assert abs(float(d.std()) / std - 1) < std_tolerance(n, kurtosis=1.8)


def test_uniform_never_reaches_high_after_rounding():
    for dtype in DTYPES:  # a span so narrow that many values round up to high in the dtype
        high = 1.0 + 2.0**-6
        u = keyed.uniform_(torch.empty(10000, dtype=dtype), Stream.of(14), 1.0, high)
        assert float(u.max()) < float(torch.tensor(high, dtype=dtype))


# ---- errors leave the tensor unchanged ----------------------------------------------------------------------


@pytest.mark.parametrize("call,error", [
    (lambda t: keyed.normal_(t, Stream.of(0), 0.0, -1.0), ValueError),
    (lambda t: keyed.normal_(t, Stream.of(0), math.inf, 1.0), ValueError),
    (lambda t: keyed.uniform_(t, Stream.of(0), 1.0, 0.0), ValueError),
    (lambda t: keyed.uniform_(t, Stream.of(0), "a", 1.0), TypeError),  # type: ignore[arg-type]  # on purpose
    (lambda t: keyed.normal_(t, Stream.of(0), offset=-1), ValueError),
    (lambda t: keyed.normal_(t.int(), Stream.of(0)), TypeError),
    (lambda t: keyed.normal_(t.requires_grad_(), Stream.of(0)), ValueError),
])
def test_errors_change_nothing(call, error):
    t = torch.zeros(100)
    with pytest.raises(error):
        call(t)
    assert bool((t == 0).all())


@pytest.mark.parametrize("args,error", [((-1, ""), ValueError), ((2**64, ""), ValueError), ((1.5, ""), TypeError),
                                        ((True, ""), TypeError), ((0, 3), TypeError)])
def test_stream_arguments(args, error):
    with pytest.raises(error):
        Stream.of(*args)


def test_numpy_integer_seeds():
    np = pytest.importorskip("numpy")
    assert Stream.of(np.int64(3), "w") == Stream.of(3, "w")


@pytest.mark.parametrize("coeffs", [[], [0.0] * (keyed.MAX_COEFFS + 1)])
@pytest.mark.parametrize("kernel", [True, False])
def test_trunc_poly_refuses_a_coefficient_count_out_of_bounds(coeffs, kernel, monkeypatch):
    if not kernel:
        monkeypatch.setattr(keyed, "KERNEL", None)
    out = torch.zeros(8)
    with pytest.raises(ValueError, match="coeffs: 1 to 32 coefficients"):
        keyed.trunc_poly_(out, keyed.Stream.of(0), 0, -0.5, 0.5, 0.0, 1.0, 0.0, coeffs, -1.0, 1.0)
    with pytest.raises(TypeError, match="coeffs must be a list"):
        keyed.trunc_poly_(out, keyed.Stream.of(0), 0, -0.5, 0.5, 0.0, 1.0, 0.0, "1", -1.0, 1.0)
    with pytest.raises(ValueError, match=r"coeffs\[1\] must be finite"):
        keyed.trunc_poly_(out, keyed.Stream.of(0), 0, -0.5, 0.5, 0.0, 1.0, 0.0, [1.0, math.nan], -1.0, 1.0)
    assert not out.any()


def test_a_single_coefficient_is_a_constant_polynomial_on_both_paths(monkeypatch):
    args = (keyed.Stream.of(3), 5, -0.5, 0.5, 0.25, 1.0, 0.0, [2.0], -10.0, 10.0)
    a = keyed.trunc_poly_(torch.empty(1000), *args)
    monkeypatch.setattr(keyed, "KERNEL", None)
    b = keyed.trunc_poly_(torch.empty(1000), *args)
    assert torch.equal(a, b)


def test_seeded_fills_under_vmap_and_grad_give_every_sample_the_tensors_values():
    import torchinit as ti

    expected = ti.normal_(torch.zeros(4, 5), std=0.5, seed=7, name="w")
    batched = torch.func.vmap(lambda x: ti.normal_(x.clone(), std=0.5, seed=7, name="w"))(torch.zeros(3, 4, 5))
    assert all(torch.equal(batched[i], expected) for i in range(3))
    k = ti.kaiming_uniform_(torch.zeros(4, 5), seed=1)
    assert torch.equal(torch.func.vmap(lambda x: ti.kaiming_uniform_(x.clone(), seed=1))(torch.zeros(2, 4, 5))[1], k)
    grad = torch.func.grad(lambda x: (ti.normal_(x.clone(), seed=7, name="w", std=0.5) * x).sum())(torch.ones(4, 5))
    # as torch.nn.init's fills, it writes under no_grad: autograd sees the clone (gradient 1) times x (the values)
    assert torch.equal(grad, expected + 1)
