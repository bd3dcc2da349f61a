"""Deferred construction and materialize_."""

import math
import warnings

import pytest
import torch
from torch import nn

import torchinit as ti
from _thirdparty import need
from conftest import gen


class Rotary(nn.Module):
    """A RoPE-style module: a non-persistent buffer computed in the constructor."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim)), persistent=False)
        self.proj = nn.Linear(dim, dim)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))


class Block(nn.Module):
    def __init__(self, dim: int = 16):
        super().__init__()
        self.rope = Rotary(dim)
        self.attn = nn.MultiheadAttention(dim, 2)
        self.norm = nn.LayerNorm(dim)
        self.ls = LayerScale(dim)
        self.lstm = nn.LSTM(dim, 8)


def test_deferred_parameters_meta_buffers_real():
    with ti.deferred():
        block = Block()
    assert all(p.is_meta for p in block.parameters())
    assert not block.rope.inv_freq.is_meta
    assert torch.equal(block.rope.inv_freq, Rotary(16).inv_freq)
    assert not nn.Linear(2, 2).weight.is_meta  # the patch is gone after the context


def test_materialize_no_meta_no_nan_and_sources():
    with ti.deferred():
        block = Block()
    policy = ti.Policy([("ls.gamma", ti.Constant(1e-5))])
    report = ti.materialize_(block, policy, generator=gen())
    params = dict(block.named_parameters())
    assert not any(p.is_meta for p in params.values())
    assert all(bool(torch.isfinite(p).all()) for p in params.values())
    rules = {r.name: r.rule for r in report}
    assert rules["ls.gamma"] == "#0 'ls.gamma'" and bool((block.ls.gamma == 1e-5).all())
    assert rules["attn.in_proj_weight"] == "construction"
    assert next(r for r in report if r.name == "attn.in_proj_weight").initializer == "uniform_"  # xavier_uniform_
    assert next(r for r in report if r.name == "attn.out_proj.bias").initializer == "fill_"  # MHA sets it to 0
    assert bool((block.attn.out_proj.bias == 0).all())
    assert rules["lstm.weight_hh_l0"] == "construction"
    e = 16  # MultiheadAttention: xavier_uniform_ on the packed (3E, E) in_proj, in_proj_bias 0
    bound = math.sqrt(6 / (e + 3 * e))
    assert float(block.attn.in_proj_weight.detach().abs().max()) <= bound
    assert bool((block.attn.in_proj_bias == 0).all())
    assert bool((block.norm.weight == 1).all()) and bool((block.norm.bias == 0).all())
    assert float(block.lstm.weight_hh_l0.detach().abs().max()) <= 1 / math.sqrt(8)
    out, _ = block.attn(torch.randn(3, 1, 16), torch.randn(3, 1, 16), torch.randn(3, 1, 16))
    assert bool(torch.isfinite(out).all())


def test_reset_sources_match_eager_construction():
    torch.manual_seed(3)
    eager = nn.Sequential(nn.Linear(6, 5), nn.Conv2d(3, 4, 3), nn.LayerNorm(4), nn.Embedding(7, 3))
    with ti.deferred():
        lazy = nn.Sequential(nn.Linear(6, 5), nn.Conv2d(3, 4, 3), nn.LayerNorm(4), nn.Embedding(7, 3))
    torch.manual_seed(3)
    ti.materialize_(lazy)  # no generator: the global RNG in module order, as the constructors draw
    for (name, a), b in zip(eager.named_parameters(), lazy.parameters()):
        assert torch.equal(a, b), name


class Uninitialized(nn.Module):
    """A parameter no code ever writes: eager construction leaves uninitialized memory in it."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.scale = nn.Parameter(torch.empty(4))


def test_constructor_values_are_kept():
    with ti.deferred():
        block = Block()
    report = ti.materialize_(block)
    assert torch.equal(block.ls.gamma, torch.full((16,), 1e-5))
    assert next(r for r in report if r.name == "ls.gamma").initializer == "constructor value"


