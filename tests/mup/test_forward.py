"""muP's forward-pass changes without editing model code: a tied readout's 1/m and attention scaled by 1/d."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchinit.mup as mup
from _thirdparty import need


class LM(nn.Module):
    def __init__(self, d: int, *, tied: bool = True) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, d)
        self.hidden = nn.Linear(d, d)
        self.head = nn.Linear(d, 50, bias=False)
        if tied:
            self.head.weight = self.embed.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.hidden(self.embed(idx))))


def on_meta(build, *args, **kwargs):
    with torch.device("meta"):
        return build(*args, **kwargs)


IDX = torch.arange(12).reshape(2, 6)


def test_a_tied_readout_sees_its_input_over_m_and_remove_undoes_it():
    model = LM(64)
    before = model(IDX).detach()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    changes = mup.forward_changes(model, on_meta(LM, 16))
    assert changes.changes == ["head: tied readout, input / 4"]
    hidden = torch.tanh(model.hidden(model.embed(IDX)))
    assert torch.allclose(model(IDX), (hidden / 4) @ model.embed.weight.T)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # parameters untouched
    changes.remove()
    changes.remove()  # idempotent
    assert torch.equal(model(IDX), before)
    with mup.forward_changes(model, on_meta(LM, 16)):
        assert not torch.equal(model(IDX), before)
    assert torch.equal(model(IDX), before)


def test_untied_readouts_and_the_base_width_need_nothing():
    assert mup.forward_changes(LM(64, tied=False), on_meta(LM, 16, tied=False)).changes == []
    at_base = mup.forward_changes(LM(16), on_meta(LM, 16), delta=on_meta(LM, 32))
    assert at_base.changes == ["head: tied readout, input / 1"]  # the same rule as at every width, here 1


def test_the_same_logits_as_the_mup_packages_shared_readout():
    mu = pytest.importorskip("mup")

    class Theirs(nn.Module):
        def __init__(self, d: int) -> None:
            super().__init__()
            self.embed = nn.Embedding(50, d)
            self.hidden = nn.Linear(d, d)
            self.head = mu.MuSharedReadout(self.embed.weight, bias=False)

        def forward(self, idx):
            return self.head(torch.tanh(self.hidden(self.embed(idx))))

    theirs = mu.set_base_shapes(Theirs(64), Theirs(16), rescale_params=False)
    ours = LM(64)
    ours.load_state_dict({k: v for k, v in theirs.state_dict().items() if not k.startswith("head")}, strict=False)
    mup.forward_changes(ours, on_meta(LM, 16))
    assert torch.allclose(ours(IDX), theirs(IDX), rtol=1e-6, atol=1e-7)


def _llama(d: int) -> nn.Module:
    tf = need("transformers")
    return tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=64, hidden_size=d, intermediate_size=2 * d,
                                              num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                              max_position_embeddings=16, tie_word_embeddings=True))  # fmt: skip


@pytest.mark.slow
def test_transformers_llama_with_a_growing_head_dim():
    model = _llama(64)  # head dim 32 against 8
    attn = model.model.layers[0].self_attn
    assert attn.scaling == 32**-0.5
    before = model(input_ids=IDX % 64).logits.detach()
    changes = mup.forward_changes(model, on_meta(_llama, 16))
    assert attn.scaling == pytest.approx(8**0.5 / 32)  # 1/d against the base, equal to 1/sqrt(8) at the base
    assert "lm_head: tied readout, input / 4" in changes.changes
    assert any("self_attn: attention scale" in c for c in changes.changes)
    changes.remove()
    assert attn.scaling == 32**-0.5 and torch.equal(model(input_ids=IDX % 64).logits, before)


@pytest.mark.slow
def test_transformers_gpt2_with_growing_heads_changes_only_the_readout():
    tf = need("transformers")

    def gpt2(d: int) -> nn.Module:
        return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=64, n_positions=16, n_embd=d, n_layer=1, n_head=d // 8))

    changes = mup.forward_changes(gpt2(64), on_meta(gpt2, 16))
    assert changes.changes == ["lm_head: tied readout, input / 4"]  # head dim 8 at every width


@pytest.mark.slow
def test_timm_vit_with_a_growing_head_dim():
    timm = need("timm")

    def vit(d: int) -> nn.Module:
        return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32,
                                 patch_size=8, depth=1, embed_dim=d, num_heads=2)  # fmt: skip

    model = vit(64)
    attn = model.blocks[0].attn
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    changes = mup.forward_changes(model, on_meta(vit, 16))
    assert attn.scale == pytest.approx(8**0.5 / 32) and attn.fused_attn is False
    assert changes.changes == ["blocks.0.attn: attention scale x sqrt(8/32) (1/d instead of 1/sqrt(d))"]
    model.eval()
    with torch.no_grad():
        changed = model(x)
    changes.remove()
    assert attn.scale == 32**-0.5
    with torch.no_grad():
        assert not torch.allclose(changed, model(x))


def test_arguments():
    with pytest.raises(TypeError, match="readout and attention must be bools"):
        mup.forward_changes(LM(32), LM(16), readout="yes")
    with pytest.raises(ValueError, match="base has no parameter"):
        mup.forward_changes(LM(32), nn.Linear(2, 2))


def test_applying_twice_is_refused_until_removed():
    model = LM(64)
    first = mup.forward_changes(model, on_meta(LM, 16))
    with pytest.raises(ValueError, match="already has muP's forward changes"):
        mup.forward_changes(model, on_meta(LM, 16))
    first.remove()
    mup.forward_changes(model, on_meta(LM, 16)).remove()


def test_a_deep_copy_carries_the_changes_and_refuses_them_twice():
    import copy
    import pickle

    model = LM(64)
    changes = mup.forward_changes(model, on_meta(LM, 16))
    copied = copy.deepcopy(model)
    with pytest.raises(ValueError, match="a deep copy of a changed model carries them"):
        mup.forward_changes(copied, on_meta(LM, 16))
    assert torch.equal(copied(IDX), model(IDX))
    pickle.loads(pickle.dumps(model))  # the hooks pickle with the model
    changes.remove()
    mup.forward_changes(model, on_meta(LM, 16)).remove()


def test_a_compiled_module_is_named():
    with pytest.raises(TypeError, match=r"torch.compile'd module: pass the module it compiles \(model._orig_mod\)"):
        mup.forward_changes(torch.compile(LM(64)), on_meta(LM, 16))


class _MHA(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)


def test_an_attention_scale_out_of_reach_is_named_when_the_head_dim_grows():
    """nn.MultiheadAttention computes 1/sqrt(d) inside its forward: a growing head dim cannot get muP's 1/d, and the
    warning says so; growing the number of heads instead needs no change and says nothing."""
    with torch.device("meta"):
        base, wider_heads_fixed, more_heads = _MHA(16, 2), _MHA(64, 2), _MHA(64, 8)
    with pytest.warns(UserWarning, match=r"head dim of attn \(MultiheadAttention, head dim 8 -> 32\) grows"):
        changes = mup.forward_changes(wider_heads_fixed, base)
    assert changes.changes == []
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mup.forward_changes(more_heads, base).changes == []  # head dim 8 at both widths
