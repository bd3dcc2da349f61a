"""muP's init policy and optimizer groups: known answers from the table in torchinit.mup.rules."""

from __future__ import annotations

import math

import pytest
import torch
from test_roles import Conv, Uneven, mlp, on_meta
from torch import nn

import torchinit as ti
import torchinit.mup as mup
from conftest import std_tolerance

LR, WD = 1e-3, 0.1


def _by_name(groups: list[dict]) -> dict[str, tuple[str, float, float]]:
    return {n: (g["kind"], g["lr"], g["weight_decay"]) for g in groups for n in g["names"]}


def test_adamw_groups():
    got = _by_name(mup.param_groups(mlp(256), on_meta(mlp, 64), lr=LR, weight_decay=WD))
    # hidden and output: lr / m, weight decay * m; input and vectors as tuned
    assert got == {
        "0.weight": ("input", LR, WD), "0.bias": ("vector", LR, WD),
        "2.weight": ("hidden", LR / 4, WD * 4), "2.bias": ("vector", LR, WD),
        "4.weight": ("output", LR / 4, WD * 4), "4.bias": ("vector", LR, WD),
    }  # fmt: skip


def test_sgd_groups():
    got = _by_name(mup.param_groups(mlp(256), on_meta(mlp, 64), lr=LR, optimizer="sgd", weight_decay=WD))
    # input and vectors: lr * m; hidden: lr * fan_out_mult / fan_in_mult; output: lr / m
    assert got == {
        "0.weight": ("input", LR * 4, WD / 4), "0.bias": ("vector", LR * 4, WD / 4),
        "2.weight": ("hidden", LR, WD), "2.bias": ("vector", LR * 4, WD / 4),
        "4.weight": ("output", LR / 4, WD * 4), "4.bias": ("vector", LR, WD),
    }  # fmt: skip


def test_uneven_hidden_growth_under_sgd():
    got = _by_name(mup.param_groups(Uneven(64, 128), on_meta(Uneven, 16, 64), lr=LR, optimizer="sgd"))
    assert got["up.weight"] == ("hidden", LR * 2 / 4, 0.0)  # fan_out x2, fan_in x4


def test_the_decay_per_step_does_not_change_with_width():
    for optimizer in mup.OPTIMIZERS:
        for g in mup.param_groups(Conv(48), on_meta(Conv, 16), lr=LR, optimizer=optimizer, weight_decay=WD):
            assert math.isclose(g["lr"] * g["weight_decay"], LR * WD)


def test_groups_cover_every_parameter_once_and_build_torch_optimizers():
    model = Conv(32)
    groups = mup.param_groups(model, on_meta(Conv, 16), lr=LR)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    opt = torch.optim.AdamW(groups)
    assert [g["kind"] for g in opt.param_groups] == [g["kind"] for g in groups]
    torch.optim.SGD(mup.param_groups(model, on_meta(Conv, 16), lr=LR, optimizer="sgd"))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"optimizer": "adam8bit"}, ValueError, r"optimizer must be one of 'adamw', 'sgd'; got 'adam8bit'"),
        ({"lr": 0.0}, ValueError, "lr must be a positive finite number"),
        ({"lr": float("nan")}, ValueError, "lr must be a positive finite number"),
        ({"lr": "1e-3"}, TypeError, "lr must be a number; got str"),
        ({"weight_decay": -1.0}, ValueError, "weight_decay must be a non-negative finite number"),
        ({"weight_decay": True}, TypeError, "weight_decay must be a number; got bool"),
    ],
)
def test_bad_group_arguments_are_one_line_errors(kwargs, error, match):
    with pytest.raises(error, match=match) as err:
        mup.param_groups(mlp(16), mlp(8), **{"lr": LR, **kwargs})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"std": 0.0}, "std must be a positive finite number or None"), ({"std": float("inf")}, "std must be"),
     ({"std": True}, "std must be"), ({"readout": "tiny"}, r"readout must be one of 'scaled', 'zero'; got 'tiny'")],
)
def test_bad_policy_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mup.policy(mlp(16), mlp(8), **kwargs)


def _assert_std(t: torch.Tensor, want: float) -> None:
    got = float(t.detach().std())
    assert abs(got - want) <= std_tolerance(t.numel()) * want, (got, want)


def test_policy_with_a_base_std():
    model, base = mlp(1024), on_meta(mlp, 64)  # m = 16
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    report = mup.policy(model, base, std=0.02).apply_(model, seed=0)
    _assert_std(model[0].weight, 0.02)  # input: as at the base width
    _assert_std(model[2].weight, 0.02 / 4)  # hidden: / sqrt(m)
    _assert_std(model[4].weight, 0.02 / 16)  # output: / m
    for name in ("0.bias", "2.bias", "4.bias"):  # biases zero: torch's shrink as 1/sqrt(fan_in)
        assert before[name].any() and not dict(model.named_parameters())[name].any()
    assert "mup_hidden_x16" in str(report) and "mup_biases" in str(report)


def test_policy_without_std_keeps_the_models_own_init_and_zeroes_the_readout():
    model, base = mlp(1024), on_meta(mlp, 64)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    mup.policy(model, base).apply_(model, seed=0)
    assert not model[4].weight.any()
    weights = [n for n, _ in model.named_parameters() if n.endswith("weight") and n != "4.weight"]
    assert all(torch.equal(dict(model.named_parameters())[n], before[n]) for n in weights)
    assert not any(p.any() for n, p in model.named_parameters() if n.endswith("bias"))
    with pytest.raises(ValueError, match="readout='scaled' needs std"):
        mup.policy(model, base, readout="scaled")
    mup.policy(model, base, std=0.02, readout="zero").apply_(model, seed=0)
    assert not model[4].weight.any()
    _assert_std(model[2].weight, 0.02 / 4)


