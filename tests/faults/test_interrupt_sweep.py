"""Every public writer, interrupted at every point (deterministically, see ``_sweep``): unchanged or complete.

Small tensors run the single-threaded paths and every scheme's own steps (zeroing, then a
pattern; normals, then a zero pattern); large ones the threaded chunked fills, where the
interrupt lands between chunks and in the wait for the helpers. Each random scheme runs
with ``seed=``, with ``generator=`` and on the global RNG.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from _sweep import same_bits, sweep, tensor_state
from torch import nn

import torchinit as ti
from torchinit.rng import keyed
from torchinit.schemes.contract import SCHEMES

#: A positional argument some schemes need, and a shape their interesting path takes.
ARGS = {"constant_": (0.25,), "sparse_": (0.5,)}
SHAPES = {"dirac_": (8, 6, 3, 3), "delta_orthogonal_": (8, 6, 3, 3), "hadamard_": (40, 24)}


def _modes(name):
    parameters = inspect.signature(SCHEMES[name]).parameters
    return ["seed", "generator", "global"] if "generator" in parameters else ["deterministic"]


def _call(name, mode):
    args = ARGS.get(name, ())
    if mode == "seed":
        return lambda t: SCHEMES[name](t, *args, seed=3, name="w")
    if mode == "generator":
        return lambda t: SCHEMES[name](t, *args, generator=torch.Generator().manual_seed(3))
    return lambda t: SCHEMES[name](t, *args)


def _maker(shape, mode, dtype=torch.float32, transpose=False):
    def make():
        if mode == "global":
            torch.manual_seed(5)  # the same global state before every run: the complete result is one
        t = torch.full(shape, 7.0, dtype=dtype)
        return t.t() if transpose else t
    return make


CASES = [(name, mode) for name in SCHEMES for mode in _modes(name)]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "mode"), CASES, ids=[f"{n}-{m}" for n, m in CASES])
def test_small_tensors_are_unchanged_or_complete_at_every_interrupt(name, mode):
    with torch.random.fork_rng(devices=[]):
        counts = sweep(_maker(SHAPES.get(name, (48, 40)), mode), _call(name, mode), tensor_state, same_bits)
    assert counts["interrupted"] >= 2 and counts["untouched"] >= 1  # the sweep reached inside the call


PATTERNS = ["eye_", "dirac_", "identity_", "delta_orthogonal_", "hadamard_", "glass_", "orthogonal_", "sparse_"]


class _Traced(torch.Tensor):
    """A tensor subclass: torch runs its ``__torch_function__`` (Python) around every operation on it, so an
    interrupt can land between any two of them, between the zeroing and the pattern too."""


@pytest.mark.slow
@pytest.mark.parametrize("name", PATTERNS)
def test_patterns_are_unchanged_or_complete_with_python_around_every_operation(name):
    mode = _modes(name)[0]
    plain = _maker(SHAPES.get(name, (48, 40)), mode)
    with torch.random.fork_rng(devices=[]):
        counts = sweep(lambda: plain().as_subclass(_Traced), _call(name, mode), tensor_state, same_bits)
    assert counts["interrupted"] >= 2


LARGE_CASES = [(name, mode) for name in ("normal_", "uniform_", "kaiming_normal_", "xavier_uniform_",
                                          "trunc_normal_", "lecun_normal_", "variance_scaling_")
               for mode in ("seed", "generator", "global")]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "mode"), LARGE_CASES, ids=[f"{n}-{m}" for n, m in LARGE_CASES])
def test_large_threaded_fills_are_unchanged_or_complete_at_every_interrupt(name, mode):
    side = 1 << 10  # 2**20 elements: above the threaded fills' thresholds, four chunks
    assert side * side >= keyed.PARALLEL_THRESHOLD
    with torch.random.fork_rng(devices=[]):
        counts = sweep(_maker((side, side), mode), _call(name, mode), tensor_state, same_bits, settle=0.02,
                       budget=12)
    assert counts["interrupted"] >= 2


@pytest.mark.slow
@pytest.mark.parametrize(("dtype", "transpose"), [(torch.bfloat16, False), (torch.float64, False),
                                                  (torch.complex64, False), (torch.float32, True)],
                         ids=["bf16", "f64", "complex64", "transposed"])
def test_large_seeded_fills_of_other_dtypes_and_layouts_are_unchanged_or_complete(dtype, transpose):
    side = 1 << 10
    make = _maker((side, side), "seed", dtype, transpose)
    counts = sweep(make, lambda t: ti.normal_(t, std=0.02, seed=1, name="w"), tensor_state, same_bits, settle=0.02,
                   budget=12)
    assert counts["interrupted"] >= 2


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(24, 40)
        self.norm = nn.LayerNorm(40)
        self.shortcut = nn.Linear(24, 40, bias=False)
        self.gamma = nn.Parameter(0.1 * torch.ones(40))


def _model_state(model):
    """Each tensor's values, or its shape and dtype where it is still on meta (not yet materialized)."""
    return {k: (v.shape, v.dtype) if v.is_meta else v.detach().clone() for k, v in model.state_dict().items()}


def _same_state(a, b):
    def same(x, y):
        return x == y if isinstance(x, tuple) or isinstance(y, tuple) else same_bits(x, y)
    return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)


def _deferred_block():
    with ti.deferred():
        return _Block()


def _eager_block():
    torch.manual_seed(0)
    return _Block()


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(24, 32), nn.Tanh(), nn.Dropout(0.1), nn.Linear(32, 16))


def _batch():
    return torch.randn(64, 24, generator=torch.Generator().manual_seed(1))


MODEL_CALLS = {
    "materialize_ seed": (_deferred_block, lambda m: ti.materialize_(m, seed=0)),
    "materialize_ global": (lambda: (torch.manual_seed(1), _deferred_block())[1], lambda m: ti.materialize_(m)),
    "Policy.apply_ seed": (_eager_block, lambda m: ti.Policy([(nn.Linear, {"weight": ti.Orthogonal(),
                                                                          "bias": ti.Zeros()})]).apply_(m, seed=0)),
    "glass_ module": (_eager_block, lambda m: ti.glass_(m.shortcut, seed=0)),
    "lsuv_": (_mlp, lambda m: ti.lsuv_(m, _batch(), generator=torch.Generator().manual_seed(0))),
    "probe": (_mlp, lambda m: ti.probe(m, _batch())),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(MODEL_CALLS))
def test_model_writers_are_all_or_nothing_at_every_interrupt(case):
    make, call = MODEL_CALLS[case]
    with torch.random.fork_rng(devices=[]):
        counts = sweep(make, call, _model_state, _same_state)
    assert counts["interrupted"] >= 2
