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


def test_the_sqrt_without_numpy_is_correctly_rounded():
    np = pytest.importorskip("numpy")
    g = torch.Generator().manual_seed(0)
    for scale in (1e-3, 1.0, 1500.0, 1e200):
        x = torch.rand(200_000, generator=g, dtype=torch.float64) * scale + 1e-300
        assert torch.equal(keyed.correctly_rounded_sqrt(x), torch.from_numpy(np.sqrt(x.numpy())))


SCRIPT = """
import sys
if sys.argv[1] == "hide": sys.modules["numpy"] = None
import torch, torchinit as ti
values = [ti.normal_(torch.empty(70_001, dtype=torch.float64), seed=3),
          ti.trunc_normal_(torch.empty(70_001, dtype=torch.float64), seed=3),
          ti.uniform_(torch.empty(70_001, dtype=torch.float64), seed=3)]
torch.save(values, sys.argv[2])
"""


@pytest.mark.subprocess
def test_float64_seed_fills_without_numpy_or_kernel(tmp_path):
    import os
    import subprocess
    import sys

    runs = {}
    for name, env, numpy in (("kernel", {}, "keep"), ("bare", {"TORCHINIT_NO_KERNEL": "1"}, "hide")):
        out = tmp_path / f"{name}.pt"
        proc = subprocess.run([sys.executable, "-c", SCRIPT, numpy, str(out)], env={**os.environ, **env},
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs[name] = torch.load(out)
    assert all(torch.equal(a, b) for a, b in zip(runs["kernel"], runs["bare"]))
