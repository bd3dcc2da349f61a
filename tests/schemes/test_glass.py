"""Glass init: parity with glassinit 0.0.6, exactness, seeding, robustness, modules, isometric variant."""

import inspect
import itertools
import math
from fractions import Fraction

import glassInit as ref
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchinit as ti
from conftest import gen
from torchinit.schemes.glass import isometric_entries, sparse_entries, tent_entries
from torchinit.schemes.layout import resolve_dims

EPS32 = torch.finfo(torch.float32).eps


def ulp32(x: float) -> float:
    """The spacing of float32 values at ``x`` (> 0)."""
    return 2.0 ** (math.floor(math.log2(x)) - 23)


def ref_tolerance(O: int, I: int, gain: float = 1.0) -> float:
    """How far the reference's P = (W / gain)^2 may be from the exact one.

    The reference resamples in float32 (``F.interpolate``): the source position
    ``x = (3n - 1)/(N3 - 1) * j`` of a long index is off by up to one rounding
    of the scale (relative EPS32/2, times x < 3n) plus one of the product
    (half an ulp of x), i.e. below ``2 ulp32(3n)``; the interpolation weights
    ``frac(x)`` and ``1 - frac(x)`` inherit that error, plus a few EPS32 of arithmetic.
    """
    n = min(O, I)
    return gain**2 * (2 * ulp32(3 * n) + 8 * EPS32)


def reference(shape, zero_mean=False, **kw):
    return ref.glassInit(torch.empty(shape), zeroMean=zero_mean, **kw)


def assert_matches_reference(ours, theirs, O, I, gain=1.0):
    tol = ref_tolerance(O, I, gain)
    assert float((ours.double() ** 2 - theirs.double() ** 2).abs().max()) <= tol
    # the supports agree wherever an entry is clearly non-zero on either side
    clearly = (ours.double() ** 2 > tol) | (theirs.double() ** 2 > tol)
    assert torch.equal(torch.sign(ours)[clearly], torch.sign(theirs)[clearly])


# ---------------------------------------------------------------- parity with glassinit 0.0.6

SHAPES_2D = [(2, 4), (4, 2), (3, 7), (7, 3), (1, 5), (5, 1), (1, 1), (6, 6), (100, 100), (64, 256), (256, 64),
             (33, 97), (97, 33), (511, 512), (512, 511), (1000, 1001), (1001, 1000), (3, 1000), (1000, 3)]


@pytest.mark.parametrize("shape", SHAPES_2D)
@pytest.mark.parametrize("sparse", [False, True])
def test_matches_reference_2d(shape, sparse):
    ours = ti.glassInit(torch.empty(shape), zeroMean=False, sparse=sparse)
    assert_matches_reference(ours, reference(shape, sparse=sparse), *shape)


ND_CASES = [
    ((6, 4, 3), {}),
    ((6, 4, 3), {"inDim": (1, 2), "outDim": 0}),
    ((6, 4, 3), {"inDim": (2, 1), "outDim": 0}),  # the order given is the flattening order
    ((6, 4, 3), {"inDim": 0, "outDim": ...}),
    ((6, 4, 3), {"inDim": 1, "outDim": (2, 0)}),
    ((6, 4, 3), {"inDim": -1, "outDim": (0, 1)}),
    ((8, 4, 3, 3), {}),
    ((16, 4, 3, 3), {"gain": 0.5}),
    ((4, 8, 3, 3), {"inDim": 0, "outDim": ...}),
    ((3, 3, 16, 32), {"inDim": (0, 1, 2), "outDim": 3}),
    ((5, 7), {"gain": 0.3}),
    ((7, 5), {"gain": 2.0}),
    ((7, 5), {"gain": 2.0, "sparse": True}),
    ((12, 2, 3), {"inDim": (1, 2), "outDim": 0, "sparse": True}),
]


