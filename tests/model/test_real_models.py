"""Real models from transformers, timm, torchvision and torch.nn, built deferred or on meta, then materialized.

Every model is small (hidden 32, two layers, 32x32 images) and random: nothing is downloaded.
For each model built under ``deferred()``: ``materialize_`` gives what eager construction
gives (``_eager.differences``), warns nothing, reports nothing unknown, and the model runs
to finite, non-constant outputs. Models built on meta without ``deferred()`` (a device
context, ``.to("meta")``, accelerate) are checked for what actually happens: eager values,
an error that changes nothing, or (a documented limit) a complete but different init.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from test_real_models_recording import run_rwkv, run_swinv2, rwkv, swinv2
from torch import nn

import torchinit as ti
from _eager import differences, state
from _thirdparty import need
from conftest import gen

pytestmark = pytest.mark.slow  # transformers, timm and torchvision models: about 10 s

VOCAB = 96


# ---------------------------------------------------------------- models


def _decoder_lm(model: str, config: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        tf = need("transformers")
        cfg = getattr(tf, config)(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                  bos_token_id=0, eos_token_id=1, pad_token_id=2)  # fmt: skip
        return getattr(tf, model)(cfg)

    return build


def gpt2() -> nn.Module:
    tf = need("transformers")
    cfg = tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                        bos_token_id=0, eos_token_id=1)  # fmt: skip
    return tf.GPT2LMHeadModel(cfg)


def bert() -> nn.Module:
    tf = need("transformers")
    cfg = tf.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, pad_token_id=0)  # fmt: skip
    return tf.BertForMaskedLM(cfg)


def t5() -> nn.Module:
    tf = need("transformers")
    cfg = tf.T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)  # fmt: skip
    return tf.T5ForConditionalGeneration(cfg)


def hf_vit() -> nn.Module:
    tf = need("transformers")
    cfg = tf.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=64, num_labels=10)  # fmt: skip
    return tf.ViTForImageClassification(cfg)


def xlnet() -> nn.Module:
    tf = need("transformers")
    return tf.XLNetLMHeadModel(tf.XLNetConfig(vocab_size=VOCAB, d_model=32, n_layer=2, n_head=4, d_inner=64))


def wav2vec2_pretraining() -> nn.Module:
    tf = need("transformers")
    cfg = tf.Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                            conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16,
                            num_conv_pos_embedding_groups=2, codevector_dim=16, proj_codevector_dim=16,
                            num_codevectors_per_group=8, num_codevector_groups=2)  # fmt: skip
    return tf.Wav2Vec2ForPreTraining(cfg)


def _timm(name: str, **kwargs) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        return need("timm").create_model(name, pretrained=False, num_classes=10, **kwargs)

    return build


_VIT = dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=4)


def _torchvision(name: str, **kwargs) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        return getattr(need("torchvision.models"), name)(weights=None, num_classes=10, **kwargs)

    return build


def transformer() -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # enable_nested_tensor without batch_first
        return nn.Transformer(d_model=16, nhead=2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=32)


def lstm() -> nn.Module:
    return nn.LSTM(8, 16, num_layers=2, proj_size=4)


class WeightNormed(nn.Module):
    """torch.nn.utils.parametrizations.weight_norm on a Linear (dim 0) and a Conv1d (dim None: one norm)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.utils.parametrizations.weight_norm(nn.Linear(8, 16))
        self.conv = nn.utils.parametrizations.weight_norm(nn.Conv1d(16, 4, 3), dim=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.relu(self.lin(x)).transpose(1, 2))


class OldWeightNormed(nn.Module):
    """The deprecated torch.nn.utils.weight_norm (weight_g, weight_v)."""

    def __init__(self) -> None:
        super().__init__()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self.lin = nn.utils.weight_norm(nn.Linear(8, 16))
        self.out = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.lin(x)))


def embedding() -> nn.Module:
    return nn.Sequential(nn.Embedding(20, 8, padding_idx=3), nn.Linear(8, 4))


# ---------------------------------------------------------------- inputs and outputs


def _tokens(high: int = VOCAB) -> torch.Tensor:
    return torch.randint(3, high, (2, 8), generator=gen(0))


