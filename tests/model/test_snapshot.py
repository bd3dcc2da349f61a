"""Snapshot puts a model back: the all-or-nothing snapshot of a writing call, and Snapshot.everything of a look.

Each test changes what the snapshot keeps, in place and by reassignment, then fails (an exception or a
KeyboardInterrupt) or succeeds, and compares with what was there before.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch
from torch import nn

from conftest import gen
from torchinit.model.snapshot import Snapshot

FAILURES = [RuntimeError("the call failed"), KeyboardInterrupt()]


class Counting(nn.Module):
    """A small model with a buffer, a plain attribute, a container attribute and a generator of its own."""

    count: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.norm = nn.BatchNorm1d(4)
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        self.steps = 0
        self.history: list[int] = []
        self.gen = gen(7)


def state(model: nn.Module) -> dict[str, Any]:
    """What the tests compare: registrations (by identity), values, flags, attributes."""
    found: dict[str, Any] = {}
    for prefix, module in model.named_modules():
        found[prefix] = (dict(module.__dict__), dict(module._parameters), dict(module._buffers), module.training)
        for name, t in (*module._parameters.items(), *module._buffers.items()):
            found[f"{prefix}.{name}"] = (t, t.detach().clone(), t.requires_grad, dict(t.__dict__),
                                         t.untyped_storage().data_ptr())  # fmt: skip
        found[f"{prefix}.containers"] = {k: list(v) for k, v in module.__dict__.items() if isinstance(v, list)}
    return found


def assert_same(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert before.keys() == after.keys()
    for key, was in before.items():
        now = after[key]
        if key.endswith(".containers"):
            assert now == was, key
        elif len(was) == 4:  # a module
            for a, b in zip(was[:3], now[:3]):
                assert a.keys() == b.keys() and all(a[k] is b[k] for k in a), key
            assert was[3] == now[3], key
        else:  # a tensor
            assert now[0] is was[0] and torch.equal(now[1], was[1]), key
            assert now[2] == was[2] and now[4] == was[4], key
            assert now[3].keys() == was[3].keys() and all(now[3][k] is v for k, v in was[3].items()), key


def change_registrations(model: Counting, generator: torch.Generator) -> None:
    """What a writing call may do: write the weights, re-register, flip flags, draw."""
    with torch.no_grad():
        model.lin.weight.fill_(7.0)
        model.lin.bias.set_(torch.zeros(4).untyped_storage())  # another storage
    model.lin.weight.requires_grad_(False)
    model.lin.weight.note = "written"  # type: ignore[attr-defined]
    model.norm.weight = nn.Parameter(torch.ones(4))
    model.register_buffer("extra", torch.ones(2))
    model.steps = 5
    torch.rand(3, generator=generator)


def change_everything(model: Counting, generator: torch.Generator) -> None:
    """What a forward pass may do: update statistics, reassign buffers, append, draw from every RNG, write grads."""
    assert model.norm.running_mean is not None
    with torch.no_grad():
        model.norm.running_mean.add_(1.0)
        model.lin.weight.mul_(2.0)
    model.count = model.count + 1
    model.steps += 1
    model.history.append(1)
    model.cache = torch.ones(1)
    model.eval()
    model.lin.weight.grad = torch.ones(4, 4)
    torch.rand(3), random.random(), torch.rand(3, generator=model.gen), torch.rand(3, generator=generator)


def rng_states(model: Counting, generator: torch.Generator) -> tuple[Any, ...]:
    """The private generators a snapshot keeps: the model's and the caller's."""
    return model.gen.get_state(), generator.get_state()


def global_rng_states() -> tuple[Any, ...]:
    return torch.get_rng_state(), random.getstate()


def assert_same_rng(before: tuple[Any, ...], after: tuple[Any, ...]) -> None:
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


@pytest.mark.parametrize("failure", FAILURES, ids=lambda e: type(e).__name__)
def test_on_failure_restores_registrations_writes_and_the_generator(failure):
    model, generator = Counting(), gen(3)
    before, generator_state = state(model), generator.get_state()
    snapshot = Snapshot(model, writes=[model.lin.weight, model.lin.bias], generator=generator)
    with pytest.raises(type(failure)), snapshot.on_failure():
        change_registrations(model, generator)
        raise failure
    assert_same(before, state(model))
    assert torch.equal(generator.get_state(), generator_state)


def test_on_failure_changes_nothing_on_success():
    model = Counting()
    snapshot = Snapshot(model, writes=[model.lin.weight])
    with snapshot.on_failure(), torch.no_grad():
        model.lin.weight.fill_(1.0)
    assert bool((model.lin.weight == 1.0).all())


def test_restore_without_a_failure():
    model, generator = Counting(), gen(3)
    before, generator_state = state(model), generator.get_state()
    snapshot = Snapshot(model, writes=[model.lin.weight, model.lin.bias], generator=generator)
    change_registrations(model, generator)
    snapshot.restore()
    assert_same(before, state(model))
    assert torch.equal(generator.get_state(), generator_state)


@pytest.mark.parametrize("failure", FAILURES, ids=lambda e: type(e).__name__)
def test_everything_restored_after_a_failure(failure):
    model, generator = Counting().train(), gen(3)
    grad = torch.full((4, 4), 0.5)
    model.lin.weight.grad = grad
    before, rng, global_rng = state(model), rng_states(model, generator), global_rng_states()
    with pytest.raises(type(failure)), Snapshot.everything(model, keep=[model.lin.weight],
                                                           generators=[generator]) as snapshot:  # fmt: skip
        assert model.lin.weight.grad is None  # set aside
        change_everything(model, generator)
        snapshot.mark_rng()  # a failure rewinds the marked draws too
        raise failure
    assert_same(before, state(model))  # the kept weight too: all or nothing
    assert_same_rng(rng, rng_states(model, generator))
    # the global generators are never set back (other threads may have drawn meanwhile): the block's draws stand
    now = global_rng_states()
    assert not torch.equal(now[0], global_rng[0]) and now[1] != global_rng[1]
    assert model.lin.weight.grad is grad and model.training and not hasattr(model, "cache")


def test_everything_on_success_keeps_only_keep_and_the_marked_draws():
    model, generator = Counting().train(), gen(3)
    before = state(model)
    with Snapshot.everything(model, keep=[model.lin.weight], generators=[generator]) as snapshot:
        torch.rand(2, generator=generator)  # an intended draw
        snapshot.mark_rng()
        marked = generator.get_state()
        change_everything(model, generator)
        kept = model.lin.weight.detach().clone()
    assert torch.equal(model.lin.weight, kept) and not torch.equal(model.lin.weight, before["lin.weight"][1])
    assert torch.equal(generator.get_state(), marked)
    assert model.lin.weight.untyped_storage().data_ptr() == before["lin.weight"][4]
    del before["lin.weight"]
    after = state(model)
    del after["lin.weight"]
    assert_same(before, after)


def test_everything_leaves_untouched_tensors_unwritten():
    model = Counting()
    versions = {name: p._version for name, p in model.named_parameters()}
    with Snapshot.everything(model), torch.no_grad():
        model.lin.bias.add_(1.0)
    assert all(p._version == versions[name] for name, p in model.named_parameters() if name != "lin.bias")


def test_everything_refuses_what_it_could_not_restore():
    with pytest.raises(TypeError, match=r"model must be an nn\.Module; got object"):
        Snapshot.everything(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="model is a TorchScript module"):
        Snapshot.everything(torch.jit.script(nn.Sequential(nn.Linear(2, 2))))
    lazy = nn.Sequential(nn.Linear(2, 2), nn.LazyLinear(3))
    with pytest.raises(ValueError, match=r"model has uninitialized \(lazy\) tensors \(1\.weight, 1\.bias\)"):
        Snapshot.everything(lazy)


def test_a_failing_restore_is_noted_on_the_exception():
    model = Counting()
    snapshot = Snapshot.everything(model)

    def broken(state: Any) -> None:
        raise RuntimeError("cannot set")

    snapshot._random.pairs[0] = (snapshot._random.pairs[0][0], broken)  # the global RNG's setter
    with pytest.raises(ValueError) as raised, snapshot:
        raise ValueError("the block failed")
    assert "restoring the model failed too" in "".join(getattr(raised.value, "__notes__", []))
    with pytest.raises(RuntimeError, match="cannot set"):
        snapshot.restore()  # every part runs, then the first failure is raised