@pytest.mark.parametrize("shape,kw", ND_CASES, ids=[f"{s}-{k}" for s, k in ND_CASES])
def test_matches_reference_nd(shape, kw):
    ours = ti.glassInit(torch.empty(shape), zeroMean=False, **kw)
    theirs = reference(shape, **kw)
    ins, outs = resolve_dims(len(shape), kw.get("inDim", ...), kw.get("outDim", 0))
    O, I = math.prod(shape[d] for d in outs), math.prod(shape[d] for d in ins)
    assert_matches_reference(ours, theirs, O, I, kw.get("gain") or 1.0)
    same = ti.glass_(torch.empty(shape), kw.get("inDim", ...), kw.get("outDim", 0), kw.get("gain"), False,
                     kw.get("sparse", False))
    assert torch.equal(same, ours)


@pytest.mark.parametrize("shape", [(64, 256), (256, 64), (33, 97), (97, 33), (16, 4, 3, 3)])
def test_zero_mean_magnitudes_match_and_signs_balance(shape):
    ours = ti.glass_(torch.empty(shape), generator=gen(1))
    assert_matches_reference(ours.abs(), reference(shape), shape[0], math.prod(shape[1:]))
    signs = torch.sign(ours[ours != 0])
    n = signs.numel()
    assert abs(float((signs > 0).double().mean()) - 0.5) < 6 * 0.5 / math.sqrt(n)  # binomial(n, 1/2), 6 sigma


def test_compat_signatures_are_the_reference():
    for name in ("glassInit_", "glassInit"):
        ours = [(p.name, p.default, p.kind) for p in inspect.signature(getattr(ti, name)).parameters.values()]
        theirs = [(p.name, p.default, p.kind) for p in inspect.signature(getattr(ref, name)).parameters.values()]
        assert ours == theirs


def test_glass_signature():
    P = inspect.Parameter
    want = [("tensor_or_module", P.empty, P.POSITIONAL_OR_KEYWORD), ("in_dims", ..., P.POSITIONAL_OR_KEYWORD),
            ("out_dims", 0, P.POSITIONAL_OR_KEYWORD), ("gain", None, P.POSITIONAL_OR_KEYWORD),
            ("zero_mean", True, P.POSITIONAL_OR_KEYWORD), ("sparse", False, P.POSITIONAL_OR_KEYWORD),
            ("isometric", False, P.KEYWORD_ONLY), ("generator", None, P.KEYWORD_ONLY),
            ("seed", None, P.KEYWORD_ONLY), ("name", "", P.KEYWORD_ONLY)]
    got = [(p.name, p.default, p.kind) for p in inspect.signature(ti.glass_).parameters.values()]
    assert got == want


def test_compat_in_place_and_out_of_place():
    w = torch.zeros(4, 8)
    assert ti.glassInit_(w, zeroMean=False) is w and bool(w.any())
    w = torch.zeros(4, 8)
    out = ti.glassInit(w, zeroMean=False)
    assert out is not w and not bool(w.any()) and out.shape == w.shape and out.dtype == w.dtype


# ---------------------------------------------------------------- exact construction


def exact_tent(O: int, I: int) -> dict[tuple[int, int], Fraction]:
    """The published P as exact rationals, entry by entry (an independent reference for the positions)."""
    n, N = min(O, I), max(O, I)
    n3 = math.ceil(Fraction(3 * N) - Fraction(N, n) + 1)
    offset = (n3 - N) // 2
    p: dict[tuple[int, int], Fraction] = {}
    for c in range(N):
        x = Fraction((c + offset) * (3 * n - 1), n3 - 1) if n3 > 1 else Fraction(0)
        x0 = math.floor(x)
        for s, w in ((x0 % n, 1 - (x - x0)), ((x0 + 1) % n, x - x0)):
            key = (s, c) if O <= I else (c, s)
            p[key] = p.get(key, Fraction(0)) + w
    return p


