"""Structured initializers: orthogonal in every dtype and per block, delta-orthogonal, identity,
sparse, ZerO/Hadamard."""

import math

import pytest
import torch
import torch.nn.init as tnn
from torch import nn

import torchinit as ti
from conftest import gen, std_tolerance, torch_nn_init

# ---------------------------------------------------------------- orthogonal_ in every dtype

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.complex64, torch.complex128]


def gram_error(w: torch.Tensor, gain: float = 1.0) -> float:
    """max |G - gain^2 I| of the Gram matrix on the short side, computed in float64 / complex128."""
    m = w.reshape(w.shape[0], -1).to(torch.complex128 if w.is_complex() else torch.float64)
    gram = m @ m.mH if m.shape[0] <= m.shape[1] else m.mH @ m
    return float((gram - gain**2 * torch.eye(gram.shape[0], dtype=gram.dtype)).abs().max())


def gram_tolerance(dtype: torch.dtype, n: int, gain: float = 1.0) -> float:
    """Explicit Gram-error bound for a (semi-)orthogonal matrix stored in ``dtype``, short side ``n``.

    Householder QR in the compute dtype (float32 for bf16/fp16) is orthogonal to about n eps_compute
    (Higham, Accuracy and Stability, Thm 19.4, with a small constant; 10 here). Rounding the result to
    ``dtype`` changes each entry by at most u = eps/2 relatively, so a Gram entry moves by at most
    2u |w_i||w_j| = eps gain^2 (Cauchy-Schwarz on unit rows/columns).
    """
    compute = {torch.bfloat16: torch.float32, torch.float16: torch.float32}.get(dtype, dtype)
    return gain**2 * (torch.finfo(dtype).eps + 10 * n * torch.finfo(compute).eps)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(64, 64), (32, 96), (96, 32), (16, 8, 3, 3), (12, 4, 5), (4, 2, 3, 3, 2)])
@pytest.mark.parametrize("gain", [1.0, 2.0])
def test_orthogonal_every_dtype(dtype, shape, gain):
    w = ti.orthogonal_(torch.empty(shape, dtype=dtype), gain=gain, generator=gen())
    assert w.dtype == dtype and w.shape == torch.Size(shape)
    n = min(shape[0], math.prod(shape[1:]))
    assert gram_error(w, gain) < gram_tolerance(dtype, n, gain)


def test_orthogonal_half_is_rounded_float32():
    ours = ti.orthogonal_(torch.empty(48, 80, dtype=torch.bfloat16), generator=gen(3))
    ref = torch_nn_init("orthogonal_", torch.empty(48, 80), gen(3)).bfloat16()
    assert torch.equal(ours, ref)


def test_orthogonal_complex_moments():
    # Haar unitary: every entry has E[w_ij] = 0 (uniform phase) and |w_ij|^2 ~ Beta(1, n - 1): mean 1/n
    n, draws = 8, 2000
    g = gen(5)
    ws = torch.stack([ti.orthogonal_(torch.empty(n, n, dtype=torch.complex128), generator=g) for _ in range(draws)])
    mean = ws.mean(0)
    assert float(mean.abs().max()) < 6 / math.sqrt(n * draws)  # each entry has E|w|^2 = 1/n
    power = (ws.abs() ** 2).mean(0)
    assert float((power - 1 / n).abs().max()) < 6 * math.sqrt((n - 1) / (n**2 * (n + 1) * draws))  # Beta variance


# ---------------------------------------------------------------- blocks=


def test_fans_of_blocks():
    assert ti.fans(torch.empty(12, 5), blocks=3) == (5, 4)
    assert ti.fans(nn.Linear(5, 12), blocks=3) == (5, 4)
    assert ti.fans(nn.Conv2d(4, 12, 3, groups=2), blocks=3) == (18, 18)  # (12/3/2) x (4/2) x 3 x 3 per block
    assert ti.fans(nn.MultiheadAttention(64, 8).in_proj_weight, blocks=3) == (64, 64)


