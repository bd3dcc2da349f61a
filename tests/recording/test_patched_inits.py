"""The table of torch.nn.init functions recorded whole (torchinit.recording.inits) agrees with torch and torchinit."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import torchinit as ti
from torchinit.recording import aten
from torchinit.recording.inits import (
    PATCHED_ATTRIBUTES,
    PATCHED_INITS,
    RECORDED_NAMES,
    keyed_twin_name,
    recorded_name,
)

META_ARGS = {"sparse_": {"sparsity": 0.5}}
META_SHAPES = {"dirac_": (4, 4, 3)}  # a convolution's weight; the others take a matrix


class _AtenLog(TorchDispatchMode):
    """Names every ATen operation run under it."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("init", PATCHED_INITS, ids=lambda init: init.recorded_as)
def test_each_init_returns_at_once_on_meta(init):
    """What makes the table: on a meta tensor the function reaches no ATen operation, so it is recorded whole."""
    tensor = torch.empty(META_SHAPES.get(init.recorded_as, (4, 4)), device="meta")
    with _AtenLog() as seen:
        getattr(nn.init, init.recorded_as)(tensor, **META_ARGS.get(init.recorded_as, {}))
    if seen.ops and tuple(int(part) for part in torch.__version__.split(".")[:2]) < (2, 13):
        pytest.skip(f"torch {torch.__version__}'s nn.init.{init.recorded_as} runs its ATen operations on a meta tensor "
                    "(torch 2.2's do): recorded whole all the same, that run only validates the call")
    assert seen.ops == []


@pytest.mark.parametrize("init", PATCHED_INITS, ids=lambda init: init.recorded_as)
def test_names_resolve(init):
    patched = getattr(nn.init, init.patched)
    public = getattr(nn.init, init.recorded_as)
    assert patched.__module__ == public.__module__ == "torch.nn.init"
    assert recorded_name(patched) == recorded_name(public) == init.recorded_as
    assert keyed_twin_name(patched) == keyed_twin_name(public) == init.keyed_twin
    assert init.patches_helper == (patched is not public)


@pytest.mark.parametrize("init", [i for i in PATCHED_INITS if i.keyed_twin], ids=lambda init: init.recorded_as)
def test_keyed_twin_is_torchinits_seeded_function(init):
    twin = getattr(ti, init.keyed_twin)
    assert init.keyed_twin in ti.__all__ and "seed" in inspect.signature(twin).parameters


def test_derived_names():
    assert PATCHED_ATTRIBUTES == ("_no_grad_trunc_normal_", "orthogonal_", "sparse_", "dirac_")
    assert {"trunc_normal_", "orthogonal_", "sparse_", "dirac_"} == RECORDED_NAMES
    assert RECORDED_NAMES <= aten.OVERWRITES


def test_other_functions_have_no_twin():
    assert keyed_twin_name(nn.init.xavier_uniform_) is None
    assert keyed_twin_name(ti.trunc_normal_) is None  # torchinit's own functions are keyed already
    assert recorded_name(ti.orthogonal_) == "orthogonal_"


@pytest.mark.parametrize("fill", ["eye_", "zeros_", "ones_"])
def test_an_out_variant_overwrites_what_construction_left_undefined(fill):
    """``nn.init.eye_`` writes through ``torch.eye(..., out=w)``: the empty memory before it is not named as left
    uninitialized, and strict materializing passes with eager's values."""

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.empty(3, 4))
            getattr(nn.init, fill)(self.w)

    with ti.deferred():
        model = Model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ti.materialize_(model, strict=True)
    assert torch.equal(model.w, Model().w)
