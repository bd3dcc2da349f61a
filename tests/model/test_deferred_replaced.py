"""A deferred model whose tensors were replaced after construction, in a way its recording cannot follow
(``.half().float()``: the recorded dtype in new memory; a new meta tensor assigned), is named as such: a warning
that says what happened and what to do, or a ValueError with ``strict=True`` before anything changes."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import torchinit as ti


class _Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.gamma = nn.Parameter(1e-5 * torch.ones(8))


def _round_trip(m):
    return m.half().float()


def _assigned(m):
    m.proj.weight = nn.Parameter(torch.empty(8, 8, device="meta"))
    return m


@pytest.mark.parametrize("replace", [_round_trip, _assigned], ids=["half-float", "assigned"])
def test_tensors_replaced_after_deferred_are_named(replace):
    with ti.deferred():
        model = _Scaled()
    model = replace(model)
    with pytest.raises(ValueError, match=r"strict: .*proj\.weight.*replaced after construction"):
        ti.materialize_(model, seed=0, strict=True)
    assert all(t.is_meta for t in model.parameters())  # nothing changed
    with pytest.warns(UserWarning) as caught:
        ti.materialize_(model, seed=0)
    messages = [str(w.message) for w in caught]
    assert re.search(r"proj\.weight.*replaced after construction.*inside the `with torchinit\.deferred\(\):` block",
                     messages[0])
    # named once, for what happened: not again as "left uninitialized by construction" or "built on meta"
    assert not [m for m in messages if "re-enacting" in m or "construction left" in m], messages
    zeroed = [m for m in messages if "named above" in m]
    if replace is _round_trip:  # gamma's constructor value is lost, and no init method sets it
        assert len(zeroed) == 1 and "gamma" in zeroed[0] and "set to zero" in zeroed[0]
        assert float(model.gamma.detach().abs().max()) == 0.0
    else:
        assert zeroed == []


def test_one_conversion_is_followed_and_names_nothing_replaced(recwarn):
    with ti.deferred():
        model = _Scaled()
    ti.materialize_(model.half(), seed=0)
    assert torch.equal(model.gamma, _Scaled().half().gamma)  # the constructor's value, converted as eager's
    assert not [w for w in recwarn if "replaced after construction" in str(w.message)]