def _image() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=gen(0))


def _seq(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(0))


def run_lm(m: nn.Module) -> torch.Tensor:
    return m(input_ids=_tokens()).logits


def run_t5(m: nn.Module) -> torch.Tensor:
    return m(input_ids=_tokens(), decoder_input_ids=_tokens()[:, :5]).logits


def run_hf_image(m: nn.Module) -> torch.Tensor:
    return m(pixel_values=_image()).logits


def run_image(m: nn.Module) -> torch.Tensor:
    return m(_image())


def run_transformer(m: nn.Module) -> torch.Tensor:
    return m(_seq(6, 2, 16), _seq(5, 2, 16))


def run_lstm(m: nn.Module) -> torch.Tensor:
    return m(_seq(5, 2, 8))[0]


def run_seq(m: nn.Module) -> torch.Tensor:
    return m(_seq(2, 5, 8))


def run_audio(m: nn.Module) -> torch.Tensor:
    return m(input_values=_seq(2, 400)).projected_states


def run_embedding(m: nn.Module) -> torch.Tensor:
    tokens = torch.tensor([[3, 1, 5, 3, 19], [0, 3, 7, 8, 2]])  # 3 is the padding index
    return m(tokens)


# ---------------------------------------------------------------- the table

# What a model built on meta WITHOUT deferred() gets from materialize_(strict=True) (docs/materialize.md):
EAGER = "eager"  # the values of eager construction (differences == []), and strict=True passes
UNKNOWN = "unknown"  # a ValueError naming the tensors no init code recomputes, raised before anything changes
# strict=True raises, naming every tensor whose value a module's reset_parameters decides below a constructor
# that is not torch.nn's own (the model's own init does not set it); without strict a warning names them.
# Either may equal eager's (timm's ViT: its blocks change no norm) or differ (a constructor's init loop).
UNVERIFIED = "unverified"

@dataclass(frozen=True)
class Spec:
    id: str
    build: Callable[[], nn.Module]
    run: Callable[[nn.Module], torch.Tensor]
    meta: str | None = None  # None: not built on meta here (too slow for what it would add)
    unknown: tuple[str, ...] = ()  # for meta == UNKNOWN: substrings of the names the error must list
    # parameters a legacy constructor (torch.FloatTensor) made real under torch.device("meta"): the model's own init
    # sets them, and a warning names them as replaced (substrings of their names)
    real: tuple[str, ...] = ()


