"""Built under torch.device("meta"): parameters a legacy constructor made real are never silently garbage.

``torch.FloatTensor(n)`` (and ``torch.Tensor(n)``) ignore the device context: the parameter is real and its
memory was never written (transformers' XLNet ``rel_attn.*`` and ``mask_emb``, Wav2Vec2's ``codevectors``).
``materialize_`` treats a real parameter of a model built on meta whose values no weight can hold (non-finite,
or beyond 1e30) as construction's: where the model's own init sets it, it gets eager's value (a warning says it
was replaced); where nothing does, it is kept, a warning names it, and ``strict=True`` raises before anything
changes. Real parameters with plausible values (loaded ones) are left as they are. The tests put values no weight
has into the legacy parameters, as uninitialized memory often holds, so that they do not depend on what the
allocator hands out.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import torchinit as ti
from _thirdparty import need


class Legacy(nn.Module):
    """A parameter from a legacy constructor that the model's init sets, and one that nothing sets."""

    def __init__(self, orphan: bool = False) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.v = nn.Parameter(torch.FloatTensor(4, 3))
        if orphan:
            self.orphan = nn.Parameter(torch.FloatTensor(5))
        self.init_weights()

    def init_weights(self) -> None:
        nn.init.constant_(self.v, 0.5)
        nn.init.constant_(self.lin.weight, 0.25)
        nn.init.zeros_(self.lin.bias)


def _caught(model: nn.Module, **kwargs) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ti.materialize_(model, **kwargs)
    return [str(w.message) for w in caught]


def test_legacy_constructor_parameters_are_real_under_a_meta_device_context():
    with torch.device("meta"):
        model = Legacy()
    assert model.lin.weight.is_meta and not model.v.is_meta  # what the rest of this file is about


def test_a_real_parameter_the_model_init_sets_gets_eager_value():
    with torch.device("meta"):
        model = Legacy()
    with torch.no_grad():
        model.v.fill_(1e35)  # what uninitialized memory may hold
    before = model.v
    warned = _caught(model, strict=True)
    assert torch.equal(model.v.detach(), torch.full((4, 3), 0.5))  # eager's value
    assert model.v is not before and isinstance(model.v, nn.Parameter) and model.v.requires_grad
    assert len(warned) == 1 and "v were real, not meta" in warned[0] and "replaced" in warned[0], warned
    assert not any(p.is_meta for p in model.parameters())


def test_a_real_parameter_nothing_sets_is_named_and_strict_raises():
    with torch.device("meta"):
        model = Legacy(orphan=True)
    orphan = model.orphan
    with torch.no_grad():
        orphan.fill_(1e35)
        model.v.fill_(1e35)
    with pytest.raises(ValueError, match=r"real in a model built on meta .*: orphan") as err, \
            warnings.catch_warnings(record=True):
        ti.materialize_(model, strict=True)
    assert " v," not in str(err.value)  # the init sets v: known
    assert model.lin.weight.is_meta and model.orphan is orphan  # raised before anything changed
    warned = _caught(model)
    assert any("orphan were real, not meta" in w and "kept" in w for w in warned), warned
    assert model.orphan is orphan and bool((orphan == 1e35).all())  # kept as it is, never zeroed silently


def test_a_rule_covers_a_real_parameter_too():
    with torch.device("meta"):
        model = Legacy(orphan=True)
    _uninitialized(model)
    warned = _caught(model, policy=ti.Policy([("orphan", ti.Constant(2.0))]), strict=True)
    assert torch.equal(model.orphan.detach(), torch.full((5,), 2.0))
    assert not any("orphan" in w and "kept" in w for w in warned), warned


