"""``seed=`` on whole models: Policy.apply_, materialize_, presets and the model's own init.

A parameter's values depend only on (seed, qualified name, shape, initializer): never on the
call order, the other parameters, or whether the model was eager, deferred or built on meta.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import torchinit as ti
from _thirdparty import need
from torchinit.rng import keyed


def mlp(widths=(8, 16, 4)):
    layers = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*layers)


POLICY = ti.Policy([(nn.Linear, {"weight": ti.KaimingNormal(), "bias": ti.Zeros()}),
                    ("0.weight", ti.TruncNormalStd(std=0.02))])


def params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_apply_with_seed_is_the_functions_with_qualified_names():
    model = mlp()
    ti.Policy([(nn.Linear, {"weight": ti.KaimingNormal(), "bias": ti.Uniform(a=-0.1, b=0.1)})]).apply_(model, seed=5)
    assert torch.equal(model[2].weight, ti.kaiming_normal_(torch.empty(4, 16), seed=5, name="2.weight"))
    assert torch.equal(model[2].bias, ti.uniform_(torch.empty(4), -0.1, 0.1, seed=5, name="2.bias"))
    std = (2 / 8) ** 0.5
    assert torch.equal(model[0].weight, keyed.normal_(torch.empty(16, 8), keyed.Stream.of(5, "0.weight"), 0.0, std))


def test_values_do_not_depend_on_order_calls_or_other_parameters():
    a, b = mlp(), mlp((8, 16, 4))
    POLICY.apply_(a, seed=1)
    POLICY.apply_(b, seed=1)
    POLICY.apply_(b, seed=1)  # a second call: the same values (no state is consumed)
    assert all(torch.equal(x, y) for x, y in zip(params(a).values(), params(b).values()))
    # another model with the same names for some parameters, in another order and with more parameters
    c = nn.Sequential()
    c.add_module("2", nn.Linear(16, 4))
    c.add_module("extra", nn.Linear(3, 3))
    c.add_module("0", nn.Linear(8, 16))
    POLICY.apply_(c, seed=1)
    assert torch.equal(c.get_submodule("2").weight, a[2].weight)
    assert torch.equal(c.get_submodule("0").weight, a[0].weight)
    # the global RNG and a generator are not touched
    d = mlp()
    state = torch.get_rng_state()
    POLICY.apply_(d, seed=1)
    assert torch.equal(state, torch.get_rng_state())


def test_seed_and_generator_errors_leave_the_model_unchanged():
    model = mlp()
    before = params(model)
    with pytest.raises(TypeError, match="not both"):
        POLICY.apply_(model, seed=1, generator=torch.Generator())
    with pytest.raises(TypeError, match="seed must be an int"):
        POLICY.apply_(model, seed="1")
    with pytest.raises(TypeError, match="not both"):
        ti.materialize_(model, POLICY, seed=1, generator=torch.Generator())
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    with torch.device("meta"):
        meta = mlp()
    with pytest.raises(ValueError, match="seed: nothing can be drawn for meta parameters"):
        POLICY.apply_(meta, seed=1)


def test_materialize_with_seed_equals_apply_on_an_eager_model():
    eager = mlp()
    POLICY.apply_(eager, seed=3)
    with ti.deferred():
        deferred = mlp()
    ti.materialize_(deferred, POLICY, seed=3)
    with torch.device("meta"):
        meta = mlp()
    ti.materialize_(meta, POLICY, seed=3)
    for name, p in eager.named_parameters():
        assert torch.equal(p, deferred.get_parameter(name)) and torch.equal(p, meta.get_parameter(name)), name


def test_own_init_with_seed_is_keyed_and_the_same_everywhere():
    """torch_default().apply_(seed) = materialize_(deferred or meta model, seed): the reset's fills, keyed by name."""
    def build():
        return nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Embedding(10, 16, padding_idx=0),
                             nn.Conv2d(3, 4, 3), nn.MultiheadAttention(16, 2), nn.LSTM(16, 8))

    eager = build()
    ti.presets.torch_default().apply_(eager, seed=11)
    with ti.deferred():
        deferred = build()
    ti.materialize_(deferred, seed=11)
    with torch.device("meta"):
        meta = build()
    ti.materialize_(meta, seed=11)
    for name, p in eager.named_parameters():
        assert torch.equal(p, deferred.get_parameter(name)), name
        assert torch.equal(p, meta.get_parameter(name)), name
    bound = 1 / 8**0.5  # Linear's reset: kaiming_uniform_(a=sqrt(5)) = U(+-1/sqrt(fan_in)), keyed by name
    drawn = keyed.uniform_(torch.empty(16, 8), keyed.Stream.of(11, "0.weight"), -bound, bound)
    assert torch.equal(eager[0].weight, drawn)
    assert torch.equal(eager[2].weight[1:], keyed.normal_(torch.empty(10, 16), keyed.Stream.of(11, "2.weight"))[1:])
    assert bool((eager[2].weight[0] == 0).all())  # padding_idx
    another = build()
    ti.presets.torch_default().apply_(another, seed=12)
    assert not torch.equal(another[0].weight, eager[0].weight)


