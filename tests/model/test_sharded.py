"""Sharded init on 1, 2 and 4 gloo ranks: the same bits as one process.

Each world size runs ``_sharded_worker.py`` in that many processes (free port, hard
timeout, every process ended in ``finally``). The workers initialize DTensors under every
placement (Shard on any dim, uneven, Replicate, 2-D meshes) and whole models (FSDP2
``fully_shard`` on meta, tensor parallel Colwise/Rowwise, TP + FSDP2 on a 2-D mesh) with
``seed=``; rank 0 saves each parameter's ``full_tensor()``. Every value must equal the
single-process call, bit for bit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import _sharded_worker as worker
import pytest
import torch

import torchinit as ti

WORLD_SIZES = (1, 2, 4)
TIMEOUT = 180.0  # seconds for one world size, all ranks


PROBLEM = worker.PROBLEM
pytestmark = [pytest.mark.distributed, pytest.mark.subprocess,  # every test runs on ranks started by launch()
              pytest.mark.skipif(PROBLEM is not None, reason=PROBLEM or "")]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> dict[int, dict]:
    results = {}
    for world in WORLD_SIZES:
        out = tmp_path_factory.mktemp(f"world{world}") / "result.pt"
        outcome = worker.launch(world, out, timeout=TIMEOUT)
        failed = [(rank, rc, text[-3000:]) for rank, (rc, text) in enumerate(outcome) if rc != 0]
        assert not failed, f"world size {world}: ranks failed: {failed}"
        results[world] = torch.load(out, weights_only=False)
    return results


@pytest.fixture(scope="module")
def expected_calls() -> dict[str, torch.Tensor]:
    return worker.expected_calls()


@pytest.mark.parametrize("world", WORLD_SIZES)
def test_every_placement_gives_the_single_process_values(ranks, expected_calls, world):
    got = ranks[world]["placements"]
    checked = 0
    for key, value in got.items():
        if key.startswith("whole|"):
            continue
        want = expected_calls[key.split("|")[0]]
        assert value.dtype == want.dtype and torch.equal(value, want), key
        checked += 1
    # Shard(0), Shard(1), Replicate on every size; 5 more 2-D placements on 4 ranks (every shape has 2+ dims)
    assert checked == len(expected_calls) * (3 + (5 if world == 4 else 0))


ELEMENTWISE = ("normal_", "uniform_", "trunc_normal_", "trunc_normal_std_", "trunc_normal_std_f64", "kaiming_normal_",
               "xavier_uniform_", "variance_scaling_", "kaiming_uniform_4d")
WHOLE = ("orthogonal_", "sparse_", "glass_", "eye_", "hadamard_", "delta_orthogonal_", "normal_c64")


@pytest.mark.parametrize("world", WORLD_SIZES)
def test_elementwise_schemes_generate_only_the_local_shard(ranks, world):
    """With seed=, element-wise schemes never build the whole tensor; whole-matrix schemes do, once per call."""
    counts = {k[len("whole|"):]: v for k, v in ranks[world]["placements"].items() if k.startswith("whole|")}
    assert counts
    for key, whole in counts.items():
        name = key.split("|")[0]
        if name in ELEMENTWISE:
            assert whole == 0, key
        else:
            assert name in WHOLE and whole == 1, key


@pytest.fixture(scope="module")
def expected_models() -> dict[str, dict[str, torch.Tensor]]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TinyLM has no init method (materialize_ says so)
        return {which: worker.expected_model(which) for which in ("policy", "own", "generator", "partial")}


@pytest.mark.parametrize("world", WORLD_SIZES)
@pytest.mark.parametrize("scenario", ["fsdp", "fsdp_own", "fsdp_apply", "tp", "tp_apply", "tp_fsdp", "fault",
                                      "generator"])
def test_sharded_models_equal_the_unsharded_model(ranks, expected_models, world, scenario):
    got = ranks[world][scenario]
    want = expected_models[{"fsdp_own": "own", "generator": "generator"}.get(scenario, "policy")]
    for name, value in want.items():
        assert torch.equal(got[name], value), name
        sharded = not scenario.startswith("tp") or scenario == "tp_fsdp" or ".up." in name or ".down." in name
        # (TP alone leaves the other parameters plain tensors)
        assert got[f"type|{name}"].startswith("DTensor" if sharded else "Tensor"), (name, got[f"type|{name}"])
    reference = worker.TinyLM()
    with torch.no_grad():
        for name, p in reference.named_parameters():
            p.copy_(want[name])
    assert got["fingerprint"] == ti.fingerprint(reference)


@pytest.mark.parametrize("world", WORLD_SIZES)
def test_a_partly_sharded_model_keeps_ties_shared_buffers_recorded_values_and_attributes(ranks, expected_models, world):
    got = ranks[world]["partial"]
    assert got["checks"] == {"tied": True, "shared buffer": True, "attributes": True}
    for name, value in expected_models["partial"].items():
        assert torch.equal(got[name], value), name
    assert torch.equal(got["gamma"], torch.full((10,), 1e-5))  # the constructor's value, recorded under deferred()


@pytest.mark.parametrize("world", WORLD_SIZES)
def test_the_report_prints_on_one_rank(ranks, world):
    assert "blocks.0.up.weight" in ranks[world]["fsdp"]["report"]


@pytest.mark.parametrize("world", WORLD_SIZES)
def test_an_interrupted_materialize_leaves_the_sharded_model_on_meta(ranks, world):
    after = ranks[world]["fault"]["after_fault"]
    assert after and all(is_meta and kind == "DTensor" for _, is_meta, kind in after), after


def test_placements_that_were_used(ranks):
    """The scenarios cover the placements sharded init must support: FSDP2 Shard(0) (uneven), TP Colwise/Rowwise,
    2-D TP + FSDP2."""
    types = {v for world in WORLD_SIZES for scenario in ("fsdp", "tp", "tp_fsdp")
             for k, v in ranks[world][scenario].items() if k.startswith("type|")}
    text = " ".join(sorted(types))
    assert "Shard(dim=0)" in text and "Shard(dim=1)" in text and "_StridedShard" in text
    assert "Replicate()" in text


@pytest.mark.slow
@pytest.mark.parametrize("world", WORLD_SIZES)
def test_the_documented_example_runs_under_torchrun_and_prints_the_documented_fingerprints(world):
    """``torchrun --nproc-per-node N docs/sharded_example.py`` at 1, 2 and 4 ranks (tensor parallel's forward runs
    only even shards) prints the digest docs/sharded.md shows, three times."""
    example = Path(__file__).resolve().parents[2] / "docs" / "sharded_example.py"
    documented = (example.parent / "sharded.md").read_text()
    source = str(Path(ti.__file__).resolve().parents[1])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([source, os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world),
           "--master-port", str(worker.free_port()), str(example)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)  # torchrun and the ranks it started
        proc.wait()
    assert proc.returncode == 0, output[-3000:]
    lines = [line for line in output.splitlines() if line.startswith(f"world size {world},")]
    assert len(lines) == 3, output[-2000:]
    digests = {line.split(": ")[1] for line in lines}
    assert len(digests) == 1 and digests <= set(documented.split()), (lines, output[-2000:])