SPECS = [
    # transformers
    Spec("llama", _decoder_lm("LlamaForCausalLM", "LlamaConfig"), run_lm, EAGER),
    Spec("mistral", _decoder_lm("MistralForCausalLM", "MistralConfig"), run_lm, EAGER),
    Spec("qwen2", _decoder_lm("Qwen2ForCausalLM", "Qwen2Config"), run_lm, EAGER),
    Spec("gpt2", gpt2, run_lm, EAGER),
    Spec("bert", bert, run_lm, EAGER),
    Spec("t5", t5, run_t5, EAGER),
    # ViT's _init_weights uses torch.nn.init.trunc_normal_, which returns at once on meta: the re-enactment
    # records it whole, as deferred() does (test_reenactment_records_init_functions_that_skip_meta).
    Spec("hf_vit", hf_vit, run_hf_image, EAGER),
    # tables made by torch.tensor(..., device=p.device) and time_first from ones_like of an empty parameter
    Spec("rwkv", rwkv, run_rwkv, EAGER),
    # Parameters made with torch.FloatTensor(...): real (uninitialized) under torch.device("meta")
    Spec("xlnet", xlnet, run_lm, EAGER, real=("rel_attn.", "mask_emb")),
    # and the positional conv's weight norm (original1: the reset's value, below a transformers constructor)
    Spec("wav2vec2_pretraining", wav2vec2_pretraining, run_audio, UNVERIFIED,
         real=("quantizer.codevectors", "masked_spec_embed")),
    # timm
    Spec("timm_convnext_atto", _timm("convnext_atto", depths=(1, 1, 1, 1), dims=(8, 16, 32, 64)), run_image,
         UNKNOWN, ("gamma",)),  # LayerScale constants (ls_init_value): computed by the constructor only
    # timm's init_weights(needs_reset=False), as its constructors call it, leaves the norms to their resets
    Spec("timm_vit_tiny", _timm("vit_tiny_patch16_224", **_VIT), run_image, UNVERIFIED),
    Spec("timm_vit_layerscale", _timm("vit_tiny_patch16_224", init_values=1e-5, **_VIT), run_image, UNVERIFIED),
    Spec("timm_resnet18_narrow", _timm("resnet18", stem_width=16, channels=(16, 32, 64, 128)), run_image,
         UNVERIFIED),
    # timm's own small EfficientNet (conv, edge and inverted residual blocks, squeeze-excite); efficientnet_b0
    # (4M parameters) behaves the same but costs seconds. On meta: its init loop runs in the constructor.
    Spec("timm_test_efficientnet", _timm("test_efficientnet"), run_image, UNVERIFIED),
    Spec("timm_swin", _timm("swin_tiny_patch4_window7_224", img_size=32, window_size=4, embed_dim=16, depths=(1, 1),
                            num_heads=(2, 4)), run_image, UNVERIFIED),
    # relative-position tables built with device=proj.weight.device and copied into real buffers
    Spec("timm_swinv2", swinv2, run_swinv2),
    # BatchNorm weights set to 0 in the blocks' constructors (bn_weight_init=0); re-enactment gives 1: named
    Spec("timm_levit", _timm("levit_128s", img_size=32, embed_dim=(16, 32, 48), key_dim=8, num_heads=(2, 2, 2),
                             depth=(1, 1, 1)), run_image, UNVERIFIED),
    # the same bn_weight_init=0 in EfficientViT (MSRA)'s blocks (19 BatchNorm weights here)
    Spec("timm_efficientvit_m0", _timm("efficientvit_m0", img_size=32, embed_dim=(16, 32, 48), key_dim=(8, 8, 8),
                                       num_heads=(2, 2, 2), depth=(1, 1, 1), window_size=(2, 2, 2)), run_image,
         UNVERIFIED),
    # torchvision
    Spec("tv_resnet18", _torchvision("resnet18"), run_image),
    Spec("tv_mobilenet_v2", _torchvision("mobilenet_v2", width_mult=0.25), run_image, UNVERIFIED),
    # torch.nn
    # nn.Transformer's own _reset_parameters (xavier_uniform_ on every matrix) is re-enacted although the
    # Transformer holds no parameter itself (test_reenactment_runs_transformer_reset).
    Spec("nn_transformer", transformer, run_transformer, EAGER),
    Spec("nn_lstm_proj", lstm, run_lstm, EAGER),
    # weight_norm was initialized before it was reparametrized: the re-enactment resets a plain stand-in and
    # gives the reparametrization its inverse (src/torchinit/model/construction.py).
    # A user's class with no init method: its constructor is not known, so strict=True names its tensors.
    Spec("weight_norm", WeightNormed, run_seq, UNVERIFIED),
    # The deprecated weight_norm: replay once failed on the meta tensor whose shape the stand-in copied
    # (test_reenactment_of_old_weight_norm).
    Spec("old_weight_norm", OldWeightNormed, run_seq, UNVERIFIED),
    Spec("embedding_padding", embedding, run_embedding, EAGER),
]  # fmt: skip

META_SPECS = [s for s in SPECS if s.meta is not None]
HOWS = ["device", "to", "accelerate"]


def params(specs: list[Spec]) -> list:
    return [pytest.param(s, id=s.id) for s in specs]


# ---------------------------------------------------------------- helpers


def build_deferred(spec: Spec) -> nn.Module:
    with ti.deferred():
        return spec.build()


