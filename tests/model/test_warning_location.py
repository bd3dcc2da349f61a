"""A warning from deep inside a whole-model call points at the user's line, wherever inside torchinit it is raised."""

import warnings

import torch
from torch import nn

import torchinit as ti


class _NoInit(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 2)
        self.register_buffer("table", torch.empty(3))  # no code computes it again: unknown, a warning


def _caught(call) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return caught


def test_materialize_warnings_point_at_the_call():
    with torch.device("meta"):
        model = _NoInit()
    caught = _caught(lambda: ti.materialize_(model))
    assert len(caught) == 2  # re-enactment found no init method; the buffer is unknown
    assert {(w.filename, w.lineno) for w in caught} == {(__file__, _line_of("lambda: ti.materialize_(model)"))}


def test_policy_warnings_point_at_the_call():
    caught = _caught(lambda: ti.Policy([("missing*", ti.Zeros())]).apply_(nn.Linear(2, 2)))
    assert [(w.filename, w.lineno) for w in caught] == [(__file__, _line_of('ti.Policy([("missing*"'))]
    assert "matches no parameter" in str(caught[0].message)


def test_lsuv_warnings_point_at_the_call():
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16))
    data = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
    caught = _caught(lambda: ti.lsuv_(model, data, max_iter=1, seed=3))
    assert caught and "did not reach std" in str(caught[-1].message)
    assert {(w.filename, w.lineno) for w in caught} == {(__file__, _line_of("lambda: ti.lsuv_(model, data"))}


def _line_of(text: str) -> int:
    with open(__file__) as f:
        return next(i for i, line in enumerate(f, 1) if text in line and "_line_of" not in line)
