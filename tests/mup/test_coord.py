"""The coordinate check: the standard parametrization's layers move with width, muP's do not; reproducible, and
the global RNG is never touched."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

import torchinit.mup as mup
from _thirdparty import need
from torchinit._util.progress import Progress
from torchinit.mup.coord import MLP, regression_loss

FAST = {"widths": (32, 64, 128), "steps": 3}


@pytest.mark.parametrize("family", ["mlp", "resmlp"])
def test_sp_is_flagged_and_mup_passes(family):
    check = mup.coord_check(family, **FAST)
    assert check.flagged["mup"] == []
    assert "readout" in check.flagged["sp"]  # Adam's lr-sized updates summed over a growing fan-in
    assert all(_worst(check.slopes["mup"][layer]) <= check.tol for layer in check.slopes["mup"])
    assert max(_worst(s) for s in check.slopes["sp"].values()) > 0.5  # not a borderline call


def _worst(slopes):
    return max((abs(s) for s in slopes[1:] if math.isfinite(s)), default=0.0)


def test_sgd_too():
    check = mup.coord_check("mlp", optimizer="sgd", lr=0.5, **FAST)
    assert check.flagged["mup"] == [] and check.flagged["sp"]


def test_reproducible_and_the_global_rng_is_untouched():
    state = torch.get_rng_state()
    first = mup.coord_check("mlp", params=("mup",), **FAST)
    assert torch.equal(torch.get_rng_state(), state)
    second = mup.coord_check("mlp", params=("mup",), **FAST)
    assert first.sizes == second.sizes


def test_slopes_are_least_squares_fits():
    """A layer whose size doubles with width has slope 1 (checked on the fit itself, on exact data)."""
    from torchinit.mup.coord import _slopes

    sizes = {w: [{"a": 0.1 * w, "b": 3.0}] * 2 for w in (32, 64, 128)}
    slopes = _slopes(sizes, [32, 64, 128], 2)
    assert slopes["a"] == pytest.approx([1.0, 1.0]) and slopes["b"] == pytest.approx([0.0, 0.0])


def test_a_users_builder_with_a_regression_loss():
    class Net(nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(6, width), nn.Linear(width, width), nn.Linear(width, 2)

        def forward(self, x):
            return self.c(torch.tanh(self.b(torch.tanh(self.a(x)))))

    inputs = torch.randn(32, 6, generator=torch.Generator().manual_seed(0))
    check = mup.coord_check(Net, loss=regression_loss(inputs), **FAST)
    assert set(check.slopes["sp"]) == {"a", "b", "c"} and check.flagged["mup"] == []


def test_table_json_and_plot(tmp_path):
    check = mup.coord_check("mlp", **FAST)
    table = check.table()
    assert "mup: 0 of 4 layer(s) move with width" in table and "readout" in table
    data = check.to_dict()
    assert data["widths"] == [32, 64, 128] and set(data["sizes"]) == {"sp", "mup"}
    pytest.importorskip("matplotlib")
    check.plot(str(tmp_path / "c.png"))
    assert (tmp_path / "c.png").stat().st_size > 0


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"widths": (32, 64)}, ValueError, "at least 3 distinct widths"),
        ({"widths": (32, 64, 0)}, ValueError, "widths must be positive integers"),
        ({"steps": 1}, ValueError, "steps must be an integer of at least 2"),
        ({"params": ("mup", "ntk")}, ValueError, "params must name some of 'sp', 'mup'"),
        ({"optimizer": "lion"}, ValueError, "optimizer must be one of"),
        ({"lr": -1.0}, ValueError, "lr must be a positive finite number"),
        ({"tol": float("nan")}, ValueError, "tol must be a positive finite number"),
        ({"widths": 64}, TypeError, "widths must be a sequence of positive integers; got int"),
        ({"widths": (w for w in (32, 64))}, ValueError, r"at least 3 distinct widths to fit a slope; got \[32, 64\]"),
        ({"base_width": 0}, ValueError, "base_width must be a positive integer up to the smallest width, 32; got 0"),
        ({"base_width": True}, ValueError, "base_width must be a positive integer"),
        ({"base_width": 256}, ValueError, "base_width must be a positive integer up to the smallest width, 32"),
        ({"std": -1.0}, ValueError, "std must be a positive finite number or None"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        mup.coord_check("mlp", **{**FAST, **kwargs})


def test_bad_families():
    with pytest.raises(ValueError, match="family must be one of 'mlp', 'resmlp', 'gpt2' or a callable"):
        mup.coord_check("mpl")
    with pytest.raises(ValueError, match="loss is needed with a builder"):
        mup.coord_check(MLP)
    with pytest.raises(TypeError, match="family must be a name, a Family or a callable"):
        mup.coord_check(3)
    with pytest.raises(TypeError, match=r"build\(width=32\) returned str"):
        mup.coord_check(lambda width: "model", loss=lambda m: m, **FAST)


def test_progress_bar():
    stream = io.StringIO()
    with Progress(4, "coord_check", enabled=True, stream=stream) as bar:
        for i in range(4):
            bar.step(f"width {i}")
    text = stream.getvalue()
    assert text.count("\r") == 4 and "[" + "#" * 30 + "] 4/4 width 3" in text and text.endswith("\n")
    quiet = io.StringIO()
    with Progress(4, "x", stream=quiet) as bar:  # not a terminal: nothing
        bar.step()
    assert quiet.getvalue() == ""


@pytest.mark.slow
def test_gpt2_family():
    need("transformers")
    check = mup.coord_check("gpt2", widths=(64, 128, 256), steps=3)
    assert len(check.flagged["sp"]) > 3 * len(check.flagged["mup"])
    # the readout: sp's logits grow about as width^0.7; muP's stay within a mild finite-width shrink
    assert _worst(check.slopes["sp"]["lm_head"]) > 0.6 > 0.4 > _worst(check.slopes["mup"]["lm_head"])


def test_params_may_be_any_iterable():
    check = mup.coord_check("mlp", params=(p for p in ["mup"]), **FAST)
    assert list(check.sizes) == ["mup"]


class RandomBuffer(nn.Module):
    """A model whose constructor draws from torch's RNG (a random projection buffer)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.l, self.o = nn.Linear(8, width), nn.Linear(width, 3)
        self.register_buffer("p", torch.randn(8, 8))

    def forward(self, x):
        return self.o(torch.relu(self.l(x @ self.p)))