@pytest.mark.parametrize("shape", [(2, 4), (7, 3), (5, 1), (511, 512), (512, 511), (40, 1000), (4096, 16384)])
def test_tent_positions_are_exact(shape):
    O, I = shape
    e = tent_entries(O, I, 1.0)
    got: dict[tuple[int, int], float] = {}
    for r, c, v in zip(e.rows.tolist(), e.cols.tolist(), e.values.tolist()):
        got[(r, c)] = got.get((r, c), 0.0) + v * v
    want = exact_tent(O, I)
    assert {k for k, v in want.items() if v} <= set(got)
    assert max(abs(got.get(k, 0.0) - float(v)) for k, v in want.items()) < 1e-12


def test_tent_columns_sum_to_one_and_at_most_two_entries():
    for O, I in [(64, 256), (256, 64), (1000, 1001), (3, 1000)]:
        w = ti.glass_(torch.empty(O, I, dtype=torch.float64), zero_mean=False, gain=1.0)
        long = w if O <= I else w.T  # (n, N): long index on dim 1
        assert torch.allclose((long**2).sum(0), torch.ones(long.shape[1], dtype=torch.float64), atol=1e-12)
        assert int((long != 0).sum(0).max()) <= 2


@pytest.mark.parametrize("shape", [(6001, 6000), (8192, 8191), (7, 3), (1000, 3), (2049, 2048)])
def test_sparse_positions_exact_and_injective(shape):
    O, I = shape
    e = sparse_entries(O, I, 1.0)
    assert e.rows.unique().numel() == I  # no two inputs share a row
    want = [round(Fraction(a * O, I)) for a in range(I)]  # Python rounds a Fraction half to even
    assert e.rows.tolist() == want


def test_sparse_large_near_square_weight():
    w = ti.glass_(torch.empty(6001, 6000), zero_mean=False, sparse=True)
    assert bool(((w != 0).sum(0) == 1).all())  # every input kept ...
    assert int((w != 0).sum(1).max()) == 1  # ... in a row of its own


def test_sparse_ignored_when_out_not_larger():
    a = ti.glass_(torch.empty(5, 7), zero_mean=False, sparse=True)
    b = ti.glass_(torch.empty(5, 7), zero_mean=False)
    assert torch.equal(a, b)


def test_default_gain_norms():
    # O > I: gain 1 and each output row is one column of P, which sums to 1: unit rows.
    # O < I: gain sqrt(O/I): columns have squared norm O/I; rows have (O/I) * rowsum(P), exactly 1
    # when O divides I and 1 on average otherwise (P sums to N in all).
    for O, I in [(256, 64), (97, 33), (64, 256), (33, 97)]:
        w = ti.glass_(torch.empty(O, I, dtype=torch.float64), zero_mean=False)
        rows, cols = (w**2).sum(1), (w**2).sum(0)
        if O > I:
            assert torch.allclose(rows, torch.ones_like(rows), atol=1e-12)
        else:
            assert torch.allclose(cols, torch.full_like(cols, O / I), atol=1e-12)
            assert float(rows.mean()) == pytest.approx(1.0, abs=1e-12)
            if I % O == 0:
                assert torch.allclose(rows, torch.ones_like(rows), atol=1e-12)


# ---------------------------------------------------------------- seeding


def test_generator_seeds_signs_and_leaves_global_rng():
    state = torch.get_rng_state()
    a = ti.glass_(torch.empty(64, 200), generator=gen(3))
    b = ti.glass_(torch.empty(64, 200), generator=gen(3))
    c = ti.glass_(torch.empty(64, 200), generator=gen(4))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c) and torch.equal(a.abs(), c.abs())


def test_global_rng_without_generator():
    torch.manual_seed(5)
    a = ti.glass_(torch.empty(64, 200))
    torch.manual_seed(5)
    b = ti.glass_(torch.empty(64, 200))
    assert torch.equal(a, b)


# ---------------------------------------------------------------- robustness

