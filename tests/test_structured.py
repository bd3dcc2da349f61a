import math

import pytest
import torch
import torch.nn.init as tnn

import torchinit as ti
from conftest import gen


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(64, 64), (32, 96), (96, 32), (16, 8, 3, 3)])
def test_orthogonal_half_precision(dtype, shape):
    w = ti.orthogonal_(torch.empty(shape, dtype=dtype), gain=2.0, generator=gen())
    assert w.dtype == dtype
    m = w.float().reshape(shape[0], -1)
    gram = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
    eps = torch.finfo(dtype).eps
    assert float((gram / 4 - torch.eye(gram.shape[0])).abs().max()) < 8 * eps * math.sqrt(gram.shape[0])


def test_orthogonal_half_is_rounded_float32():
    ours = ti.orthogonal_(torch.empty(48, 80, dtype=torch.bfloat16), generator=gen(3))
    ref = tnn.orthogonal_(torch.empty(48, 80), generator=gen(3)).bfloat16()
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("shape", [(32, 32), (20, 50), (50, 20)])
def test_orthogonal_complex_is_unitary(shape):
    w = ti.orthogonal_(torch.empty(shape, dtype=torch.complex128), generator=gen())
    gram = w @ w.conj().T if shape[0] <= shape[1] else w.conj().T @ w
    assert float((gram - torch.eye(gram.shape[0])).abs().max()) < 1e-12


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


def test_sparse_zero_sparsity_and_std():
    w = ti.sparse_(torch.empty(100, 200), 0.0, std=0.5, generator=gen())
    assert (w != 0).all()
    assert float(w.std()) == pytest.approx(0.5, rel=6 * math.sqrt(2 / (4 * w.numel())))


def test_sparse_zero_pattern_is_uniform():
    # each row is zeroed in a column with probability num_zeros / rows
    rows, cols = 10, 20000
    w = ti.sparse_(torch.empty(rows, cols), 0.3, generator=gen())
    freq = (w == 0).double().mean(1)
    p = 3 / rows
    assert float((freq - p).abs().max()) < 6 * math.sqrt(p * (1 - p) / cols)
