"""Deferred construction and materialize_ (issue 5, item 4)."""

import math

import pytest
import torch
from torch import nn

import torchinit as ti
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
    with pytest.raises(TypeError, match="model must be an nn.Module"):
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
    with pytest.raises(RuntimeError):
        with ti.deferred():
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
        except Exception as err:  # noqa: BLE001
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