def _weight_norm_on_meta_problem() -> str | None:
    """Why torch cannot build the deprecated weight norm on meta itself (torch 2.1 has no meta kernel for it)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            nn.utils.weight_norm(nn.Linear(2, 2, device="meta"))
    except (NotImplementedError, TypeError) as err:
        return f"torch {torch.__version__} cannot build nn.utils.weight_norm on meta (eagerly, without torchinit): " \
               f"{type(err).__name__}: {str(err).splitlines()[0][:100]}"
    return None


WEIGHT_NORM_ON_META = _weight_norm_on_meta_problem()


def build_meta(spec: Spec, how: str) -> nn.Module:
    if spec.id == "old_weight_norm" and how != "to" and WEIGHT_NORM_ON_META is not None:
        pytest.skip(WEIGHT_NORM_ON_META)
    if how == "device":
        with torch.device("meta"):
            model = spec.build()
        with torch.no_grad():  # a legacy constructor's real parameters: uninitialized memory, made deterministic
            for p in model.parameters():
                if not p.is_meta:
                    p.fill_(1e35)
        return model
    if how == "to":
        return spec.build().to("meta")
    accelerate = need("accelerate")
    with accelerate.init_empty_weights():
        return spec.build()


def materialize_recording(model: nn.Module, **kwargs) -> tuple[ti.InitReport, list[str]]:
    """materialize_ with its own warnings (messages that start with "materialize_") caught and returned."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = ti.materialize_(model, **kwargs)
    return report, [str(w.message) for w in caught if str(w.message).startswith("materialize_")]


def meta_names(model: nn.Module) -> list[str]:
    return [n for n, t in state(model).items() if t.is_meta]


def snapshot(model: nn.Module) -> dict[str, tuple[int, bool]]:
    """Which object is registered under each name, and whether it is on meta (not detached: detach makes new ones)."""
    pairs = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    return {n: (id(t), t.is_meta) for n, t in pairs}


def check_runs(spec: Spec, model: nn.Module) -> None:
    """A forward pass on a tiny input: finite and not constant."""
    model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = spec.run(model)
    assert bool(torch.isfinite(out).all()), f"{spec.id}: non-finite outputs"
    assert float(out.float().std()) > 0, f"{spec.id}: constant outputs"


# ---------------------------------------------------------------- deferred(): as eager construction


@pytest.mark.parametrize("spec", params(SPECS))
def test_deferred_model_materializes_as_eager_and_runs(spec):
    model = build_deferred(spec)
    report, warned = materialize_recording(model)
    assert warned == []
    assert [r.name for r in report if r.rule == "unknown"] == []
    assert meta_names(model) == []
    assert differences(spec.build, model) == []
    check_runs(spec, model)


@pytest.mark.parametrize("spec", params(SPECS))
def test_materialize_is_reproducible(spec):
    def values(seed_global: int | None = None, generator: torch.Generator | None = None):
        model = build_deferred(spec)
        if seed_global is not None:
            torch.manual_seed(seed_global)
        ti.materialize_(model, generator=generator)
        return {k: v.clone() for k, v in state(model).items()}

    def same(a, b) -> bool:
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    first = values(generator=gen(0))
    assert same(first, values(generator=gen(0)))
    assert not same(first, values(generator=gen(1)))  # the generator decides the values
    first = values(seed_global=0)
    assert same(first, values(seed_global=0))
    assert not same(first, values(seed_global=1))


# ---------------------------------------------------------------- built on meta without deferred()


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("spec", params(META_SPECS))
def test_meta_built_model(spec, how):
    model = build_meta(spec, how)
    before = snapshot(model)
    if spec.meta == EAGER:
        report, warned = materialize_recording(model, strict=True)
        _check_replaced(spec, how, warned)
        assert [r.name for r in report if r.rule == "unknown"] == []
        assert {r.rule for r in report} == {"reset_parameters"}
        assert meta_names(model) == []
        check_runs(spec, model)
        assert differences(spec.build, model) == []
        return
    with pytest.raises(ValueError, match=r"^strict: ") as err, warnings.catch_warnings(record=True):
        ti.materialize_(model, strict=True)  # (a class with no init method is also warned about)
    assert snapshot(model) == before  # raised before changing anything
    message = str(err.value)
    if spec.meta == UNVERIFIED:
        assert "not known to equal eager construction's" in message, message
    if spec.meta == UNKNOWN:
        listed = re.search(r"uninitialized\): (.*?); ", message)
        assert listed, message
        named = listed.group(1).split(", ")
        assert named and all(any(s in n for s in spec.unknown) for n in named), named
    # without strict: warnings name every tensor whose value is not known, and nothing stays on meta
    report, warned = materialize_recording(model)
    warned = _check_replaced(spec, how, warned)
    assert meta_names(model) == []
    if spec.meta == UNKNOWN:
        for n in named:
            assert bool((model.get_parameter(n) == 0).all()), n
            assert any(n in w and "set to zero" in w for w in warned), (n, warned)
    check_runs(spec, model)
    # the contract: every tensor that differs from eager construction is named in the strict error and a warning
    differing = [line.split(":")[0] for line in differences(spec.build, model)]
    assert all(_named(n, message) and any(_named(n, w) for w in warned) for n in differing), (differing, warned)


