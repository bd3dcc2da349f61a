"""Factories under deferred(): data constructors on a parameter's device, *_like of empty parameters, real buffers
computed from tensors made on a parameter's (meta) device."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import torchinit as ti


def _materialized(model: nn.Module, **kwargs) -> list[str]:
    """Materialize ``model`` with strict=True; the messages of the warnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ti.materialize_(model, strict=True, **kwargs)
    return [str(w.message) for w in caught]


def _how(how: str) -> dict:
    """materialize_'s arguments for each source of randomness: the global RNG, a seed, a generator."""
    if how == "seed":
        return {"seed": 0}
    return {"generator": torch.Generator().manual_seed(0)} if how == "generator" else {}


class DataOnDevice(nn.Module):
    """Parameters set from Python data built on their own (meta, under deferred()) device."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.empty(4))
        self.b = nn.Parameter(torch.empty(3))
        self.c = nn.Parameter(torch.empty(2, 2))
        self.d = nn.Parameter(torch.empty(3))
        self.e = nn.Parameter(torch.empty(2))
        data = [0.5, 1.5]
        with torch.no_grad():
            self.a.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4], device=self.a.device))
            self.b.copy_(torch.as_tensor(np.arange(3.0), device=self.b.device) * 2)
            self.c.copy_(torch.asarray([[1.0, 2.0], [3.0, 4.0]], device=self.c.device))
            self.d.copy_(self.d.new_tensor([7.0, 8.0, 9.0]))
            self.e.copy_(torch.as_tensor(data, device=self.e.device, dtype=torch.float64))
        data[0] = 100.0  # changing the data afterwards changes nothing already built


EXPECTED = {
    "a": [0.1, 0.2, 0.3, 0.4],
    "b": [0.0, 2.0, 4.0],
    "c": [[1.0, 2.0], [3.0, 4.0]],
    "d": [7.0, 8.0, 9.0],
    "e": [0.5, 1.5],
}


@pytest.mark.parametrize("how", ["global", "seed", "generator"])
def test_python_data_on_a_deferred_device_is_recorded(how: str) -> None:
    with ti.deferred():
        model = DataOnDevice()
    assert model.a.is_meta
    kwargs = _how(how)
    assert _materialized(model, **kwargs) == []
    for name, value in EXPECTED.items():
        assert torch.equal(getattr(model, name).detach(), torch.tensor(value)), name


def test_python_data_under_a_meta_device_context_inside_deferred() -> None:
    with ti.deferred():
        model = nn.Linear(2, 2)
        with torch.device("meta"):
            table = torch.tensor([3.0, 4.0])
        with torch.no_grad():
            model.bias.copy_(table)
    assert _materialized(model) == []
    assert torch.equal(model.bias.detach(), torch.tensor([3.0, 4.0]))


class LikeOfEmpty(nn.Module):
    """Parameters set from *_like / new_* of parameters construction left empty (RWKV's time_first)."""

    def __init__(self) -> None:
        super().__init__()
        self.ones = nn.Parameter(torch.empty(4))
        self.zeros = nn.Parameter(torch.empty(2, 3))
        self.full = nn.Parameter(torch.empty(3))
        self.newfull = nn.Parameter(torch.empty(3))
        self.rand = nn.Parameter(torch.empty(1000))
        self.randn = nn.Parameter(torch.empty(1000))
        zigzag = torch.tensor([0.5, -0.5, 0.0, 0.5], device=self.ones.device)
        with torch.no_grad():
            self.ones.copy_(torch.ones_like(self.ones * math.log(0.3) + zigzag))
            self.zeros.copy_(torch.zeros_like(self.zeros.t()).t())
            self.full.copy_(torch.full_like(self.full, 2.5))
            self.newfull.copy_(self.newfull.new_full((3,), -1.0))
            self.rand.copy_(torch.rand_like(self.rand))
            self.randn.copy_(torch.randn_like(self.randn))


@pytest.mark.parametrize("how", ["global", "seed", "generator"])
def test_like_factories_of_empty_parameters_are_defined(how: str) -> None:
    with ti.deferred():
        model = LikeOfEmpty()
    kwargs = _how(how)
    assert _materialized(model, **kwargs) == []  # strict passes: nothing is reported undefined
    assert torch.equal(model.ones.detach(), torch.ones(4))
    assert torch.equal(model.zeros.detach(), torch.zeros(2, 3))
    assert torch.equal(model.full.detach(), torch.full((3,), 2.5))
    assert torch.equal(model.newfull.detach(), torch.full((3,), -1.0))
    rand, randn = model.rand.detach(), model.randn.detach()
    assert rand.min() >= 0 and rand.max() < 1 and abs(rand.mean() - 0.5) < 6 * (1 / 12 / 1000) ** 0.5
    assert abs(randn.mean()) < 6 / 1000**0.5 and abs(randn.std() - 1) < 6 * (0.5 / 1000) ** 0.5


def test_an_empty_parameter_read_for_its_values_is_still_reported() -> None:
    class Reads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.p = nn.Parameter(torch.empty(3))
            self.q = nn.Parameter(torch.empty(3))
            with torch.no_grad():
                self.q.copy_(self.p * 2)  # reads p's (undefined) values

    with ti.deferred():
        model = Reads()
    with pytest.raises(ValueError, match="strict"):
        ti.materialize_(model, strict=True)


class Table(nn.Module):
    """A real buffer filled from a table built on a parameter's device (timm SwinV2's _init_buffers)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.register_buffer("table", torch.empty(2, 3))
        self.register_buffer("index", torch.empty(3, dtype=torch.long))
        grid = torch.arange(6, device=self.proj.weight.device, dtype=torch.float32).reshape(2, 3)
        grid[:, 1] /= 2
        self.table.copy_(torch.sign(grid - 1) * torch.log2(grid.abs() + 1))
        self.index.copy_(torch.arange(3, device=self.proj.weight.device) * 2)


def test_a_real_buffer_computed_on_the_meta_device_gets_its_values() -> None:
    eager = Table()
    with ti.deferred():
        model = Table()
    assert not model.table.is_meta and model.proj.weight.is_meta
    assert torch.equal(model.table, eager.table) and torch.equal(model.index, eager.index)
    assert _materialized(model, seed=0) == []
    assert torch.equal(model.table, eager.table)


def test_a_real_buffer_computed_from_a_random_parameter_still_fails_with_a_note() -> None:
    class FromWeight(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(2, 2)
            self.register_buffer("copy", torch.empty(2, 2))
            self.copy.copy_(self.proj.weight.detach())

    with ti.deferred(), pytest.raises(NotImplementedError, match=r"Cannot copy out of meta.*build this module outside"):
        FromWeight()
    assert torch._C._len_torch_function_stack() == 0


def test_legacy_constructors_under_deferred() -> None:
    class Legacy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.data = nn.Parameter(torch.FloatTensor([1.0, 2.0]))  # the legacy typed constructors refuse meta,
            self.sized = nn.Parameter(torch.FloatTensor(3))  # so they make real tensors, moved to meta on registration
            self.new = nn.Parameter(self.data.new(2))  # a meta parameter's legacy new(sizes): an empty factory
            self.new_data = nn.Parameter(self.data.new([5.0, 6.0]))
            with torch.no_grad():
                self.sized.fill_(0.5)

    with ti.deferred():
        model = Legacy()
    assert all(p.is_meta for p in model.parameters())
    with pytest.raises(ValueError, match=r"strict.*\bnew\b"):  # new(2) is uninitialized memory: unknown
        ti.materialize_(model, strict=True)
    ti.materialize_(model, policy=ti.Policy([("new", ti.Zeros())]), strict=True)
    assert torch.equal(model.data.detach(), torch.tensor([1.0, 2.0]))
    assert torch.equal(model.sized.detach(), torch.full((3,), 0.5))
    assert torch.equal(model.new_data.detach(), torch.tensor([5.0, 6.0]))