BAD = [  # (shape, kwargs, exception, words)
    ((4, 6), {"in_dims": (), "out_dims": 0}, ValueError, ["in_dims", "empty"]),
    ((4, 6), {"in_dims": 1, "out_dims": ()}, ValueError, ["out_dims", "empty"]),
    ((6,), {}, ValueError, ["in_dims", "empty"]),
    ((4, 6, 3), {"in_dims": (1, 1), "out_dims": 0}, ValueError, ["in_dims", "twice"]),
    ((4, 6, 3), {"in_dims": (1, 2), "out_dims": (0, 2)}, ValueError, ["both"]),
    ((4, 6), {"in_dims": -3, "out_dims": 0}, ValueError, ["in_dims", "out of range"]),
    ((4, 6), {"in_dims": 1, "out_dims": 2}, ValueError, ["out_dims", "out of range"]),
    ((4, 6, 3), {"in_dims": 1, "out_dims": 0}, ValueError, ["neither", "[2]"]),
    ((4, 6), {"in_dims": ..., "out_dims": ...}, ValueError, ["Ellipsis"]),
    ((4, 6), {"in_dims": 1.0}, TypeError, ["in_dims"]),
    ((4, 6), {"gain": float("inf")}, ValueError, ["gain", "finite"]),
    ((4, 6), {"zero_mean": 1}, TypeError, ["zero_mean", "bool"]),
    ((6, 4), {"sparse": True, "isometric": True}, ValueError, ["sparse", "isometric"]),
]


@pytest.mark.parametrize("shape,kw,exc,words", BAD, ids=[str(b[1]) for b in BAD])
def test_bad_input_is_a_clear_error_and_changes_nothing(shape, kw, exc, words):
    t = torch.randn(shape, generator=gen())
    before = t.clone()
    with pytest.raises(exc) as info:
        ti.glass_(t, **kw)
    for w in words:
        assert w in str(info.value), (w, str(info.value))
    assert torch.equal(t, before)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
def test_integer_and_complex_rejected(dtype):
    t = torch.ones(4, 6, dtype=dtype)
    with pytest.raises(TypeError, match="real floating-point"):
        ti.glass_(t)
    assert bool((t == 1).all())


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (0, 3, 3)])
def test_zero_size_is_noop(shape):
    t = torch.empty(shape)
    assert ti.glass_(t) is t


def test_meta_passes_through():
    t = torch.empty(64, 256, device="meta")
    assert ti.glass_(t) is t and t.is_meta
    conv = nn.Conv2d(8, 16, 3, device="meta")
    assert ti.glass_(conv, isometric=True) is conv.weight


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("isometric", [False, True])
def test_half_precision_is_fp32_cast(dtype, isometric):
    low = ti.glass_(torch.empty(48, 80, dtype=dtype), isometric=isometric, generator=gen(2))
    full = ti.glass_(torch.empty(48, 80), isometric=isometric, generator=gen(2))
    assert low.dtype == dtype and torch.equal(low, full.to(dtype))


def test_parameter_noncontiguous_and_numpy():
    p = nn.Parameter(torch.zeros(8, 4))
    assert ti.glass_(p, zero_mean=False) is p and p.grad_fn is None and p.requires_grad
    base = torch.full((12, 8), 7.0)
    view = base[::2].t()  # (8, 6), not contiguous
    ti.glass_(view, zero_mean=False)
    assert torch.equal(view, ti.glass_(torch.empty(8, 6), zero_mean=False)) and bool((base[1::2] == 7).all())
    np = pytest.importorskip("numpy")
    arr = np.zeros((4, 8), dtype=np.float32)
    assert ti.glass_(arr, zero_mean=False) is arr and arr.any()


# ---------------------------------------------------------------- modules


def test_linear_module():
    lin = nn.Linear(12, 5)
    w = ti.glass_(lin, zero_mean=False)
    assert w is lin.weight
    assert torch.equal(w, ti.glass_(torch.empty(5, 12), in_dims=1, out_dims=0, zero_mean=False))