def test_unknown_values_strict_raises_before_allocating():
    with ti.deferred():
        model = Uninitialized()
    with pytest.raises(ValueError, match=r"strict: the values of 1 tensor\(s\) cannot be known .*scale"):
        ti.materialize_(model, strict=True)
    assert all(p.is_meta for p in model.parameters())  # nothing allocated


def test_unknown_values_warn_and_are_zero():
    with ti.deferred():
        model = Uninitialized()
    with pytest.warns(UserWarning, match="scale"):
        report = ti.materialize_(model)
    assert bool((model.scale == 0).all())
    assert next(r for r in report if r.name == "scale").rule == "unknown"


def test_policy_param_initialized_exactly_once_and_reset_skips_it():
    calls = []

    class Counting(ti.Normal):
        def init(self, tensor, *, generator=None):
            if not tensor.is_meta:
                calls.append(tuple(tensor.shape))
            return super().init(tensor, generator=generator)

    with ti.deferred():
        layer = nn.Linear(64, 32)
    torch.manual_seed(0)
    ti.materialize_(layer, ti.Policy([(nn.Linear, {"weight": Counting(std=0.5)})]), generator=gen(4))
    assert calls == [(32, 64)]
    assert float(layer.weight.detach().std()) > 0.4  # the policy's N(0, 0.5), not reset_parameters' U(+-1/8)
    assert float(layer.bias.detach().abs().max()) <= 1 / 8  # the bias came from reset_parameters


def test_materialize_is_deterministic_and_keeps_ties():
    def build():
        with ti.deferred():
            m = nn.ModuleDict({"emb": nn.Embedding(20, 8), "head": nn.Linear(8, 20, bias=False)})
        m["head"].weight = m["emb"].weight
        return m

    a, b = build(), build()
    policy = ti.Policy([(nn.Embedding, {"weight": ti.Normal(std=0.02)})])
    ti.materialize_(a, policy, device="cpu", generator=gen(9))
    ti.materialize_(b, policy, device="cpu", generator=gen(9))
    assert a["head"].weight is a["emb"].weight and not a["emb"].weight.is_meta
    assert torch.equal(a["emb"].weight, b["emb"].weight)


def test_gpt2_meta_round_trip():
    need("transformers")
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=97, n_positions=16, bos_token_id=0, eos_token_id=0)
    with ti.deferred():
        model = GPT2LMHeadModel(config)
    report = ti.materialize_(model, ti.presets.gpt2(config.n_layer), strict=True, generator=gen())
    assert model.lm_head.weight is model.transformer.wte.weight
    assert report.untouched == []
    for name, p in model.named_parameters():
        assert not p.is_meta and bool(torch.isfinite(p).all()), name
    logits = model(torch.randint(0, 97, (1, 8))).logits
    assert bool(torch.isfinite(logits).all())


def test_materialize_errors():
    with pytest.raises(TypeError, match=r"model must be an nn.Module"):
        ti.materialize_(torch.zeros(2))
    with ti.deferred():
        layer = nn.Linear(4, 4)
    with pytest.raises(ValueError, match=r"weight .*Dirac"):
        ti.materialize_(layer, ti.Policy([(nn.Linear, {"weight": ti.Dirac()})]))
    assert layer.weight.is_meta  # checked before anything was allocated


def test_deferred_skips_random_fills_on_meta_and_restores_torch():
    originals = {name: getattr(torch.Tensor, name) for name in ("normal_", "erfinv_", "exponential_")}
    with ti.deferred():
        meta = torch.empty(3, device="meta")
        assert meta.normal_() is meta and meta.erfinv_() is meta
        real = torch.zeros(1000).normal_(generator=gen())  # real tensors are filled as usual
        assert torch.equal(real, torch.zeros(1000).normal_(generator=gen())) and float(real.std()) > 0.5
    for name, method in originals.items():
        assert getattr(torch.Tensor, name) is method
    with pytest.raises(RuntimeError), ti.deferred():
        raise RuntimeError("boom")
    assert torch.Tensor.normal_ is originals["normal_"] and not nn.Linear(2, 2).weight.is_meta


