"""Built on meta without deferred(): a value a constructor set and re-enactment cannot see is never silent.

Re-enactment runs each module's ``reset_parameters`` and then the model's own init. What a constructor did
to its children's tensors after their resets (timm LeViT's ``bn_weight_init=0``) was not recorded; unless
the model's own init sets such a tensor again, its value is not known to equal eager construction's: a
warning names it, and ``strict=True`` raises before anything changes.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import torchinit as ti
from _thirdparty import need


class ConvNorm(nn.Module):
    """A block whose constructor changes its BatchNorm's weight after the BatchNorm reset itself."""

    def __init__(self, bn_weight_init: float) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.bn = nn.BatchNorm1d(4)
        nn.init.constant_(self.bn.weight, bn_weight_init)


class Net(nn.Module):
    """A model with an init_weights that sets the linear layers only (as timm's do with needs_reset=False)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = ConvNorm(1.0)
        self.b = ConvNorm(0.0)
        self.init_weights(needs_reset=False)

    def init_weights(self, needs_reset: bool = True) -> None:
        for m in self.modules():
            if needs_reset and hasattr(m, "reset_parameters"):
                m.reset_parameters()
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)


def _caught(model: nn.Module, **kwargs) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ti.materialize_(model, **kwargs)
    return [str(w.message) for w in caught]


def test_values_the_model_init_does_not_set_below_a_user_constructor_are_named():
    with torch.device("meta"):
        model = Net()
    with pytest.raises(ValueError, match="not known to equal eager") as err:
        ti.materialize_(model, strict=True)
    assert all(p.is_meta for p in model.parameters())  # raised before anything changed
    for name in ("a.bn.weight", "a.bn.bias", "b.bn.weight", "b.bn.bias"):
        assert name in str(err.value)
    assert "lin.weight" not in str(err.value)  # the model's init sets the linear layers: known
    warned = _caught(model)
    assert any("b.bn.weight" in w and "deferred()" in w for w in warned), warned
    assert bool((model.b.bn.weight == 1).all())  # the reset's value, not the constructor's 0: hence the warning


def test_resets_that_the_model_init_calls_are_resets():
    # re-enactment calls init_weights() as it is (needs_reset=True): it resets the BatchNorms itself, which
    # must not count as the model's init deciding them (the constructor's 0 is lost all the same)
    with torch.device("meta"):
        model = Net()
    with pytest.raises(ValueError, match=r"b\.bn\.weight"):
        ti.materialize_(model, strict=True)


def test_deferred_gives_the_constructor_values_and_passes_strict():
    with ti.deferred():
        model = Net()
    ti.materialize_(model, strict=True)
    assert bool((model.b.bn.weight == 0).all()) and bool((model.a.bn.weight == 1).all())


def test_torch_modules_only_are_known():
    # every constructor above the tensors is torch.nn's own: what their resets give is eager's
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Sequential(nn.LayerNorm(4)))
    assert _caught(model, strict=True) == []


_BN_WEIGHT_INIT_ZERO = {
    "levit_128s": dict(embed_dim=(16, 32, 48), key_dim=8, num_heads=(2, 2, 2), depth=(1, 1, 1)),
    "efficientvit_m0": dict(embed_dim=(16, 32, 48), key_dim=(8, 8, 8), num_heads=(2, 2, 2), depth=(1, 1, 1),
                            window_size=(2, 2, 2)),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(_BN_WEIGHT_INIT_ZERO))
def test_timm_bn_weight_init_zero_is_named(name: str):
    timm = need("timm")

    def build() -> nn.Module:
        return timm.create_model(name, pretrained=False, num_classes=10, img_size=32, **_BN_WEIGHT_INIT_ZERO[name])

    eager = build()
    zeroed = [n for n, p in eager.named_parameters() if n.endswith("bn.weight") and bool((p == 0).all())]
    assert zeroed  # the constructors set these to 0 (bn_weight_init=0)
    with torch.device("meta"):
        model = build()
    with pytest.raises(ValueError, match="not known to equal eager") as err:
        ti.materialize_(model, strict=True)
    listed = str(err.value)
    assert all(f" {n}," in listed or f" {n};" in listed for n in zeroed), zeroed
    warned = " ".join(_caught(model))
    assert all(n in warned for n in zeroed)
    assert not any(p.is_meta for p in model.parameters())


def test_the_resets_are_unwrapped_afterwards():
    # re-enactment notes the resets a timm-style init_weights(needs_reset=True) makes by wrapping them
    with torch.device("meta"):
        model = Net()
    with pytest.raises(ValueError):
        ti.materialize_(model, strict=True)
    _caught(model)
    assert not [m for m in model.modules() if {"reset_parameters", "_reset_parameters"} & set(vars(m))]
    assert type(model.a.bn).reset_parameters is nn.BatchNorm1d.reset_parameters