@pytest.mark.parametrize("module,in_dims,out_dims", [
    (nn.Conv1d(4, 8, 3), (1, 2), 0),
    (nn.Conv2d(8, 4, 3), (1, 2, 3), 0),
    (nn.Conv3d(2, 6, (1, 2, 3)), (1, 2, 3, 4), 0),
    (nn.ConvTranspose2d(8, 4, 2, stride=2), 0, (1, 2, 3)),  # each tap its own output pixel
    (nn.ConvTranspose2d(8, 4, 3, stride=1), (0, 2, 3), 1),
    (nn.ConvTranspose1d(8, 4, 4, stride=2), (0, 2), 1),
])
def test_conv_module_dims(module, in_dims, out_dims):
    w = ti.glass_(module, zero_mean=False)
    assert w is module.weight
    assert torch.equal(w, ti.glass_(torch.empty(w.shape), in_dims=in_dims, out_dims=out_dims, zero_mean=False))


@pytest.mark.parametrize("module", [nn.Conv2d(8, 16, 3, groups=4), nn.ConvTranspose2d(8, 12, 3, groups=4),
                                    nn.ConvTranspose2d(8, 12, 2, stride=2, groups=2), nn.Linear(6, 6)])
@pytest.mark.parametrize("isometric", [False, True])
def test_grouped_modules_one_map_per_group(module, isometric):
    layout = ti.glass_layout(module)
    w = ti.glass_(module, zero_mean=False, isometric=isometric).detach()
    blocks = w.chunk(layout.groups, dim=0)
    single = type(module)(**{**_conv_args(module), "groups": 1}) if layout.groups > 1 else module
    want = ti.glass_(single, zero_mean=False, isometric=isometric).detach()
    for block in blocks:
        assert torch.equal(block, want)


def _conv_args(m):
    if m.transposed:
        return dict(in_channels=m.in_channels // m.groups, out_channels=m.out_channels // m.groups,
                    kernel_size=m.kernel_size, stride=m.stride)
    return dict(in_channels=m.in_channels // m.groups, out_channels=m.out_channels // m.groups,
                kernel_size=m.kernel_size)


def test_module_errors():
    with pytest.raises(TypeError, match=r"Embedding.*Linear"):
        ti.glass_(nn.Embedding(4, 3))
    with pytest.raises(ValueError, match="in_dims"):
        ti.glass_(nn.Linear(4, 3), in_dims=1)


# ---------------------------------------------------------------- the isometric variant

ISO_SHAPES = [(1, 1), (1, 7), (7, 1), (3, 5), (5, 3), (64, 256), (256, 64), (511, 512), (512, 511),
              (1000, 1001), (3, 1000), (1000, 3), (97, 33), (384, 1024)]


@pytest.mark.parametrize("shape", ISO_SHAPES)
@pytest.mark.parametrize("zero_mean", [False, True])
@pytest.mark.parametrize("gain", [None, 0.5])
def test_isometric_is_exactly_semi_orthogonal(shape, zero_mean, gain):
    O, I = shape
    w = ti.glass_(torch.empty(shape, dtype=torch.float64), gain=gain, zero_mean=zero_mean, isometric=True,
                  generator=gen())
    g = 1.0 if gain is None else gain
    gram = w @ w.T if O <= I else w.T @ w
    assert float((gram - g * g * torch.eye(min(O, I), dtype=torch.float64)).abs().max()) < 1e-13
    assert bool((w != 0).any(0).all()) and bool((w != 0).any(1).all())  # no dead rows or columns


@pytest.mark.parametrize("n", [1, 5, 64, 100])
def test_isometric_square_is_identity(n):
    assert torch.equal(ti.glass_(torch.empty(n, n), zero_mean=False, isometric=True), torch.eye(n))


def test_isometric_is_local():
    for O, I in [(64, 256), (256, 64), (97, 33), (1000, 1001)]:
        e = isometric_entries(O, I, 1.0)
        n, N = min(O, I), max(O, I)
        short, long = (e.rows, e.cols) if O <= I else (e.cols, e.rows)
        pos = (long.double() + 0.5) * n / N  # where the long index sits on the short axis
        assert bool(((pos >= short) & (pos < short + 1)).all())