def test_overlapping_deferred_contexts_restore_torch():
    import threading

    original = nn.Module.register_parameter
    first, second = ti.deferred(), ti.deferred()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # out of order: the patch stays while one context is open
    with torch.no_grad():
        assert nn.Linear(2, 2).weight.is_meta
    second.__exit__(None, None, None)
    assert nn.Module.register_parameter is original and not nn.Linear(2, 2).weight.is_meta
    errors = []

    def build():
        try:
            with ti.deferred():
                nn.Linear(8, 8)
        except Exception as err:  # a failure in any thread is collected: none is expected
            errors.append(err)

    threads = [threading.Thread(target=build) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and nn.Module.register_parameter is original


def test_lstm_and_attention_run_after_materialize_and_match_eager():
    def build():
        return nn.ModuleDict({"lstm": nn.LSTM(8, 16, num_layers=2), "attn": nn.MultiheadAttention(16, 4)})

    torch.manual_seed(7)
    eager = build()
    with ti.deferred():
        lazy = build()
    torch.manual_seed(7)
    ti.materialize_(lazy)
    x = torch.randn(5, 3, 8, generator=gen())
    out, _ = lazy["lstm"](x)  # the LSTM's own list of flat weights points at the real tensors
    want, _ = eager["lstm"](x)
    assert torch.equal(out, want)
    a, _ = lazy["attn"](out, out, out)
    assert bool(torch.isfinite(a).all())
    for (name, p), q in zip(eager["lstm"].named_parameters(), lazy["lstm"].parameters()):
        assert torch.equal(p, q), name


# ---------------------------------------------------------------- eager equivalence, meta models, rules


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    return LlamaForCausalLM(config)


def tiny_bert():
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    return BertForMaskedLM(config)


def torch_mix():
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.MultiheadAttention(8, 2),
                         nn.Embedding(10, 8, padding_idx=0), nn.LSTM(8, 4))


def meta_build(build, how):
    """The model built on meta without deferred(): a device context, .to("meta"), or accelerate."""
    if how == "device":
        with torch.device("meta"):
            return build()
    if how == "to":
        return build().to("meta")
    accelerate = pytest.importorskip("accelerate")
    with accelerate.init_empty_weights():
        return build()


@pytest.mark.parametrize("how", ["device", "to", "accelerate"])
@pytest.mark.parametrize("build", [tiny_llama, tiny_bert, torch_mix], ids=["llama", "bert", "torch"])
def test_meta_built_models_materialize_completely_as_eager(build, how):
    from _eager import differences

    need("transformers")
    model = meta_build(build, how)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # nothing unknown, nothing failed
        ti.materialize_(model)
    assert not [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    assert differences(build, model) == []  # RoPE inv_freq, BatchNorm stats, padding rows, ties included


def test_meta_model_with_unknown_buffer_raises_before_changing_anything():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 4)
            self.register_buffer("table", torch.arange(4.0))  # computed in the constructor: lost on meta

    with torch.device("meta"):
        model = Odd()
    before = {k: (id(v), v.is_meta) for k, v in [*model.named_parameters(), *model.named_buffers()]}
    with pytest.raises(ValueError, match=r"cannot be known .*table"):
        ti.materialize_(model, strict=True)
    assert {k: (id(v), v.is_meta) for k, v in [*model.named_parameters(), *model.named_buffers()]} == before
    with pytest.warns(UserWarning, match="table"), pytest.warns(UserWarning, match="re-enacting the construction"):
        ti.materialize_(model)
    assert torch.equal(model.table, torch.zeros(4)) and not model.proj.weight.is_meta


def test_transformers_own_init_methods_work_as_on_eager():
    need("transformers")
    with ti.deferred():
        model = tiny_llama()
    ti.materialize_(model)
    eager = tiny_llama()
    for m in (model, eager):
        w = m.model.layers[0].mlp.up_proj.weight
        with torch.no_grad():
            w.fill_(7.0)
        m.init_weights()  # transformers: a no-op, every module is marked initialized by post_init
        assert bool((w == 7).all())
        for module in m.modules():
            module.__dict__.pop("_is_hf_initialized", None)
        m.init_weights()  # with the marks cleared it initializes again, for real
        assert float(w.detach().std()) == pytest.approx(0.02, rel=0.2)
    layer = model.model.layers[0].self_attn.q_proj
    before = layer.weight.detach().clone()
    layer.reset_parameters()
    assert not torch.equal(before, layer.weight) and not layer.weight.is_meta