def test_norm_weights_keep_their_init():
    model = nn.Sequential(nn.Linear(4, 64), nn.LayerNorm(64), nn.Linear(64, 2))
    with torch.no_grad():
        model[1].weight.fill_(0.5)
    mup.policy(model, on_meta(lambda: nn.Sequential(nn.Linear(4, 16), nn.LayerNorm(16), nn.Linear(16, 2)))).apply_(
        model, seed=0)
    assert torch.equal(model[1].weight.detach(), torch.full((64,), 0.5)) and not model[1].bias.any()


def test_at_the_base_width_with_delta_the_readout_is_zero_as_at_every_width():
    """Without delta a model at the base width shows no width dim (all input-like: the model's own init); with it,
    the base-width model gets the same rules as the wide ones, so what is tuned there transfers."""
    model = mlp(64)
    mup.policy(model, on_meta(mlp, 64), delta=on_meta(mlp, 128)).apply_(model, seed=0)
    assert not model[4].weight.any()
    groups = mup.param_groups(model, on_meta(mlp, 64), lr=LR, delta=on_meta(mlp, 128))
    assert [g["kind"] for g in groups] == ["input", "vector", "hidden", "output"]  # multipliers 1: one vector group


def test_at_the_base_width_mup_is_the_standard_parametrization():
    model, base = mlp(64), mlp(64)
    with pytest.warns(UserWarning, match="model has base's shapes.*pass delta="):
        mup.policy(model, base, std=0.02).apply_(model, seed=0)
    reference = mlp(64)
    ti.Policy([(nn.Linear, {"weight": ti.Normal(std=0.02)})]).apply_(reference, seed=0)
    assert all(torch.equal(model[i].weight, reference[i].weight) for i in (0, 2, 4))
    groups = mup.param_groups(model, base, lr=LR)
    assert {g["lr"] for g in groups} == {LR}


def test_policy_composes_and_materializes_deferred_and_meta_models_alike():
    base = on_meta(mlp, 32)
    eager = mlp(128)
    policy = mup.policy(eager, base, std=0.02) + ti.Policy([("*.bias", ti.Zeros())])
    policy.apply_(eager, seed=3)
    with ti.deferred():
        deferred = mlp(128)
    ti.materialize_(deferred, policy, seed=3, strict=True)
    meta = on_meta(mlp, 128)
    ti.materialize_(meta, policy, seed=3, strict=True)
    for name, want in eager.state_dict().items():
        assert torch.equal(deferred.state_dict()[name], want), name
        assert torch.equal(meta.state_dict()[name], want), name
    assert not eager[0].bias.any()


def test_tied_parameters_get_one_rule():
    from test_roles import Embedded

    model = Embedded(64)
    report = mup.policy(model, on_meta(Embedded, 16), std=0.02).apply_(model, seed=0)
    assert model.head.weight is model.embed.weight
    _assert_std(model.embed.weight, 0.02)  # input, under both names
    assert "embed.weight" in str(report)


def _train(model: nn.Module, base: nn.Module, *, compiled: bool) -> list[float]:
    (mup.policy(model, base, std=0.02) + ti.Policy([("*.bias", ti.Zeros())])).apply_(model, seed=0)
    opt = torch.optim.AdamW(mup.param_groups(model, base, lr=3e-2))
    run = torch.compile(model, backend="eager") if compiled else model
    x, y = torch.randn(32, 8, generator=torch.Generator().manual_seed(1)), torch.arange(32) % 10
    losses = []
    for _ in range(20):
        loss = nn.functional.cross_entropy(run(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_a_compiled_model_trains_with_mup_groups_as_the_eager_one():
    """Nothing is stored on the tensors, so torch.compile sees plain parameters (the mup package's attributes are
    lost on its fake tensors): the compiled model trains step for step as the eager one."""
    base = on_meta(mlp, 16)
    eager = _train(mlp(64), base, compiled=False)
    compiled = _train(mlp(64), base, compiled=True)
    assert compiled == pytest.approx(eager, rel=1e-5)
    assert compiled[-1] < 0.9 * compiled[0], compiled


def test_lstm_biases_are_zero_too():
    lstm = lambda h: nn.Sequential(nn.LSTM(4, h))  # noqa: E731
    model = lstm(64)
    mup.policy(model, on_meta(lstm, 16)).apply_(model, seed=0)
    assert not model[0].bias_ih_l0.any() and not model[0].bias_hh_l0.any()


def test_reparametrized_weights_keep_their_init():
    """weight_norm on the readout: its g and v keep the model's own init (zeroing v would make the weight 0/0)."""
    from torch.nn.utils.parametrizations import weight_norm

    def build(w: int) -> nn.Module:
        return nn.Sequential(nn.Linear(8, w), nn.ReLU(), weight_norm(nn.Linear(w, 10)))

    model = build(256)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    mup.policy(model, on_meta(build, 64)).apply_(model, seed=0)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if "parametrizations" in n)
    assert bool(torch.isfinite(model(torch.randn(4, 8))).all())
    got = mup.roles(model, on_meta(build, 64))
    assert got["2.parametrizations.weight.original1"] == mup.Role("output", 4.0, 4.0, 1.0)  # v: the readout's layout
    assert got["2.parametrizations.weight.original0"].kind == "vector"  # g: one magnitude per output