def _uninitialized(model: nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            if not p.is_meta:
                p.fill_(float("nan"))


@pytest.mark.parametrize("strict", [True, False])
def test_loaded_real_parameters_stay_as_they_are(strict):
    source = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    model[0].load_state_dict(source[0].state_dict(), assign=True)
    warned = _caught(model, strict=strict, seed=0)
    assert torch.equal(model[0].weight, source[0].weight) and torch.equal(model[0].bias, source[0].bias)
    assert not model[1].weight.is_meta and not any("were real" in w for w in warned), warned


def test_deferred_is_unaffected():
    with ti.deferred():
        model = Legacy()
    assert _caught(model, strict=True) == []  # recorded: nothing real, nothing to replace
    assert torch.equal(model.v.detach(), torch.full((4, 3), 0.5))


@pytest.mark.slow
def test_xlnet_rel_attn_gets_eager_values():
    tf = need("transformers")
    with torch.device("meta"):
        model = tf.XLNetLMHeadModel(tf.XLNetConfig(vocab_size=96, d_model=32, n_layer=2, n_head=4, d_inner=64))
    _uninitialized(model)
    warned = _caught(model, strict=True)
    assert len(warned) == 1 and "transformer.layer.0.rel_attn.v" in warned[0], warned
    v = model.transformer.layer[0].rel_attn.v.detach()
    assert float(v.abs().max()) < 0.02 * 6 and 0.01 < float(v.std()) < 0.03  # initializer_range 0.02
    logits = model(input_ids=torch.randint(3, 96, (2, 8), generator=torch.Generator().manual_seed(0))).logits
    assert bool(torch.isfinite(logits).all())


@pytest.mark.slow
def test_wav2vec2_codevectors_get_eager_values():
    tf = need("transformers")
    cfg = tf.Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                            conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16,
                            num_conv_pos_embedding_groups=2, codevector_dim=16, proj_codevector_dim=16,
                            num_codevectors_per_group=8, num_codevector_groups=2)  # fmt: skip
    with torch.device("meta"):
        model = tf.Wav2Vec2ForPreTraining(cfg)
    _uninitialized(model)
    warned = _caught(model)
    assert any("quantizer.codevectors" in w and "were real, not meta" in w for w in warned), warned
    c = model.quantizer.codevectors.detach()
    assert float(c.min()) >= 0 and float(c.max()) < 1  # eager: U[0, 1)
    assert float((c == 0).float().mean()) < 0.05
    # n = 128 values of U[0, 1): the mean is within 6 standard errors of 1/2
    assert abs(float(c.mean()) - 0.5) < 6 * (1 / 12 / c.numel()) ** 0.5


@pytest.mark.parametrize("strict", [True, False])
def test_plausible_unwritten_real_parameters_are_named_and_kept(strict):
    """A legacy constructor's memory that looks like weights cannot be told from values loaded without a copy: both
    are kept, and a warning says which, strict or not; a parameter written in place (load_state_dict) is not named."""
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    plausible = torch.full((4, 4), 0.25)  # what a fresh page or an old weight could hold
    model[0].weight = nn.Parameter(plausible)  # made, never written in place: _version 0
    model[0].bias = nn.Parameter(torch.zeros(4))
    with torch.no_grad():
        model[0].bias.add_(0.5)  # written in place: not named
    assert model[0].weight._version == 0 and model[0].bias._version > 0
    warned = _caught(model, strict=strict, seed=0)
    named = [w for w in warned if "nothing wrote them in place" in w]
    assert len(named) == 1 and "0.weight" in named[0] and "0.bias" not in named[0], warned
    assert "cannot tell from loaded values" in named[0]
    assert torch.equal(model[0].weight.detach(), torch.full((4, 4), 0.25))
    assert torch.equal(model[0].bias.detach(), torch.full((4,), 0.5))


def test_values_materialize_gave_are_not_named_as_unwritten():
    """A submodule materialized first holds torchinit's values (a zero it gave has version 0): materializing the
    rest names none of them."""

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.gamma = nn.Parameter(torch.empty(4))

    class Root(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blk = Block()
            self.head = nn.Linear(4, 2)

    with torch.device("meta"):
        model = Root()
    _caught(model.blk, seed=0)
    warned = _caught(model, seed=0)
    assert not [w for w in warned if "nothing wrote them in place" in w], warned
