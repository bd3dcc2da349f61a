"""muP roles: found by comparing shapes with a base model, on hand-built models with known answers and on real ones."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchinit.mup as mup
from _thirdparty import need
from torchinit.mup import Role


def mlp(width: int, *, tied: bool = False) -> nn.Sequential:
    return nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))


def on_meta(build, *args, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return build(*args, **kwargs)


def test_mlp_roles():
    got = mup.roles(mlp(256), on_meta(mlp, 64))
    assert got == {
        "0.weight": Role("input", 4.0, 1.0, 4.0),
        "0.bias": Role("vector", 4.0),
        "2.weight": Role("hidden", 4.0, 4.0, 4.0),
        "2.bias": Role("vector", 4.0),
        "4.weight": Role("output", 4.0, 4.0, 1.0),
        "4.bias": Role("vector", 1.0),
    }
    assert repr(got["2.weight"]) == "Role('hidden', width_mult=4)"


def test_the_base_itself_is_all_multiplier_one():
    got = mup.roles(mlp(64), mlp(64))
    assert {r.width_mult for r in got.values()} == {1.0}
    assert got["2.weight"].kind == "input"  # nothing grows: every rule is the standard parametrization


def test_delta_tells_the_width_dims_of_a_model_at_the_base_width():
    got = mup.roles(mlp(64), on_meta(mlp, 64), delta=on_meta(mlp, 96))
    assert [got[n].kind for n in ("0.weight", "2.weight", "4.weight")] == ["input", "hidden", "output"]
    assert {r.width_mult for r in got.values()} == {1.0}
    wide = mup.roles(mlp(256), on_meta(mlp, 64), delta=on_meta(mlp, 96))
    assert wide == mup.roles(mlp(256), on_meta(mlp, 64))  # delta names the same dims: the same roles
    with pytest.raises(ValueError, match=r"differs from base in dim 1 .* does not change between base and delta"):
        mup.roles(Uneven(64, 128), on_meta(Uneven, 16, 64), delta=on_meta(Uneven, 16, 96))


class Conv(nn.Module):
    def __init__(self, w: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, w, 3)
        self.body = nn.Conv2d(w, 2 * w, 3, groups=2)
        self.depthwise = nn.Conv2d(2 * w, 2 * w, 3, groups=2 * w, bias=False)
        self.up = nn.ConvTranspose2d(2 * w, w, 2)
        self.norm = nn.BatchNorm2d(w)
        self.head = nn.Linear(w, 10)


def test_conv_layouts():
    got = mup.roles(Conv(48), on_meta(Conv, 16))
    assert got["stem.weight"] == Role("input", 3.0, 1.0, 3.0)
    assert got["body.weight"] == Role("hidden", 3.0, 3.0, 3.0)  # (2w, w/2, k, k): in/g grows with w
    assert got["depthwise.weight"] == Role("input", 3.0, 1.0, 3.0)  # (2w, 1, k, k): one input per group
    assert got["up.weight"] == Role("hidden", 3.0, 3.0, 3.0)  # transposed: (in, out, k, k)
    assert got["norm.weight"] == Role("vector", 3.0)
    assert got["head.weight"] == Role("output", 3.0, 3.0, 1.0)


class Embedded(nn.Module):
    def __init__(self, d: int, *, tied: bool = True) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, d)
        self.pos = nn.Parameter(torch.zeros(1, 7, d))
        self.mix = nn.Parameter(torch.zeros(d, 2 * d))  # a raw matrix: torch's convention, dim 1 the input
        self.head = nn.Linear(d, 100, bias=False)
        if tied:
            self.head.weight = self.embed.weight


def test_embeddings_raw_parameters_and_ties():
    got = mup.roles(Embedded(64), on_meta(Embedded, 16))
    assert list(got) == [n for n, _ in Embedded(8).named_parameters()] == ["pos", "mix", "embed.weight"]  # tied: once
    assert got["embed.weight"] == Role("input", 4.0, 1.0, 4.0)  # Embedding (num, dim): num is the input
    assert got["pos"] == Role("input", 4.0, 1.0, 4.0)  # (1, n, d): d grows, as an embedding's dim
    assert got["mix"] == Role("hidden", 4.0, 4.0, 4.0)
    untied = mup.roles(Embedded(64, tied=False), on_meta(Embedded, 16, tied=False))
    assert untied["head.weight"] == Role("output", 4.0, 4.0, 1.0)


class Uneven(nn.Module):
    def __init__(self, d: int, f: int) -> None:
        super().__init__()
        self.up = nn.Linear(d, f)


def test_uneven_growth_keeps_both_multipliers():
    got = mup.roles(Uneven(64, 128), on_meta(Uneven, 16, 64))
    assert got["up.weight"] == Role("hidden", 4.0, 4.0, 2.0)
    assert got["up.bias"] == Role("vector", 2.0)


class Cube(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.t = nn.Parameter(torch.zeros(d, d, d))


class Kernel(nn.Module):
    def __init__(self, k: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, k)


@pytest.mark.parametrize(
    "model, base, match",
    [
        (mlp(64), nn.Sequential(nn.Linear(8, 16)), r"base has no parameter '2\.bias'"),
        (nn.Sequential(nn.Linear(8, 16)), mlp(16), r"model has no parameter '2\.bias' that base has"),
        (mlp(16), mlp(64), r"0\.weight is smaller in dim 0 \(16\) than in base \(64\)"),
        (Kernel(5), Kernel(3), r"conv\.weight grows in a kernel dim"),
        (Cube(8), Cube(4), r"t grows in 3 dims"),
        (nn.Linear(8, 8), nn.Bilinear(8, 8, 8), r"base has no parameter|different number of dims"),
    ],
    ids=["missing", "extra", "shrinks", "kernel", "three-dims", "other-architecture"],
)
def test_a_base_that_is_not_the_same_architecture_is_a_one_line_error(model, base, match):
    with pytest.raises(ValueError, match=match) as err:
        mup.roles(model, base)
    assert "\n" not in str(err.value)


def test_different_number_of_dims():
    class A(nn.Module):
        def __init__(self, shape):
            super().__init__()
            self.p = nn.Parameter(torch.zeros(shape))

    with pytest.raises(ValueError, match=r"p has shape \(4, 4\) in model and \(4,\) in base: a different number"):
        mup.roles(A((4, 4)), A((4,)))


@pytest.mark.parametrize("bad", [None, "mlp", torch.zeros(3)])
def test_arguments_that_are_not_modules(bad):
    with pytest.raises(TypeError, match=r"model must be an nn\.Module"):
        mup.roles(bad, mlp(8))
    with pytest.raises(TypeError, match=r"base must be an nn\.Module"):
        mup.roles(mlp(8), bad)


def test_lazy_modules_are_refused():
    with pytest.raises(TypeError, match="lazy parameters"):
        mup.roles(nn.Sequential(nn.LazyLinear(4)), nn.Sequential(nn.Linear(2, 4)))


# ---------------------------------------------------------------- real models (small random configs, no downloads)


def _gpt2(d: int, tied: bool = True) -> nn.Module:
    tf = need("transformers")
    cfg = tf.GPT2Config(vocab_size=64, n_positions=16, n_embd=d, n_layer=2, n_head=2, tie_word_embeddings=tied)
    return tf.GPT2LMHeadModel(cfg)


def _llama(d: int) -> nn.Module:
    tf = need("transformers")
    cfg = tf.LlamaConfig(vocab_size=64, hidden_size=d, intermediate_size=2 * d, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16,
                         tie_word_embeddings=False)  # fmt: skip
    return tf.LlamaForCausalLM(cfg)


def _vit(d: int) -> nn.Module:
    return need("timm").create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32,
                                     patch_size=8, depth=2, embed_dim=d, num_heads=2)  # fmt: skip


def _kinds(got: dict[str, Role]) -> dict[str, str]:
    return {n: r.kind for n, r in got.items()}


@pytest.mark.slow
def test_gpt2_roles():
    got = mup.roles(_gpt2(64), on_meta(_gpt2, 16))
    kinds = _kinds(got)
    assert kinds["transformer.wte.weight"] == "input" and kinds["transformer.wpe.weight"] == "input"
    assert "lm_head.weight" not in got  # tied to wte: one role, the embedding's
    assert kinds["transformer.h.0.attn.c_attn.weight"] == "hidden"  # Conv1D (in, out): dim 0 is the input
    assert got["transformer.h.0.mlp.c_fc.weight"] == Role("hidden", 4.0, 4.0, 4.0)
    assert all(kinds[n] == "vector" for n in got if "ln_" in n or n.endswith(".bias"))
    untied = _kinds(mup.roles(_gpt2(64, tied=False), on_meta(_gpt2, 16, tied=False)))
    assert untied["lm_head.weight"] == "output"


@pytest.mark.slow
def test_llama_roles():
    got = mup.roles(_llama(64), on_meta(_llama, 16))
    kinds = _kinds(got)
    assert kinds["model.embed_tokens.weight"] == "input" and kinds["lm_head.weight"] == "output"
    assert got["model.layers.0.mlp.up_proj.weight"] == Role("hidden", 4.0, 4.0, 4.0)
    assert kinds["model.layers.0.self_attn.q_proj.weight"] == "hidden"
    assert all(kinds[n] == "vector" for n in got if "norm" in n)


@pytest.mark.slow
def test_timm_vit_roles():
    got = mup.roles(_vit(64), on_meta(_vit, 16))
    kinds = _kinds(got)
    assert kinds["patch_embed.proj.weight"] == "input"  # (d, 3, p, p)
    assert kinds["cls_token"] == "input" and kinds["pos_embed"] == "input"
    assert kinds["head.weight"] == "output" and kinds["head.bias"] == "vector"
    assert kinds["blocks.0.attn.qkv.weight"] == "hidden" and kinds["blocks.0.mlp.fc1.weight"] == "hidden"
    assert all(kinds[n] == "vector" for n in got if "norm" in n)


def test_embedding_bag_is_an_embedding():
    bag = lambda w: nn.Sequential(nn.EmbeddingBag(100, w), nn.Linear(w, 3))  # noqa: E731
    assert mup.roles(bag(256), on_meta(bag, 64))["0.weight"] == Role("input", 4.0, 1.0, 4.0)


def test_grouped_transposed_conv_whose_groups_grow():
    """ConvTranspose's dim 0 holds every group's inputs: with groups = width, each group's fan-in is fixed."""
    net = lambda w: nn.Sequential(nn.Conv2d(3, w, 3), nn.ConvTranspose2d(w, w, 4, stride=2, groups=w),  # noqa: E731
                                  nn.ConvTranspose2d(w, w, 2), nn.Conv2d(w, 3, 1))
    got = mup.roles(net(256), on_meta(net, 64))
    assert got["1.weight"] == Role("input", 4.0, 1.0, 4.0)  # depthwise, as the depthwise Conv2d
    assert got["2.weight"] == Role("hidden", 4.0, 4.0, 4.0)  # groups 1: dim 0 is the fan-in
    both = mup.roles(nn.ConvTranspose2d(32, 32, 3, groups=4), nn.ConvTranspose2d(8, 8, 3, groups=2))
    assert both["weight"] == Role("hidden", 2.0, 2.0, 4.0)  # a group's fan-in: 8 against 4; outputs: 32 against 8
    middle = lambda i, o, g: nn.Sequential(nn.Conv2d(3, i, 1), nn.ConvTranspose2d(i, o, 3, groups=g),  # noqa: E731
                                           nn.Conv2d(o, 2, 1))
    assert mup.roles(middle(128, 64, 4), middle(32, 32, 2))["1.weight"] == Role("hidden", 2.0, 2.0, 2.0)


class HeadFirst(nn.Module):
    """A tied embedding whose readout registers the weight first."""

    def __init__(self, w: int) -> None:
        super().__init__()
        self.head = nn.Linear(w, 50, bias=False)
        self.embed = nn.Embedding(50, w)
        self.head.weight = self.embed.weight


def test_a_tied_weight_is_input_whichever_registration_comes_first():
    got = mup.roles(HeadFirst(64), on_meta(HeadFirst, 16))
    assert list(got) == ["head.weight"] and got["head.weight"] == Role("input", 4.0, 1.0, 4.0)
    changes = mup.forward_changes(HeadFirst(64), on_meta(HeadFirst, 16))
    assert changes.changes == ["head: tied readout, input / 4"]