def test_mha_packed_qkv_gets_the_variance_of_separate_weights():
    mha = nn.MultiheadAttention(256, 8)
    w = ti.xavier_uniform_(mha.in_proj_weight, blocks=3, generator=gen(1))
    bound = math.sqrt(6 / (256 + 256))  # a separate (E, E) weight: fan_in = fan_out = E
    # one fill with the block's bound: the very same RNG call as uniform_ on the whole tensor
    assert torch.equal(w, torch.empty(768, 256).uniform_(-bound, bound, generator=gen(1)))
    for block in w.detach().chunk(3):
        assert float(block.std()) == pytest.approx(bound / math.sqrt(3), rel=std_tolerance(block.numel(), 1.8))
    torch_var = float(torch_nn_init("xavier_uniform_", torch.empty(768, 256), gen(2)).var())  # fan_out 3E
    # the ratio of two sample variances of n uniform draws: 2 sqrt(2) times a std's relative tolerance
    assert torch_var == pytest.approx(float(w.detach().var()) / 2, rel=2 * math.sqrt(2) * std_tolerance(w.numel(), 1.8))


@pytest.mark.parametrize("fn", [ti.xavier_uniform_, ti.xavier_normal_, ti.kaiming_uniform_, ti.kaiming_normal_,
                                ti.lecun_uniform_, ti.lecun_normal_, ti.variance_scaling_])
def test_blocks_use_the_block_fans(fn):
    a = fn(torch.empty(4 * 64, 128, 3), blocks=4, generator=gen(2))
    b = fn(torch.empty(64, 128, 3), generator=gen(2))
    assert float(a.std()) == pytest.approx(float(b.std()), rel=6 * math.sqrt(2 / b.numel()))


def test_lstm_gates_orthogonal_per_block():
    # each 128 x 128 gate block orthogonal to ||W W^T - I||_inf < 1e-4
    lstm = nn.LSTM(512, 128)
    w = ti.orthogonal_(lstm.weight_hh_l0, blocks=4, generator=gen()).detach()
    for gate in w.chunk(4):
        assert float((gate @ gate.T - torch.eye(128)).abs().max()) < 1e-4
    ih = ti.orthogonal_(lstm.weight_ih_l0, blocks=4, generator=gen()).detach()  # (4 x 128, 512): orthonormal rows
    for gate in ih.chunk(4):
        assert float((gate @ gate.T - torch.eye(128)).abs().max()) < 1e-4
    whole = torch_nn_init("orthogonal_", torch.empty(512, 128), gen()).detach()  # torch: one matrix for all gates
    assert float((whole[:128] @ whole[:128].T - torch.eye(128)).abs().max()) > 0.1


def test_gru_blocks_and_batched_draw():
    gru = nn.GRU(64, 32)
    w = ti.orthogonal_(gru.weight_ih_l0, gain=0.5, blocks=3, generator=gen(4)).detach()
    for block in w.chunk(3):
        assert gram_error(block, 0.5) < gram_tolerance(torch.float32, 32, 0.5)
    assert not torch.equal(w[:32], w[32:64])  # independent blocks


@pytest.mark.parametrize("fn", [lambda t: ti.orthogonal_(t, blocks=3), lambda t: ti.kaiming_normal_(t, blocks=3),
                                lambda t: ti.variance_scaling_(t, blocks=3), lambda t: ti.xavier_uniform_(t, blocks=0),
                                lambda t: ti.lecun_normal_(t, blocks=2.0)])
def test_blocks_must_divide_dim0(fn):
    t = torch.randn(10, 4, generator=gen())
    before = t.clone()
    with pytest.raises(ValueError, match="blocks"):
        fn(t)
    assert torch.equal(t, before)


# ---------------------------------------------------------------- delta_orthogonal_


def circular_conv_singular_values(weight: torch.Tensor, size: int = 8) -> torch.Tensor:
    """Singular values of the circular convolution with ``weight`` (out, in, k...) on ``size``^d inputs.

    In the Fourier basis the operator is block-diagonal, one (out, in) block per frequency.
    """
    d = weight.dim() - 2
    spectrum = torch.fft.fftn(weight.to(torch.float64), s=(size,) * d, dim=tuple(range(2, 2 + d)))
    blocks = spectrum.permute(*range(2, 2 + d), 0, 1).reshape(-1, weight.shape[0], weight.shape[1])
    return torch.linalg.svdvals(blocks).reshape(-1)


