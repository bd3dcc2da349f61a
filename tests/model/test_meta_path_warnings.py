"""Replayed calls warn as their originals did: a library's torch.nn.init call gives no torchinit warning.

torch's ``trunc_normal_(std=0.02)`` with the default absolute bounds ``a=-2, b=2`` truncates nothing and
says nothing; torchinit's own ``trunc_normal_`` warns about it, but only for a user's direct call. A model
whose init calls torch's function (transformers' DINOv2) is built under ``deferred()`` and materialized with
``seed=``, where every recorded ``trunc_normal_`` runs as torchinit's keyed twin: no warning at all.
"""

from __future__ import annotations

import pytest
import torch

import torchinit as ti
from _thirdparty import need


def dinov2() -> torch.nn.Module:
    tf = need("transformers")
    cfg = tf.Dinov2Config(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64)  # fmt: skip
    return tf.Dinov2Model(cfg)


@pytest.mark.slow
@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("kwargs", [{"seed": 0}, {}, {"generator": torch.Generator().manual_seed(0)}],
                         ids=["seed", "global", "generator"])  # fmt: skip
def test_replayed_library_trunc_normal_adds_no_warning(kwargs, recwarn):
    with ti.deferred():
        model = dinov2()
    report = ti.materialize_(model, strict=True, **kwargs)
    assert [w for w in recwarn] == []
    assert [r.name for r in report if r.rule == "unknown"] == []
    assert not any(t.is_meta for t in model.state_dict().values())
    # the trunc_normal_ was replayed: the position embeddings have std 0.02 (recorded whole as torch's call)
    pos = model.embeddings.position_embeddings.detach()
    assert 0.01 < float(pos.std()) < 0.03


def test_user_call_of_torchinit_trunc_normal_still_warns():
    with pytest.warns(UserWarning, match="nothing is truncated"):
        ti.trunc_normal_(torch.empty(8, 8), std=0.02)


def test_constructor_call_of_torchinit_trunc_normal_warns_once():
    # the original call ran on meta at construction and warned there; the replay adds no second warning
    class M(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.p = torch.nn.Parameter(torch.empty(8, 8))
            ti.trunc_normal_(self.p, std=0.02)

    with pytest.warns(UserWarning, match="nothing is truncated") as caught:
        with ti.deferred():
            model = M()
        ti.materialize_(model, seed=0)
    assert len([w for w in caught if "nothing is truncated" in str(w.message)]) == 1
    assert 0.01 < float(model.p.detach().std()) < 0.03
