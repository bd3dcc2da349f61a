"""muP on an FSDP2 model at world size 2 (gloo): the same roles, init, optimizer groups and first step as one
process. Nothing is stored on the tensors, so FSDP2's DTensor parameters (which drop attributes, mup#59) carry
nothing that could be lost."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import torchinit as ti
import torchinit.mup as mup

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))
import _sharded_worker as worker
from test_sharded import PROBLEM

pytestmark = [pytest.mark.distributed, pytest.mark.subprocess,
              pytest.mark.skipif(PROBLEM is not None, reason=PROBLEM or "")]


def _one_process() -> dict:
    with torch.device("meta"):
        model, base = worker.TinyLM(), worker.mup_base()
    out = {"roles": mup.roles(model, base)}
    ti.materialize_(model, worker.mup_policy(model, base), seed=worker.SEED, strict=True)
    out["init"] = {n: p.detach().clone() for n, p in model.named_parameters()}
    out["groups"], out["loss"] = worker.mup_step(model, base)
    out["final"] = {n: p.detach().clone() for n, p in model.named_parameters()}
    return out


def test_fsdp2_world_size_2_matches_one_process(tmp_path):
    result = tmp_path / "result.pt"
    outcome = worker.launch(2, result, ("mup",), timeout=120.0)
    failed = [(rank, rc, text[-3000:]) for rank, (rc, text) in enumerate(outcome) if rc != 0]
    assert not failed, failed
    got, want = torch.load(result, weights_only=False)["mup"], _one_process()
    assert got["roles"] == want["roles"]
    assert {r.kind for r in want["roles"].values()} == {"input", "hidden", "output", "vector"}
    assert got["groups"] == want["groups"]
    for name, value in want["init"].items():
        assert torch.equal(got["init"][name], value), name  # seed=: the same bits at any world size
    assert float(got["loss"]) == pytest.approx(float(want["loss"]), rel=1e-6)
    for name, value in want["final"].items():  # one AdamW step with muP's groups on DTensors
        assert torch.allclose(got[name], value, rtol=1e-5, atol=1e-7), name
