"""Policies: selectors, override order, ties, layouts, reports, strictness, determinism."""

import math
import subprocess
import sys
from collections import OrderedDict

import pytest
import torch
from torch import nn

import torchinit as ti
from conftest import gen
from torchinit.rng.seeds import stream_seed


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(50, 16)
        self.body = nn.Linear(16, 16)
        self.lm_head = nn.Linear(16, 50, bias=False)
        self.lm_head.weight = self.wte.weight


def test_selectors_and_later_rules_override():
    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 4, 3), act=nn.ReLU(), fc=nn.Linear(4, 2)))
    policy = ti.Policy([
        (nn.Module, {"weight": ti.Ones(), "bias": ti.Ones()}),      # every weight and bias (subclasses match)
        ("fc.*", ti.Constant(2.0)),                                  # glob on the qualified name
        (lambda name, p, m: isinstance(m, nn.Conv2d) and name.endswith("bias"), ti.Constant(3.0)),  # callable
    ])
    report = policy.apply_(model)
    assert bool((model.conv.weight == 1).all()) and bool((model.conv.bias == 3).all())
    assert bool((model.fc.weight == 2).all()) and bool((model.fc.bias == 2).all())
    assert [r.rule for r in report] == ["#0 Module", "#2 <lambda>()", "#1 'fc.*'", "#1 'fc.*'"]


def test_class_spec_only_covers_named_attributes_and_rest_is_untouched():
    model = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    before = state(model)
    report = ti.Policy([(nn.Linear, {"weight": ti.Zeros()})]).apply_(model)
    assert report.untouched == ["0.bias", "1.weight", "1.bias"]
    assert torch.equal(model[0].bias, before["0.bias"]) and torch.equal(model[1].weight, before["1.weight"])
    text = str(report)
    for name in ("0.weight", "0.bias", "1.weight", "1.bias", "untouched", "Zeros()", "3×3"):
        assert name in text
    assert text.splitlines()[-1] == "4 parameters, 3 untouched"


def test_tied_parameters_initialized_once_and_stay_tied():
    model = Tied()
    calls = []

    class Counting(ti.Normal):
        def init(self, tensor, *, generator=None):
            if not tensor.is_meta:  # the plan is first checked on meta copies
                calls.append(tuple(tensor.shape))
            return super().init(tensor, generator=generator)

    policy = ti.Policy([(nn.Linear, {"weight": ti.Zeros()}), (nn.Embedding, {"weight": Counting(std=0.02)})])
    report = policy.apply_(model, generator=gen())
    assert model.lm_head.weight is model.wte.weight
    assert calls == [(50, 16)]  # once, though registered twice
    row = next(r for r in report if r.name == "wte.weight")
    assert row.aliases == ["lm_head.weight"] and row.rule == "#1 Embedding"  # the later rule wins for the tie
    assert len(report) == 3


def test_owning_module_layout_gives_true_fans():
    convt = nn.ConvTranspose2d(16, 64, 3)
    grouped = nn.Conv2d(64, 128, 3, groups=8)
    model = nn.Sequential(convt, grouped)
    policy = ti.Policy([(nn.modules.conv._ConvNd, {"weight": ti.KaimingUniform(nonlinearity="relu")})])
    policy.apply_(model, generator=gen())
    for layer, fan_in in ((convt, 16 * 9), (grouped, 8 * 9)):
        bound = math.sqrt(2) * math.sqrt(3 / fan_in)
        top = float(layer.weight.detach().abs().max())
        assert top <= bound and top > 0.98 * bound


def test_transformers_conv1d_layout():
    from transformers.pytorch_utils import Conv1D

    layer = Conv1D(nf=96, nx=24)  # weight (in=24, out=96)
    ti.Policy([(Conv1D, {"weight": ti.KaimingUniform(nonlinearity="relu")})]).apply_(layer, generator=gen())
    bound = math.sqrt(2) * math.sqrt(3 / 24)
    top = float(layer.weight.detach().abs().max())
    assert top <= bound and top > 0.95 * bound
    assert ti.fans(layer) == (24, 96)


def test_strict_names_uncovered_and_changes_nothing():
    model = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    before = state(model)
    with pytest.raises(ValueError, match=r"strict: no rule covers 2 parameter\(s\): 1.weight, 1.bias"):
        ti.Policy([(nn.Linear, {"weight": ti.Zeros(), "bias": ti.Zeros()})]).apply_(model, strict=True)
    assert same_state(state(model), before)


def test_a_failing_initializer_changes_nothing():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3), nn.Conv2d(3, 3, 3))
    before = state(model)
    policy = ti.Policy([(nn.Module, {"weight": ti.Zeros()}), ("1.weight", ti.Dirac())])  # Dirac needs a conv weight
    with pytest.raises(ValueError, match=r"1.weight .*Dirac\(\).*3, 4 or 5 dims"):
        policy.apply_(model)
    assert same_state(state(model), before)


def test_same_seed_same_weights_and_applying_twice_is_idempotent():
    def build():
        torch.manual_seed(123)
        return nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4))

    policy = ti.Policy([(nn.Linear, {"weight": ti.KaimingNormal(), "bias": ti.Normal(std=0.1)})])
    a, b = build(), build()
    policy.apply_(a, generator=gen(7))
    policy.apply_(b, generator=gen(7))
    first = state(a)
    assert same_state(first, state(b))
    policy.apply_(a, generator=gen(7))
    assert same_state(first, state(a))
    policy.apply_(b, generator=gen(8))
    assert not same_state(first, state(b))


