"""Wrappers do not change the weights, and sharded init draws as one process does.

A stream is keyed on a parameter's canonical name (``torchinit.rng.seeds.canonical_name``): the
segments that ``torch.compile`` (``_orig_mod``), activation checkpointing
(``_checkpoint_wrapped_module``) and DDP / DataParallel (a leading ``module``) insert are
removed, so a wrapped model gets, bit for bit, the weights of the unwrapped one. The
multi-process cases run ``_sharded_worker.py`` on gloo ranks: FSDP2 after ``checkpoint_wrapper``
(torchtitan's order), DDP, the global RNG drawn in construction order, and the own init
written on the local shards.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import _sharded_worker as worker
import pytest
import torch
from torch import nn

import torchinit as ti
from torchinit.rng.seeds import WRAPPER_SEGMENTS, canonical_name

SEED = worker.SEED


def _values(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter by its canonical name."""
    return {canonical_name(n, model): p.detach().clone() for n, p in model.named_parameters()}


def _meta_lm() -> nn.Module:
    with torch.device("meta"):
        return worker.TinyLM()


def _checkpointed(model: nn.Module) -> nn.Module:
    return worker.checkpointed(model)


def _compiled(model: nn.Module) -> nn.Module:
    compiled = torch.compile(model)  # an OptimizedModule; nothing is compiled until it is called
    assert isinstance(compiled, nn.Module) and type(compiled).__name__ == "OptimizedModule"
    return compiled


def _compiled_blocks(model: nn.Module) -> nn.Module:
    for i, block in enumerate(model.blocks):
        model.blocks[i] = torch.compile(block)
    return model


WRAPPERS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "checkpoint_wrapper": _checkpointed,
    "torch.compile": _compiled,
    "torch.compile per block": _compiled_blocks,
    "DataParallel": nn.DataParallel,  # no GPU: it only wraps, with DDP's module. prefix
    "compile of checkpointed": lambda m: _compiled(_checkpointed(m)),
}


def test_canonical_name_removes_only_wrapper_segments():
    assert {"_orig_mod", "_checkpoint_wrapped_module"} == WRAPPER_SEGMENTS
    assert canonical_name("layers.0._checkpoint_wrapped_module._orig_mod.attn.wq.weight") == "layers.0.attn.wq.weight"
    assert canonical_name("_orig_mod.module.weight") == "module.weight"  # a child called module, in a plain model
    plain = nn.Module()
    plain.module = nn.Linear(2, 2)
    assert canonical_name("module.weight", plain) == "module.weight"
    assert canonical_name("module.module.weight", nn.DataParallel(plain)) == "module.weight"  # one leading segment
    assert canonical_name("embed.weight") == "embed.weight"


def test_fully_shard_and_tensor_parallel_add_no_segment():
    """FSDP2 and TP change the parameters' class, never their names (here: FSDP2's class swap, on one rank)."""
    if worker.PROBLEM is not None:
        pytest.skip(worker.PROBLEM)
    names = [n for n, _ in _meta_lm().named_parameters()]
    assert all(canonical_name(n) == n for n in names)  # the reference names are canonical already


@pytest.mark.slow
@pytest.mark.parametrize("wrap", list(WRAPPERS))
@pytest.mark.parametrize("how", ["policy", "own init", "torch_default", "generator"])
def test_a_wrapped_meta_model_gets_the_unwrapped_weights(wrap, how):
    def run(model: nn.Module) -> dict[str, torch.Tensor]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TinyLM has no init method (materialize_ says so)
            if how == "generator":
                ti.materialize_(model, ti.presets.torch_default(), generator=torch.Generator().manual_seed(3))
            else:
                policy = {"policy": worker.policy(), "own init": None, "torch_default": ti.presets.torch_default()}
                ti.materialize_(model, policy[how], seed=SEED)
        return _values(model)

    want = run(_meta_lm())
    wrapped = WRAPPERS[wrap](_meta_lm())
    assert [n for n, _ in wrapped.named_parameters()] != list(want) or wrap == "checkpoint_wrapper"
    got = run(wrapped)
    assert got.keys() == want.keys()
    for name, value in want.items():
        assert torch.equal(got[name], value), name


@pytest.mark.slow
@pytest.mark.parametrize("wrap", ["checkpoint_wrapper", "torch.compile", "compile of checkpointed"])
def test_policy_apply_on_a_wrapped_model_gives_the_unwrapped_weights(wrap):
    def run(model: nn.Module) -> dict[str, torch.Tensor]:
        ti.presets.torch_default().apply_(model, seed=SEED)
        worker.policy().apply_(model, seed=SEED)
        return _values(model)

    torch.manual_seed(0)
    want = run(worker.TinyLM())
    torch.manual_seed(1)  # other construction values: none may survive
    got = run(WRAPPERS[wrap](worker.TinyLM()))
    for name, value in want.items():
        assert torch.equal(got[name], value), name


# ---- on gloo ranks ---------------------------------------------------------------------------------------------

_RANK_MARKS = (pytest.mark.distributed, pytest.mark.subprocess, pytest.mark.slow,
               pytest.mark.skipif(worker.PROBLEM is not None, reason=worker.PROBLEM or ""))


def on_ranks(test: Callable) -> Callable:
    """The marks of a test that runs ``_sharded_worker.py`` on gloo ranks."""
    for mark in _RANK_MARKS:
        test = mark(test)
    return test


def _launch(tmp_path, world: int, scenarios: tuple[str, ...]) -> dict[str, dict]:
    out = tmp_path / f"world{world}.pt"
    outcome = worker.launch(world, out, scenarios, timeout=120.0)
    failed = [(rank, rc, text[-3000:]) for rank, (rc, text) in enumerate(outcome) if rc != 0]
    assert not failed, f"world size {world}: ranks failed: {failed}"
    return torch.load(out, weights_only=False)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> dict[str, dict]:
    return _launch(tmp_path_factory.mktemp("ranks"), 2, ("checkpointed", "checkpointed_own", "order", "fsdp_own"))


@pytest.fixture(scope="module")
def expected() -> dict[str, dict[str, torch.Tensor]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TinyLM has no init method (materialize_ says so)
        return {"policy": worker.expected_model("policy"), "own": worker.expected_model("own"),
                "order": worker.expected_out_of_order()}


@on_ranks
@pytest.mark.parametrize(("scenario", "want"), [("checkpointed", "policy"), ("checkpointed_own", "own"),
                                                 ("order", "order"), ("fsdp_own", "own")])
def test_two_ranks_give_the_one_process_weights(two_ranks, expected, scenario, want):
    """FSDP2 after checkpoint_wrapper (rules, and the own init); the global RNG without seed= (the model fills b
    before a: drawn in construction order, not parameter order); the own init with seed=."""
    got = two_ranks[scenario]
    assert expected[want]
    for name, value in expected[want].items():
        assert torch.equal(got[name], value), name
        assert got[f"type|{name}"].startswith("DTensor"), name


@on_ranks
def test_the_own_init_of_whole_tensor_fills_is_written_on_the_local_shards(two_ranks):
    """Linear's uniform_, Embedding's normal_, LayerNorm's fill_/zero_: no own-init value is computed whole."""
    assert two_ranks["fsdp_own"]["whole replays"] == 0
    assert two_ranks["checkpointed_own"]["whole replays"] == 0


@on_ranks
def test_ddp_gets_the_unwrapped_weights(tmp_path, expected):
    got = _launch(tmp_path, 1, ("ddp",))["ddp"]
    for name, value in expected["policy"].items():
        assert torch.equal(got[name], value), name

