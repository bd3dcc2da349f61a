"""Copies of a model built under deferred(): the recording travels with copy.deepcopy; a pickle (torch.save) does not
carry it, and materialize_ of the unpickled copy says so instead of zeroing a constructor's value in silence."""

from __future__ import annotations

import copy
import gc
import io
import pickle
import warnings

import pytest
import torch
from torch import nn

import torchinit as ti


class LayerScale(nn.Module):
    """timm's LayerScale: the constructor writes the value (``init_values * ones``), no init method recomputes it."""

    def __init__(self, dim: int, init_values: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 4)
        self.ls = LayerScale(4, init_values=0.25)


def build() -> nn.Module:
    with ti.deferred():
        return nn.Sequential(Block(), nn.Linear(4, 3))


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def torch_save_load(model: nn.Module) -> nn.Module:
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def materialized(model: nn.Module, **kwargs) -> dict[str, torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a copy whose recording travelled materializes without a warning
        ti.materialize_(model, **kwargs)
    return weights(model)


@pytest.mark.parametrize("randomness", [{"seed": 3}, {"generator": 5}])
def test_deepcopy_carries_the_recording(randomness):
    def fresh() -> dict:
        """The same randomness anew for each materialization: a new generator, not a deep copy of one (a Generator
        cannot be deep-copied in torch 2.2)."""
        if "generator" in randomness:
            return {"generator": torch.Generator().manual_seed(randomness["generator"])}
        return dict(randomness)

    original = build()
    twin = copy.deepcopy(original)
    assert all(p.is_meta for p in twin.parameters())
    want = materialized(copy.deepcopy(original), **fresh())
    assert bool((want["0.ls.gamma"] == 0.25).all())  # the constructor's value, not zeros
    assert not torch.equal(want["0.fc.weight"], torch.zeros(4, 6))
    assert_same(materialized(twin, **fresh()), want)
    assert_same(materialized(original, **fresh()), want)


def test_a_copy_materializes_after_its_original_is_gone():
    original = build()
    first, second = copy.deepcopy(original), copy.deepcopy(copy.deepcopy(original))  # a copy of a copy too
    want = materialized(original, seed=11)
    del original
    assert_same(materialized(first, seed=11), want)
    assert_same(materialized(second, seed=11), want)


def test_copies_in_one_model_are_copies_not_ties():
    """Two deep copies of one deferred block, put in one model outside deferred(), get the same values (as eager
    deep copies have) in memory of their own."""
    block = build()[0]
    model = nn.Sequential(copy.deepcopy(block), copy.deepcopy(block))
    values = materialized(model, seed=2)
    assert model[0].fc.weight.data_ptr() != model[1].fc.weight.data_ptr()
    for key in ("fc.weight", "fc.bias", "ls.gamma"):
        assert torch.equal(values[f"0.{key}"], values[f"1.{key}"]), key
    assert bool((values["0.ls.gamma"] == 0.25).all())


def test_a_submodule_copy_carries_the_recording():
    """A copy of a block materializes as the block itself does (with seed=, values are keyed by qualified names, so
    the block alone, not as part of the model)."""
    original = build()
    part = copy.deepcopy(original[0])
    want = materialized(original[0], seed=4)
    assert_same(materialized(part, seed=4), want)


def test_deepcopies_made_during_construction_keep_the_recording():
    """TransformerEncoder deep-copies its layer during construction: each layer is a copy of that template, as in
    eager construction, even once the template (referenced by nothing) is gone. Before the copies carried the
    recording, it was lost with the template, and every layer was re-enacted with draws of its own."""
    with ti.deferred():
        model = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16), 2, enable_nested_tensor=False)
    gc.collect()
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = ti.materialize_(model)
    assert {row.rule for row in report} == {"construction"}
    for key, value in model.layers[0].state_dict().items():
        assert torch.equal(value, model.layers[1].state_dict()[key]), key
    assert not torch.equal(model.layers[0].linear1.weight, torch.zeros(16, 8))


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_a_pickled_copy_is_refused_with_its_cause(how):
    original = build()
    loaded = pickle.loads(pickle.dumps(original)) if how == "pickle" else torch_save_load(original)
    assert all(p.is_meta for p in loaded.parameters())
    with pytest.raises(ValueError, match=r"strict: the model is a pickled copy .* of a model built under deferred\(\)"
                                         r".*did not travel.*0\.fc\.weight.*0\.ls\.gamma"):  # fmt: skip
        ti.materialize_(loaded, seed=0, strict=True)
    assert all(p.is_meta for p in loaded.parameters())  # the refusal wrote nothing
    with pytest.warns(UserWarning, match=r"pickled copy .* did not travel .*0\.ls\.gamma.* LayerScale gamma"), \
            pytest.warns(UserWarning, match=r"0\.ls\.gamma, named above, are set by no module's init method"):
        ti.materialize_(loaded, seed=0)
    assert not any(p.is_meta for p in loaded.parameters())
    # and the original, whose recording stayed here, is as it was
    assert bool((materialized(original, seed=0)["0.ls.gamma"] == 0.25).all())


def test_the_refusal_survives_further_copies_and_only_names_lost_tensors():
    loaded = torch_save_load(build())
    again = copy.deepcopy(torch_save_load(loaded))
    with pytest.raises(ValueError, match="did not travel"):
        ti.materialize_(again, strict=True)
    # a model pickled after materialization has nothing to lose: the marker names no tensor
    done = build()
    ti.materialize_(done, seed=0)
    reloaded = torch_save_load(done).to("meta")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # re-enacting a plain meta model warns about the gamma, not about pickling
        ti.materialize_(reloaded, seed=0)
    assert caught and not any("did not travel" in str(w.message) for w in caught)


def test_a_materialized_model_pickles_without_torchinit():
    """Once materialized, a model built under deferred() pickles as an eager one does: the pickle needs nothing of
    torchinit, so it loads where torchinit is not installed."""

    class WithoutTorchinit(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            if module.split(".")[0] == "torchinit":
                raise ModuleNotFoundError(f"{module}.{name}")
            return super().find_class(module, name)

    model = build()
    ti.materialize_(model, seed=0)
    loaded = WithoutTorchinit(io.BytesIO(pickle.dumps(model))).load()
    assert_same(weights(loaded), weights(model))
    with pytest.raises(ModuleNotFoundError, match="torchinit"):  # a meta one carries the note that its recording stayed
        WithoutTorchinit(io.BytesIO(pickle.dumps(build()))).load()