def test_adding_a_layer_changes_no_other_layer():
    policy = ti.Policy([(nn.Linear, {"weight": ti.XavierNormal(), "bias": ti.Normal(std=0.1)})])
    small = nn.Sequential(OrderedDict(a=nn.Linear(8, 8), b=nn.Linear(8, 4)))
    big = nn.Sequential(OrderedDict(a=nn.Linear(8, 8), extra=nn.Linear(8, 8), b=nn.Linear(8, 4)))
    policy.apply_(small, generator=gen(1))
    policy.apply_(big, generator=gen(1))
    for name in ("a.weight", "a.bias", "b.weight", "b.bias"):
        assert torch.equal(small.get_parameter(name), big.get_parameter(name))


def test_without_generator_the_global_rng_is_used_in_order():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4))
    policy = ti.Policy([(nn.Linear, {"weight": ti.KaimingNormal(), "bias": ti.Normal(std=0.1)})])
    torch.manual_seed(5)
    policy.apply_(model)
    torch.manual_seed(5)
    want = [ti.kaiming_normal_(torch.empty(8, 8)), ti.normal_(torch.empty(8), std=0.1),
            ti.kaiming_normal_(torch.empty(4, 8)), ti.normal_(torch.empty(4), std=0.1)]
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), want))


@pytest.mark.subprocess
def test_stream_seed_is_stable_across_processes():
    code = "from torchinit.rng.seeds import stream_seed; print(stream_seed(42, 'blocks.3.attn.c_proj.weight'))"
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": seed}).stdout.strip() for seed in ("0", "1")}
    assert outs == {str(stream_seed(42, "blocks.3.attn.c_proj.weight"))}
    assert stream_seed(42, "a") != stream_seed(42, "b") and 0 <= stream_seed(42, "a") < 2**63


def test_bad_rules_are_clear_errors():
    with pytest.raises(TypeError, match=r"rules\[0\].*dict"):
        ti.Policy([(nn.Linear, ti.Zeros())])
    with pytest.raises(TypeError, match=r"rules\[0\].*one Initializer"):
        ti.Policy([("*.weight", {"weight": ti.Zeros()})])
    with pytest.raises(TypeError, match=r"rules\[1\].*selector"):
        ti.Policy([("*", ti.Zeros()), (3, ti.Zeros())])
    with pytest.raises(TypeError, match=r"rules\[0\].*nn.Module subclass"):
        ti.Policy([(int, {"weight": ti.Zeros()})])
    with pytest.raises(TypeError, match=r"model must be an nn.Module"):
        ti.Policy([]).apply_(torch.zeros(3))


def test_policies_add_and_repr():
    p = ti.Policy([("*.weight", ti.Zeros())]) + ti.Policy([(nn.Linear, {"bias": ti.Ones()})])
    assert [r.index for r in p.rules] == [0, 1]
    assert repr(p) == "Policy([\n    ('*.weight', Zeros()),\n    (Linear, {'bias': Ones()})\n])"


def test_multihead_attention_and_lstm_blocks():
    mha = nn.MultiheadAttention(64, 4)
    lstm = nn.LSTM(32, 16)
    model = nn.ModuleDict({"mha": mha, "lstm": lstm})
    policy = ti.Policy([
        (nn.MultiheadAttention, {"in_proj_weight": ti.XavierUniform(blocks=3), "in_proj_bias": ti.Zeros()}),
        ("lstm.weight_hh_l0", ti.Orthogonal(blocks=4)),
    ])
    policy.apply_(model, generator=gen())
    bound = math.sqrt(6 / 128)
    assert 0.99 * bound < float(mha.in_proj_weight.detach().abs().max()) <= bound
    for gate in lstm.weight_hh_l0.detach().chunk(4):
        assert float((gate @ gate.T - torch.eye(16)).abs().max()) < 1e-5


def test_a_required_module_level_rule_plans_without_attribute_keys():
    """A class rule whose spec is a module-level initializer names no attribute: planning it never looks for one."""
    from torchinit.presets import TorchReset

    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    torch.manual_seed(0)
    eager = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    torch.manual_seed(0)
    report = ti.Policy([(nn.Linear, TorchReset())]).apply_(model)
    assert [row.rule for row in report] == ["#0 Linear"] * 4
    for want, got in zip(eager.parameters(), model.parameters()):
        assert torch.equal(want, got)


def test_an_owner_initializer_gets_the_owning_layer():
    from torchinit.model.policy import OwnerInitializer

    seen = []

    class Recorded(OwnerInitializer):
        @staticmethod
        def function(layer, *, generator=None, seed=None, name=""):
            seen.append(layer)
            return layer.bias

    model = nn.Sequential(nn.Linear(3, 2))
    ti.Policy([(nn.Linear, {"bias": Recorded()})]).apply_(model)
    dry_run, real = seen  # checked on a meta stand-in of the layer first, then given the layer itself
    assert isinstance(dry_run, nn.Linear) and dry_run.bias.is_meta and dry_run is not model[0]
    assert real is model[0]


def test_an_older_module_level_subclass_is_still_module_level():
    """Before ModuleInitializer, a subclass said ``module_level = True`` and defined ``unit``: still honoured."""
    from torchinit.model.policy import Rule

    def sevens_(layer, *, generator=None, seed=None, name=""):
        for p in layer.parameters(recurse=False):
            p.data.fill_(7.0)
        return layer

    class WholeLayer(ti.Initializer):
        module_level = True
        probe_settings = False
        function = staticmethod(sevens_)

        def unit(self, path, attr):
            return path[-1]

    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    ti.Policy([Rule(0, nn.Linear, WholeLayer(), required=False)]).apply_(model)
    assert all(bool(p.eq(7.0).all()) for p in model.parameters())
    assert ti.presets.TorchReset().module_level and ti.presets.TorchBias().wants_owner