def test_materialize_with_seed_on_transformers_models():
    need("transformers")
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=97, n_positions=16, bos_token_id=0, eos_token_id=0)
    with ti.deferred():
        a = GPT2LMHeadModel(config)
    ti.materialize_(a, seed=4)
    with torch.device("meta"):
        b = GPT2LMHeadModel(config)
    ti.materialize_(b, seed=4)
    with ti.deferred():
        c = GPT2LMHeadModel(config)
    ti.materialize_(c, ti.presets.gpt2(2), seed=4)
    assert a.lm_head.weight is a.transformer.wte.weight
    for name, p in a.named_parameters():
        assert torch.equal(p, b.get_parameter(name)), name
        assert bool(torch.isfinite(p).all())
    # GPT-2's own init is normal(0, 0.02) on wte, keyed by the parameter's name
    assert torch.equal(a.transformer.wte.weight,
                       keyed.normal_(torch.empty(97, 32), keyed.Stream.of(4, "transformer.wte.weight"), 0.0, 0.02))
    assert torch.equal(c.transformer.h[0].attn.c_attn.weight,
                       ti.normal_(torch.empty(32, 96), 0.0, 0.02, seed=4, name="transformer.h.0.attn.c_attn.weight"))


def test_recorded_torch_functions_get_their_keyed_twins():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Parameter(torch.empty(6, 6))
            self.b = nn.Parameter(torch.empty(6, 6))
            self.c = nn.Parameter(torch.empty(64))
            nn.init.orthogonal_(self.a)
            nn.init.trunc_normal_(self.b, std=0.5)
            nn.init.normal_(self.c)
            self.c.data[:32].uniform_(-1, 1)  # a second random fill of c: the stream "c#1"

    with ti.deferred():
        m = Model()
    ti.materialize_(m, seed=2)
    assert torch.equal(m.a, ti.orthogonal_(torch.empty(6, 6), seed=2, name="a"))
    assert torch.equal(m.b, ti.trunc_normal_(torch.empty(6, 6), std=0.5, seed=2, name="b"))
    assert torch.equal(m.c[32:], ti.normal_(torch.empty(64), seed=2, name="c")[32:])
    assert torch.equal(m.c[:32], ti.uniform_(torch.empty(32), -1.0, 1.0, seed=2, name="c#1"))


@pytest.mark.filterwarnings("ignore:lsuv_. .* did not reach")  # one iteration on purpose: the start is the point
def test_lsuv_takes_seed_for_its_orthogonal_start():
    def run(**randomness):
        torch.manual_seed(0)  # the biases LSUV leaves as they are
        model = mlp((16, 16, 16))
        ti.lsuv_(model, torch.randn(64, 16, generator=torch.Generator().manual_seed(0)), max_iter=1, **randomness)
        return model

    a, b = run(seed=3), run(seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a[0].weight, run(seed=4)[0].weight)
    with pytest.raises(TypeError, match="not both"):
        run(seed=3, generator=torch.Generator())


# ---- regressions found by review ------------------------------------------------------------------------------


def test_a_constructor_that_itself_uses_seed_is_replayed_as_recorded():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.empty(4, 4))
            ti.normal_(self.w, seed=5, name="w")

    for randomness in ({"seed": 0}, {"generator": torch.Generator().manual_seed(0)}, {}):
        with ti.deferred():
            m = M()
        ti.materialize_(m, **randomness)
        assert torch.equal(m.w, ti.normal_(torch.empty(4, 4), seed=5, name="w"))