def test_isometric_composes():
    for n, N in [(64, 128), (3, 7), (100, 1000), (511, 512)]:
        up = ti.glass_(torch.empty(N, n, dtype=torch.float64), zero_mean=False, isometric=True)
        down = ti.glass_(torch.empty(n, N, dtype=torch.float64), zero_mean=False, isometric=True)
        assert torch.equal(up, down.T)
    widths = [64, 128, 256, 512, 256, 64]
    product = torch.eye(64, dtype=torch.float64)
    for a, b in itertools.pairwise(widths):
        product = ti.glass_(torch.empty(b, a, dtype=torch.float64), zero_mean=False, isometric=True) @ product
    eye = torch.eye(64, dtype=torch.float64)
    assert torch.equal(product != 0, eye != 0)  # exactly diagonal: the supports nest
    eps = torch.finfo(torch.float64).eps
    assert float((product.diagonal() - 1).abs().max()) <= 8 * eps  # 1/sqrt(k)^2 * k, rounded a few times


def test_isometric_deterministic_without_zero_mean():
    state = torch.get_rng_state()
    torch.manual_seed(1)
    a = ti.glass_(torch.empty(30, 70), zero_mean=False, isometric=True)
    torch.manual_seed(2)
    b = ti.glass_(torch.empty(30, 70), zero_mean=False, isometric=True)
    assert torch.equal(a, b)
    torch.set_rng_state(state)


def circular_conv_singular_values(weight: torch.Tensor, size: int) -> torch.Tensor:
    """Singular values of the circular convolution on ``size``^d inputs with ``weight`` (out, in, k...).

    The operator is block-diagonal in the Fourier basis: one (out, in) block per frequency.
    """
    d = weight.dim() - 2
    spectrum = torch.fft.fftn(weight.double(), s=(size,) * d, dim=tuple(range(2, 2 + d)))
    blocks = spectrum.permute(*range(2, 2 + d), 0, 1).reshape(-1, weight.shape[0], weight.shape[1])
    return torch.linalg.svdvals(blocks).reshape(-1)


def dense_groups(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """A grouped conv weight (out, in/g, k...) as the equivalent dense (out, in, k...) weight."""
    out, per_in = weight.shape[:2]
    dense = weight.new_zeros(out, per_in * groups, *weight.shape[2:])
    for g, block in enumerate(weight.chunk(groups)):
        dense[g * (out // groups):(g + 1) * (out // groups), g * per_in:(g + 1) * per_in] = block
    return dense


@pytest.mark.parametrize("conv", [nn.Conv1d(6, 10, 3), nn.Conv2d(16, 8, 3), nn.Conv2d(8, 8, 5),
                                  nn.Conv2d(8, 16, 3, groups=4), nn.Conv3d(4, 6, 3)])
@pytest.mark.parametrize("gain", [None, 2.0])
def test_isometric_conv_operator_is_an_isometry(conv, gain):
    w = ti.glass_(conv, gain=gain, isometric=True, generator=gen()).detach()
    centre = tuple(k // 2 for k in w.shape[2:])
    mask = torch.ones(w.shape[2:], dtype=torch.bool)
    mask[centre] = False
    assert bool((w[..., mask] == 0).all())  # all weight at the centre tap
    sv = circular_conv_singular_values(dense_groups(w, conv.groups), size=8)
    g = 1.0 if gain is None else gain
    assert float((sv - g).abs().max()) < 1e-6  # float32 weights


def test_isometric_transposed_conv_stride_equal_kernel():
    up = nn.ConvTranspose2d(16, 8, 2, stride=2, bias=False)  # (16 -> 8 x 2 x 2 = 32 outputs per pixel)
    ti.glass_(up, isometric=True, generator=gen())
    x = torch.randn(3, 16, 5, 5, generator=gen(1), dtype=torch.float64)
    y = F.conv_transpose2d(x, up.weight.double(), stride=2)
    assert torch.allclose(y.flatten(1).norm(dim=1), x.flatten(1).norm(dim=1), rtol=1e-6)