def test_a_builder_that_draws_neither_touches_nor_depends_on_the_global_rng():
    loss = regression_loss(torch.ones(16, 8))
    torch.manual_seed(0)
    state = torch.get_rng_state()
    first = mup.coord_check(RandomBuffer, loss=loss, **FAST)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(1)
    assert mup.coord_check(RandomBuffer, loss=loss, **FAST).to_dict() == first.to_dict()


def test_json_has_no_nan():
    import json

    data = mup.coord_check("mlp", **FAST).to_dict()
    json.dumps(data, allow_nan=False)  # muP's zero readout at step 0 has no slope: null, not NaN
    assert data["slopes"]["mup"]["readout"][0] is None


def test_sgd_runs_get_sgds_groups(monkeypatch):
    seen = []
    real = torch.optim.SGD

    def spy(groups, **kwargs):
        seen.append([(g.get("kind"), g["lr"]) for g in groups])
        return real(groups, **kwargs)

    monkeypatch.setattr(torch.optim, "SGD", spy)
    mup.coord_check("mlp", optimizer="sgd", lr=0.1, params=("mup",), **FAST)
    widest = dict(seen[-1])  # width 128 against 32: m = 4
    assert widest["input"] == pytest.approx(0.4) and widest["hidden"] == pytest.approx(0.1)