def _check_replaced(spec: Spec, how: str, warned: list[str]) -> list[str]:
    """The warnings but the one that names the real parameters replaced (only a device context leaves them real:
    ``.to("meta")`` and accelerate make every parameter meta); it names exactly those of ``spec.real``."""
    replaced = [w for w in warned if "were real, not meta" in w]
    rest = [w for w in warned if w not in replaced]
    if spec.meta == EAGER:
        assert rest == []
    if not (spec.real and how == "device"):
        assert replaced == []
        return rest
    assert len(replaced) == 1, warned
    listed = replaced[0].split("deferred(): ", 1)[1].split(" were real")[0].split(", ")
    assert listed and all(any(s in n for s in spec.real) for n in listed), listed
    assert all(any(s in n for n in listed) for s in spec.real), listed
    return rest


def _named(name: str, text: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(name)}(?![\w.])", text) is not None


# ---------------------------------------------------------------- minimal reproducers of the src bugs above


def test_reenactment_records_init_functions_that_skip_meta():
    # Regression: torch.nn.init.trunc_normal_/orthogonal_ return at once on meta; deferred() records them whole,
    # and so must materialize_'s re-enactment of a meta-built model, or their targets are "unknown".
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.p = nn.Parameter(torch.empty(64, 64))
            self.q = nn.Parameter(torch.empty(64, 64))
            self.reset_parameters()

        def reset_parameters(self) -> None:
            nn.init.trunc_normal_(self.p, std=0.02)
            nn.init.orthogonal_(self.q)

    with torch.device("meta"):
        model = M()
    ti.materialize_(model, strict=True)
    assert float(model.p.detach().std()) == pytest.approx(0.02, rel=0.1)
    assert torch.allclose(model.q.detach() @ model.q.detach().T, torch.eye(64), atol=1e-4)


def test_reenactment_runs_transformer_reset():
    # Regression: nn.Transformer.__init__ ends with self._reset_parameters() (xavier_uniform_ on every matrix)
    # although the Transformer holds no parameter itself; without it the linear layers would keep
    # Linear.reset_parameters (std 1/sqrt(3 fan_in)) instead of xavier (sqrt(2/(fan_in+fan_out))).
    with torch.device("meta"):
        model = transformer()
    ti.materialize_(model, strict=True)
    w = model.encoder.layers[0].linear1.weight  # 32 x 16
    assert float(w.detach().std()) == pytest.approx((2 / (16 + 32)) ** 0.5, rel=0.1)


def test_reenactment_of_old_weight_norm():
    # Regression: a module built with the deprecated torch.nn.utils.weight_norm under torch.device("meta") (or
    # accelerate) gave a KeyError from Replay.tensor: the stand-in's empty_like read a meta tensor from outside
    # the recording. Its plain ``weight`` attribute must be real afterwards, as eagerly.
    if WEIGHT_NORM_ON_META is not None:
        pytest.skip(WEIGHT_NORM_ON_META)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        with torch.device("meta"):
            layer = nn.utils.weight_norm(nn.Linear(8, 16))
    ti.materialize_(layer, strict=True)
    assert meta_names(layer) == []
    assert torch.allclose(layer.weight_g.detach().flatten(), layer.weight_v.detach().norm(dim=1))
    assert not layer.weight.is_meta and torch.allclose(layer.weight, layer.weight_v)  # the computed attribute
