"""The same bits with the compiled kernel and without it (no compiler at install, TORCHINIT_NO_KERNEL=1), on the
generator and global-RNG paths of large fills too: the keyed stream is computed with torch operations then."""

import pytest
import torch
from torch import nn

import torchinit as ti
from torchinit.rng import keyed

N = 2 * keyed.PARALLEL_THRESHOLD + 3  # past the threshold where large CPU fills take the keyed stream


def _both(monkeypatch, compute):
    if keyed.KERNEL is None:
        pytest.skip(f"the kernel is not built here ({keyed.KERNEL_STATUS}): nothing to compare")
    with_kernel = compute()
    monkeypatch.setattr(keyed, "KERNEL", None)
    return with_kernel, compute()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_generator_fills(monkeypatch, dtype):
    def compute():
        g = torch.Generator().manual_seed(0)
        return [ti.trunc_normal_(torch.empty(N, dtype=dtype), std=1, a=-2, b=2, generator=g),
                ti.normal_(torch.empty(N, dtype=dtype), generator=g),
                ti.uniform_(torch.empty(N, dtype=dtype), generator=g)]

    first, second = _both(monkeypatch, compute)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_materialize_from_the_global_rng(monkeypatch):
    def compute():
        torch.manual_seed(0)
        with ti.deferred():
            model = nn.Sequential(nn.Linear(512, 512), nn.Linear(512, 512))
        ti.materialize_(model)
        return ti.fingerprint(model)

    first, second = _both(monkeypatch, compute)
    assert first == second