def test_random_factories_in_a_constructor_are_seeded():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.empty(8, 8))  # on meta under deferred(): the factories below follow it
            self.a = nn.Parameter(torch.rand(8, 8, device=self.w.device))
            self.b = nn.Parameter(torch.randperm(16, device=self.w.device).float())

    def build(seed):
        with ti.deferred():
            m = M()
        state = torch.get_rng_state()
        with pytest.warns(UserWarning, match="construction left w uninitialized"):  # w is only their device
            ti.materialize_(m, seed=seed)
        assert torch.equal(state, torch.get_rng_state())  # the global RNG is not touched
        return m

    a, b, c = build(1), build(1), build(2)
    assert torch.equal(a.a, b.a) and torch.equal(a.b, b.b)
    assert not torch.equal(a.a, c.a)


def test_keyed_sparse_does_not_depend_on_the_default_dtype():
    a = ti.sparse_(torch.empty(64, 16), 0.5, seed=1, name="s")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        b = ti.sparse_(torch.empty(64, 16, dtype=torch.float32), 0.5, seed=1, name="s")
    finally:
        torch.set_default_dtype(previous)
    assert torch.equal(a, b)


def test_deep_copied_templates_do_not_depend_on_unrelated_modules_built_before():
    def build(unrelated):
        with ti.deferred():
            model = nn.ModuleDict()
            for i in range(unrelated):
                model[f"unrelated{i}"] = nn.Linear(3, 3)
            model["enc"] = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16), 2, enable_nested_tensor=False)
        report = ti.materialize_(model, seed=0)
        assert {row.rule for row in report} == {"construction"}  # replayed: the template's draws are unnamed
        return model

    a, b = build(1), build(3)
    for name, p in a["enc"].named_parameters():
        assert torch.equal(p, b["enc"].get_parameter(name)), name


def test_conjugate_views_take_seed():
    z = torch.zeros(3, 4, dtype=torch.complex64)
    ti.normal_(z.conj(), seed=0, name="z")
    assert torch.equal(z, ti.normal_(torch.zeros(3, 4, dtype=torch.complex64), seed=0, name="z").conj())


def test_names_that_are_not_text_are_a_value_error():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="name must be encodable as UTF-8"):
        ti.normal_(x, seed=0, name="\ud800")
    assert bool((x == 0).all())


def test_offsets_beyond_the_stream_are_a_value_error():
    with pytest.raises(ValueError, match=r"offset \+ numel must be at most 2\*\*61"):
        keyed.uniform_(torch.empty(4, dtype=torch.float64), keyed.Stream.of(0), offset=2**63)


def test_keyed_orthogonal_is_computed_wide():
    """With seed=, float32 orthogonal matrices are the float64 computation rounded: thread counts cannot move them."""
    w = ti.orthogonal_(torch.empty(48, 32), seed=1, name="q")
    wide = ti.orthogonal_(torch.empty(48, 32, dtype=torch.float64), seed=1, name="q")
    assert torch.equal(w, wide.float())


@pytest.mark.parametrize("make", ["parametrizations.weight_norm", "weight_norm", "parametrizations.spectral_norm"])
def test_torch_reset_with_seed_on_reparametrized_modules(make):
    """The reset runs on plain stand-ins and reaches the reparametrization's tensors: keyed, the global RNG
    untouched."""
    import warnings

    from torch.nn.utils import parametrizations

    def build():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.nn.utils.weight_norm is deprecated
            layer = nn.Linear(4, 5)
            return torch.nn.utils.weight_norm(layer) if make == "weight_norm" else \
                getattr(parametrizations, make.split(".")[1])(layer)  # fmt: skip

    def reset(seed):
        layer = build()
        state = torch.get_rng_state()
        ti.presets.torch_reset_(layer, seed=seed)
        assert torch.equal(state, torch.get_rng_state())
        return {n: p.detach().clone() for n, p in layer.named_parameters()}

    a, b, c = reset(7), reset(7), reset(8)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert all(not torch.equal(a[n], c[n]) for n in a)
    old = build()
    ti.presets.torch_reset_(old)  # with no seed: torch's own reset, under no_grad (it used to raise)
