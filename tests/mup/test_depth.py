"""Depth transfer: residual branches scaled by (L0 / L) ** alpha and Adam's learning rate in the blocks by
(L0 / L) ** (1 - alpha), the depth found by comparing block lists with the base."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchinit.mup as mup
from _thirdparty import need
from torchinit.mup.depth import depth_of


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x):
        return x + self.mlp.fc2(torch.relu(self.mlp.fc1(self.norm(x))))


class Net(nn.Module):
    def __init__(self, d: int = 16, depth: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(4, d)
        self.blocks = nn.ModuleList([Block(d) for _ in range(depth)])
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def on_meta(build, *args, **kwargs):
    with torch.device("meta"):
        return build(*args, **kwargs)


def test_depth_is_found_by_comparing_block_lists():
    depth = depth_of(Net(depth=8), on_meta(Net, depth=2))
    assert (depth.stacks, depth.layers, depth.base_layers) == (("blocks",), 8, 2)
    assert depth.branches == tuple(f"blocks.{i}.mlp.fc2" for i in range(8))
    assert depth_of(Net(depth=2), Net(depth=2)).ratio == 1


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_branch_multipliers_and_learning_rates(alpha):
    model, base = Net(depth=8), on_meta(Net, depth=2)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    block = model.blocks[3]
    h = torch.randn(5, 16, generator=torch.Generator().manual_seed(1))
    plain = block(h) - h
    with mup.forward_changes(model, base, depth_alpha=alpha) as changes:
        assert changes.changes == [f"8 residual branch(es) in blocks: output x {0.25 ** alpha:.4g} (depth 8 against 2)"]
        assert torch.allclose(block(h) - h, plain * 0.25**alpha, atol=1e-6)  # (x + b) - x rounds at 1e-7
        model(x)
    assert torch.allclose(block(h) - h, plain)  # removed
    groups = mup.param_groups(model, base, lr=1.0, weight_decay=0.1, depth_alpha=alpha)
    lr = {n: g["lr"] for g in groups for n in g["names"]}
    assert lr["embed.weight"] == lr["head.weight"] == 1.0  # outside the blocks: untouched (same width: m = 1)
    assert lr["blocks.5.mlp.fc1.weight"] == pytest.approx(0.25 ** (1 - alpha))  # CompleteP: 1; depth-muP: 1/2
    assert lr["blocks.5.norm.weight"] == pytest.approx(0.25 ** (1 - alpha))
    assert all(g["lr"] * g["weight_decay"] == pytest.approx(0.1) for g in groups)


def test_width_and_depth_together():
    groups = mup.param_groups(Net(d=64, depth=8), on_meta(Net, d=16, depth=2), lr=1.0, depth_alpha=0.5)
    lr = {n: g["lr"] for g in groups for n in g["names"]}
    assert lr["blocks.0.mlp.fc1.weight"] == pytest.approx(0.25 * 0.5)  # hidden: 1/m, times (L0/L)^(1/2)
    assert lr["head.weight"] == pytest.approx(0.25)  # output: 1/m, outside the blocks


def test_errors():
    with pytest.raises(ValueError, match=r"depth_alpha must be a number from 0\.5"):
        mup.param_groups(Net(depth=4), Net(depth=2), lr=1.0, depth_alpha=2)
    with pytest.raises(ValueError, match="AdamW only"):
        mup.param_groups(Net(depth=4), Net(depth=2), lr=1.0, optimizer="sgd", depth_alpha=1)
    with pytest.raises(ValueError, match=r"no residual branch end found in the block lists .*\(blocks: 4 against 2\)"):
        mup.forward_changes(Net(depth=4), Net(depth=2), depth_alpha=1, branches=["*.nothing"])
    assert mup.forward_changes(Net(depth=4), Net(depth=2), depth_alpha=1, branches=["*.mlp.fc2"]).changes


@pytest.mark.slow
def test_gpt2_and_llama_branch_ends():
    tf = need("transformers")
    gpt2 = lambda n: tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=32, n_positions=8, n_embd=16, n_layer=n, n_head=2))  # noqa: E731
    depth = depth_of(gpt2(4), on_meta(gpt2, 2))
    assert depth.branches == tuple(f"transformer.h.{i}.{e}" for i in range(4) for e in ("attn.c_proj", "mlp.c_proj"))
    llama = lambda n: tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,  # noqa: E731
                                                          num_hidden_layers=n, num_attention_heads=2,
                                                          num_key_value_heads=2))
    depth = depth_of(llama(4), on_meta(llama, 2))
    assert len(depth.branches) == 8 and depth.branches[0] == "model.layers.0.self_attn.o_proj"


class WithHeads(Net):
    """Blocks and a list of readout heads, both longer than in the base: only the blocks are a depth stack."""

    def __init__(self, d: int = 16, depth: int = 2, heads: int = 2) -> None:
        super().__init__(d, depth)
        self.heads = nn.ModuleList([nn.Sequential(nn.Linear(d, 3)) for _ in range(heads)])


def test_a_list_without_branch_ends_is_not_a_depth_stack():
    depth = depth_of(WithHeads(depth=4, heads=4), on_meta(WithHeads, depth=2, heads=2))
    assert depth.stacks == ("blocks",)
    groups = mup.param_groups(WithHeads(depth=4, heads=4), on_meta(WithHeads, depth=2, heads=2), lr=1.0,
                              depth_alpha=0.5)  # fmt: skip
    lr = {n: g["lr"] for g in groups for n in g["names"]}
    assert lr["heads.3.0.weight"] == 1.0 and lr["blocks.3.mlp.fc1.weight"] == pytest.approx(0.5**0.5)


def test_a_plain_deeper_mlp_is_not_taken_for_blocks():
    mlp = lambda w, n: nn.Sequential(nn.Linear(8, w), *[nn.Linear(w, w) for _ in range(n)], nn.Linear(w, 10))  # noqa: E731
    with pytest.raises(ValueError, match="has no parameter"):
        mup.roles(mlp(64, 4), mlp(16, 2))


@pytest.mark.slow
def test_a_wider_and_deeper_model_scales_attention_in_every_block():
    tf = need("transformers")

    def gpt(w: int, n: int) -> nn.Module:
        return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=32, n_positions=8, n_embd=w, n_layer=n, n_head=2))

    model = gpt(64, 4)
    mup.forward_changes(model, on_meta(gpt, 16, 2), depth_alpha=0.5)
    assert {round(b.attn.scaling, 6) for b in model.transformer.h} == {round(8**0.5 / 32, 6)}