def test_policy_rule_wins_over_construction():
    need("transformers")
    with ti.deferred():
        model = tiny_llama()
    policy = ti.Policy([("*.mlp.down_proj.weight", ti.Zeros()), ("model.norm.weight", ti.Constant(3.0))])
    report = ti.materialize_(model, policy)
    assert bool((model.model.layers[1].mlp.down_proj.weight == 0).all())
    assert bool((model.model.norm.weight == 3).all())
    rows = {r.name: r for r in report}
    assert rows["model.layers.0.mlp.down_proj.weight"].rule == "#0 '*.mlp.down_proj.weight'"
    assert rows["model.layers.0.mlp.up_proj.weight"].rule == "construction"
    assert rows["model.layers.0.mlp.up_proj.weight"].initializer == "normal_"  # kaiming_uniform_ was dead


def test_materialize_writes_each_parameter_about_once():
    """Dead writes are dropped: a Linear's kaiming_uniform_ before transformers' normal_ is never run."""
    from torchinit.recording.log import storage_key

    need("transformers")
    with ti.deferred() as recording:
        model = tiny_llama()
    keys = {storage_key(p) for p in model.parameters()}
    live, undefined = recording.live_ops(keys)
    writes = [recording.ops[i] for i in live if recording.ops[i].writes]
    assert not undefined
    assert len(writes) <= len(keys) + 2  # one write each (+ the padding row fill_ ops)
    assert "uniform_" not in {op.name for op in writes}


def test_generator_state_decides_the_streams():
    def build():
        with ti.deferred():
            return nn.Sequential(nn.Linear(16, 16), nn.Embedding(20, 16))

    g = gen(5)
    a, b = build(), build()
    ti.materialize_(a, generator=g)
    ti.materialize_(b, generator=g)  # the same generator, advanced: different weights
    assert not torch.equal(a[0].weight, b[0].weight)
    c = build()
    ti.materialize_(c, generator=gen(5))  # re-seeded: the first call's weights again
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), c.parameters()))
    assert gen(5).initial_seed() == g.initial_seed()  # the seed alone does not decide: the state does


def test_policy_generator_state_decides_the_streams():
    policy = ti.Policy([(nn.Linear, {"weight": ti.Normal(), "bias": ti.Zeros()})])
    a, b = nn.Linear(8, 8), nn.Linear(8, 8)
    g = gen(2)
    policy.apply_(a, generator=g)
    policy.apply_(b, generator=g)
    assert not torch.equal(a.weight, b.weight)
    policy.apply_(b, generator=gen(2))
    assert torch.equal(a.weight, b.weight)


def test_report_statistics_are_computed_on_demand(monkeypatch):
    import torchinit.model.policy as policy_module

    calls = []
    real_std = policy_module._std
    monkeypatch.setattr(policy_module, "_std", lambda t: calls.append(1) or real_std(t))
    with ti.deferred():
        model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    report = ti.materialize_(model)
    report2 = ti.Policy([(nn.Linear, {"weight": ti.Ones()})]).apply_(model)
    assert calls == []  # neither call computed a statistic
    assert report2.rows[0].std == 0.0 and len(calls) == 1
    assert "std" in str(report) and len(calls) == 1 + len(report)


def test_rules_that_match_nothing_are_reported():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    typo = ti.Policy([("*.wieght", ti.Zeros()), (nn.Linear, {"weight": ti.Ones(), "biass": ti.Zeros()})])
    with pytest.warns(UserWarning) as caught:
        typo.apply_(model)
    message = " ".join(str(w.message) for w in caught)
    assert "'*.wieght'" in message and "matches no parameter" in message
    assert "'biass'" in message and "they have: bias, weight" in message
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"strict: .*'\*\.wieght'"):
        typo.apply_(model, strict=True)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # raised before writing
    with ti.deferred():
        lazy = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="matches no parameter"):
        ti.materialize_(lazy, ti.Policy([("nothing.*", ti.Zeros())]), strict=True)
    assert lazy[0].weight.is_meta
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ti.presets.torch_default().apply_(model)  # a preset's catalogue rules are optional
        ti.Policy([(nn.Conv2d, {"weight": ti.Zeros()})], optional=True).apply_(model)