@pytest.mark.parametrize("shape", [(16, 8, 3), (8, 16, 3), (16, 8, 3, 3), (8, 16, 5, 3), (6, 4, 3, 3, 3),
                                   (4, 6, 1, 3, 3), (8, 8, 3, 3)])
@pytest.mark.parametrize("gain", [1.0, 0.5])
def test_delta_orthogonal_operator_is_isometry(shape, gain):
    w = ti.delta_orthogonal_(torch.empty(shape, dtype=torch.float64), gain=gain, generator=gen())
    centre = (slice(None), slice(None), *(k // 2 for k in shape[2:]))
    rest = w.clone()
    rest[centre] = 0
    assert bool((rest == 0).all())
    assert gram_error(w[centre], gain) < gram_tolerance(torch.float64, min(shape[:2]), gain)
    sv = circular_conv_singular_values(w)
    assert float((sv - gain).abs().max()) < 1e-12


def test_delta_orthogonal_dtypes_seeding_and_errors():
    a = ti.delta_orthogonal_(torch.empty(16, 8, 3, 3), generator=gen(1))
    b = ti.delta_orthogonal_(torch.empty(16, 8, 3, 3), generator=gen(1))
    assert torch.equal(a, b)
    low = ti.delta_orthogonal_(torch.empty(16, 8, 3, 3, dtype=torch.bfloat16), generator=gen(1))
    assert torch.equal(low, a.bfloat16())
    t = torch.randn(4, 4)
    with pytest.raises(ValueError, match="3, 4 or 5 dims"):
        ti.delta_orthogonal_(t)
    assert ti.delta_orthogonal_(torch.empty(0, 4, 3)).numel() == 0


# ---------------------------------------------------------------- identity_


@pytest.mark.parametrize("shape", [(5, 5), (3, 7), (7, 3), (8, 4, 3), (4, 8, 3, 3), (6, 6, 1, 3, 3), (9, 2, 2, 2)])
@pytest.mark.parametrize("gain", [1.0, 0.3])
def test_identity_passes_the_first_channels(shape, gain):
    w = ti.identity_(torch.randn(shape), gain=gain)
    centre = (slice(None), slice(None), *(k // 2 for k in shape[2:]))
    k = min(shape[:2])
    want = torch.zeros(shape[:2])
    want[range(k), range(k)] = gain
    assert torch.equal(w[centre], want)
    assert int(w.count_nonzero()) == k


def test_identity_groups_and_torch_twins():
    w = ti.identity_(torch.empty(12, 2, 3, 3), gain=2.0, groups=3)
    assert torch.equal(w, 2 * tnn.dirac_(torch.empty(12, 2, 3, 3), groups=3))
    assert torch.equal(ti.identity_(torch.empty(3, 5)), tnn.eye_(torch.empty(3, 5)))
    assert torch.equal(ti.identity_(torch.empty(8, 4, 3)), tnn.dirac_(torch.empty(8, 4, 3)))
    for bad, words in [(lambda: ti.identity_(torch.empty(5)), "2 to 5 dims"),
                       (lambda: ti.identity_(torch.empty(6, 3), groups=4), "groups"),
                       (lambda: ti.identity_(torch.empty(6, 3), gain=float("nan")), "gain")]:
        with pytest.raises(ValueError, match=words):
            bad()


# ---------------------------------------------------------------- sparse_


def test_sparse_per_column_and_generator_controls_mask():
    rows, cols, sparsity = 40, 30, 0.25
    torch.manual_seed(0)
    a = ti.sparse_(torch.empty(rows, cols), sparsity, generator=gen(1))
    torch.manual_seed(123)  # a different global seed must not change the result
    b = ti.sparse_(torch.empty(rows, cols), sparsity, generator=gen(1))
    assert torch.equal(a, b)
    assert ((a == 0).sum(0) == math.ceil(sparsity * rows)).all()
    c = ti.sparse_(torch.empty(rows, cols), sparsity, generator=gen(2))
    assert not torch.equal(a == 0, c == 0)


@pytest.mark.parametrize("shape", [(16, 8, 3, 3), (10, 4, 5), (6, 2, 2, 2, 2)])
def test_sparse_conv_weights_flattened(shape):
    w = ti.sparse_(torch.empty(shape), 0.3, generator=gen())
    flat = w.reshape(shape[0], -1)
    assert ((flat == 0).sum(0) == math.ceil(0.3 * shape[0])).all()
    base = torch.zeros(shape[0], 2, *shape[1:])
    view = base[:, 0]  # not contiguous
    ti.sparse_(view, 0.3, generator=gen())
    assert torch.equal(view, w) and bool((base[:, 1] == 0).all())


def test_sparse_zero_sparsity_and_std():
    w = ti.sparse_(torch.empty(100, 200), 0.0, std=0.5, generator=gen())
    assert (w != 0).all()
    assert float(w.std()) == pytest.approx(0.5, rel=std_tolerance(w.numel()))


def test_sparse_zero_pattern_is_uniform():
    # each row is zeroed in a column with probability num_zeros / rows
    rows, cols = 10, 20000
    w = ti.sparse_(torch.empty(rows, cols), 0.3, generator=gen())
    freq = (w == 0).double().mean(1)
    p = 3 / rows
    assert float((freq - p).abs().max()) < 6 * math.sqrt(p * (1 - p) / cols)


# ---------------------------------------------------------------- hadamard_ (ZerO)


def sylvester(m: int) -> torch.Tensor:
    """H_m by Kronecker products, an independent construction: H_0 = [1], H_{k+1} = [[H, H], [H, -H]]."""
    h = torch.ones(1, 1, dtype=torch.float64)
    for _ in range(m):
        h = torch.kron(torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64), h)
    return h


@pytest.mark.parametrize("out,inp", [(2, 1), (4, 2), (5, 3), (8, 8 - 1), (9, 4), (100, 37), (129, 128), (64, 1)])
def test_hadamard_expansion_formula(out, inp):
    w = ti.hadamard_(torch.empty(out, inp, dtype=torch.float64), gain=1.5)
    m = math.ceil(math.log2(out))
    want = 1.5 * 2 ** (-(m - 1) / 2) * sylvester(m)[:out, :inp]
    assert torch.equal(w, want)


@pytest.mark.parametrize("out,inp", [(3, 2), (5, 3), (6, 5), (100, 37), (129, 128), (1000, 999), (513, 300), (7, 1)])
def test_hadamard_expansion_is_injective(out, inp):
    w = ti.hadamard_(torch.empty(out, inp, dtype=torch.float64))
    assert int(torch.linalg.matrix_rank(w)) == inp


@pytest.mark.parametrize("shape", [(6, 6), (4, 9), (5, 5, 3), (4, 8, 3, 3)])
def test_hadamard_identity_when_not_expanding(shape):
    assert torch.equal(ti.hadamard_(torch.randn(shape), gain=2.0), ti.identity_(torch.empty(shape), gain=2.0))


def test_hadamard_conv_centre_tap_and_deterministic():
    state = torch.get_rng_state()
    w = ti.hadamard_(torch.empty(12, 5, 3, 3))
    assert torch.equal(torch.get_rng_state(), state)  # draws nothing
    assert torch.equal(w[:, :, 1, 1], ti.hadamard_(torch.empty(12, 5)))
    assert int(w.count_nonzero()) == int(w[:, :, 1, 1].count_nonzero())
    bf16 = ti.hadamard_(torch.empty(12, 5, dtype=torch.bfloat16))
    assert torch.equal(bf16, ti.hadamard_(torch.empty(12, 5)).bfloat16())


def test_hadamard_does_not_materialize_h_m():
    # m = 16: H_m would have 2^32 entries; only the 40000 x 8 corner is built
    w = ti.hadamard_(torch.empty(40000, 8))
    assert torch.equal(w[:8].double(), (2 ** (-15 / 2) * sylvester(3)).float().double())  # H_16's corner is H_3
    assert int(torch.linalg.matrix_rank(w.double())) == 8
    assert float(w.abs().max()) == pytest.approx(2 ** (-15 / 2))