def test_init_functions_that_skip_meta_are_recorded_whole():
    """torch.nn.init's trunc_normal_/orthogonal_ return at once on meta, and so does every torchinit initializer:
    inside deferred() they are recorded as whole calls and replayed."""

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(64, 32)
            ti.orthogonal_(self.a.weight)
            self.b = nn.Parameter(torch.empty(32, 16))
            ti.trunc_normal_std_(self.b, std=0.5)
            self.c = nn.Parameter(torch.empty(16, 16))
            nn.init.orthogonal_(self.c)
            self.d = nn.Parameter(torch.empty(256, 64))
            nn.init.trunc_normal_(self.d, std=0.02)

    with ti.deferred() as recording:
        model = Model()
    assert [op.name for op in recording.ops if op.whole] == ["orthogonal_", "trunc_normal_std_", "orthogonal_",
                                                             "trunc_normal_"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        ti.materialize_(model)
    w = model.a.weight.detach()
    assert float((w @ w.T - torch.eye(32)).abs().max()) < 1e-5
    c = model.c.detach()
    assert float((c @ c.T - torch.eye(16)).abs().max()) < 1e-5
    assert float(model.b.detach().abs().max()) <= 2 * 0.5 / ti.truncated_std_factor(2) + 1e-6  # sigma-relative bounds
    d = model.d.detach()
    assert float(d.std()) == pytest.approx(0.02, rel=0.05)  # 16384 draws: the std's own error is ~0.6%
    with pytest.raises(ValueError, match="sparsity"), ti.deferred():  # argument errors surface at construction
        layer = nn.Linear(4, 4)
        ti.sparse_(layer.weight, sparsity=2.0)


@pytest.mark.parametrize("fault", [KeyboardInterrupt, RuntimeError])
def test_a_fault_half_way_leaves_the_model_unchanged(fault):
    class Exploding(ti.Normal):
        def init(self, tensor, *, generator=None):
            raise fault("half-way")

    with ti.deferred():
        model = nn.Sequential(nn.Linear(4, 4), nn.Embedding(6, 4), nn.Linear(4, 2))
    before = {n: (id(p), p.is_meta) for n, p in model.named_parameters()}
    with pytest.raises(fault):  # the replay of the first layers has run; the rule on the last one explodes
        ti.materialize_(model, ti.Policy([("2.weight", Exploding())]))
    assert {n: (id(p), p.is_meta) for n, p in model.named_parameters()} == before
    ti.materialize_(model)  # and it can still be materialized
    assert not any(p.is_meta for p in model.parameters())


def test_materialize_argument_errors_change_nothing():
    with ti.deferred():
        layer = nn.Linear(4, 4)
    for kwargs, error, match in [
        ({"policy": "torch_default"}, TypeError, "policy must be a torchinit.Policy"),
        ({"device": "nonsense"}, ValueError, "device"),
        ({"device": "meta"}, ValueError, "real device"),
        ({"strict": 1}, TypeError, "strict must be a bool"),
        ({"generator": 0}, TypeError, "generator must be a torch.Generator"),
    ]:
        with pytest.raises(error, match=match):
            ti.materialize_(layer, **kwargs)
        assert layer.weight.is_meta and layer.bias.is_meta


@pytest.mark.subprocess
def test_deferred_does_not_import_dynamo():
    """A dispatch mode is wrapped in torch._dynamo.disable unless it opts out; that import costs ~1.4 s."""
    import subprocess
    import sys

    code = ("import sys, torch, torchinit as ti\n"
            "with ti.deferred():\n    m = torch.nn.Linear(4, 4)\n"
            "ti.materialize_(m)\nprint('torch._dynamo' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"
