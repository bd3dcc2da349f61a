"""``torchinit train`` smoke tests: tiny depths and a few steps; the real numbers live in the docs."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from torchinit.cli.commands import main
from torchinit.diagnostics.trainability import MODELS, build_model, parse_init, train

pytest.importorskip("sklearn", reason="torchinit train needs scikit-learn (the train extra)")


def run(capsys, *argv):
    code = main(["train", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_carries_every_field_and_the_same_seed_gives_the_same_numbers(capsys):
    argv = ["--model", "mlp-tanh", "--depth", "2", "--init", "default,orthogonal:gain=1.5", "--seeds", "2",
            "--steps", "6", "--format", "json"]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    result = json.loads(out)
    assert {k: result[k] for k in ("data", "model", "depth", "steps", "seeds")} == \
        {"data": "digits", "model": "mlp-tanh", "depth": 2, "steps": 6, "seeds": 2}
    assert list(result["schemes"]) == ["default", "orthogonal:gain=1.5"]
    for entry in result["schemes"].values():
        assert len(entry["test_acc"]) == len(entry["final_loss"]) == len(entry["steps_to_half"]) == 2
        assert all(0.0 <= a <= 1.0 for a in entry["test_acc"])
        assert [len(c) for c in entry["loss_curve"]] == [6, 6]
        assert entry["final_loss"] == [c[-1] for c in entry["loss_curve"]]
    code, again, _ = run(capsys, *argv)
    assert code == 0
    again = json.loads(again)
    # the same numbers, up to the last bits that CPU kernels may change between calls (threaded reductions): a
    # relative 1e-5 on losses after 6 steps, at most one test sample (1/450) of accuracy
    for label, entry in result["schemes"].items():
        other = again["schemes"][label]
        assert other["steps_to_half"] == entry["steps_to_half"]
        for mine, theirs in zip(entry["loss_curve"], other["loss_curve"]):
            assert mine == pytest.approx(theirs, rel=1e-5)
        assert entry["test_acc"] == pytest.approx(other["test_acc"], abs=1.5 / 450)


def test_the_table_and_the_figure(capsys, tmp_path):
    out_png = tmp_path / "train.png"
    code, out, err = run(capsys, "--model", "mlp-relu", "--depth", "1", "--seeds", "1", "--steps", "3",
                         "--out", str(out_png))
    assert code == 0, err
    assert "test accuracy" in out and "steps until the loss halved" in out and "orthogonal" in out
    assert out_png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("model", MODELS)
def test_every_model_trains(model):
    r = train(model, 1, ["default", "kaiming_normal"], seeds=1, steps=2, progress=False)
    assert all(len(e["loss_curve"][0]) == 2 for e in r["schemes"].values())
    assert build_model(model, 2)(torch.zeros(5, 64)).shape == (5, 10)


@pytest.mark.parametrize("argv,message", [
    (["--init", "orthogonl"], "unknown init 'orthogonl'; choose from default"),
    (["--init", "kaiming_normal:gain=2"], "only a gain can be set"),
    (["--init", "orthogonal:gain=-1"], "gain must be a positive number up to"),
    (["--model", "vit"], "invalid choice: 'vit'"),
    (["--depth", "0"], "--depth"),
])
def test_bad_arguments_are_one_line_usage_errors(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == "" and message in err and err.count("\n") == 1, err


def test_a_missing_extra_says_what_to_install(capsys, monkeypatch):
    for module in ("sklearn", "sklearn.datasets", "sklearn.model_selection"):
        monkeypatch.setitem(sys.modules, module, None)  # importing them now raises ImportError
    code, _, err = run(capsys, "--depth", "1", "--steps", "1", "--seeds", "1")
    assert code == 2 and "pip install 'torchinit[train]'" in err and err.count("\n") == 1


def test_parse_init_gains():
    label, scheme = parse_init("orthogonal:gain=1.667")
    assert label == "orthogonal:gain=1.667" and "gain=1.667" in scheme.description


def test_the_architecture_specific_schemes():
    """fixup (residual blocks) and delta_orthogonal (convs) are schemes of compare and train, asked for by name."""
    from torch import nn

    from torchinit.diagnostics.compare import DEFAULT_SCHEMES, SCHEMES
    from torchinit.diagnostics.models import ResidualBlock, ResidualMLP, SmallCNN

    assert "fixup" not in DEFAULT_SCHEMES and "delta_orthogonal" not in DEFAULT_SCHEMES
    model = ResidualMLP(widths=(8, 16), depth=2)
    SCHEMES["fixup"].apply(model, None, torch.Generator().manual_seed(0))
    blocks = [b for b in model.blocks if isinstance(b, ResidualBlock)]
    assert len(blocks) == len(model.blocks) and all(bool((b.fc2.weight == 0).all()) for b in blocks)
    assert bool((model.head.weight == 0).all()) and bool((model.head.bias == 0).all())
    assert float(blocks[0].fc1.weight.detach().std()) > 0
    with pytest.raises(ValueError, match="fixup needs residual blocks"):
        SCHEMES["fixup"].apply(nn.Sequential(nn.Linear(4, 4)), None, torch.Generator())
    cnn = SmallCNN()
    SCHEMES["delta_orthogonal"].apply(cnn, None, torch.Generator().manual_seed(0))
    conv = cnn.stem if hasattr(cnn, "stem") else next(m for m in cnn.modules() if isinstance(m, nn.Conv2d))
    w = conv.weight.detach()
    assert int(w.count_nonzero()) == int(w[:, :, 1, 1].count_nonzero())  # only the centre tap


# ---- regressions found by review ------------------------------------------------------------------------------


@pytest.mark.parametrize("argv,message", [
    (["--model", "mlp-tanh", "--init", "fixup"], "init 'fixup' on mlp-tanh: fixup needs residual blocks"),
    (["--init", "orthogonal:gain=1e300"], "gain must be a positive number up to 1e+06"),
    (["--width", "100000", "--max-memory", "1G"], "over the --max-memory limit of 1 GiB"),
    (["--model", "resmlp", "--width", "8"], "resmlp has fixed widths"),
    (["--depth", "100000000"], "depth must be at most 10000"),
])
def test_runs_that_cannot_work_are_refused_before_training(capsys, argv, message):
    code, out, err = run(capsys, "--steps", "1", "--seeds", "1", *argv)
    assert code == 2 and out == "" and message in err and err.count("\n") == 1, err


def test_a_diverged_run_has_no_accuracy_no_loss_and_never_halves(capsys):
    r = train("mlp-relu", 6, ["orthogonal:gain=1e6"], seeds=1, steps=3, progress=False)
    entry = r["schemes"]["orthogonal:gain=1e6"]
    assert entry["test_acc"] == [None] and entry["final_loss"] == [None] and entry["steps_to_half"] == [None]
    json.dumps(r, allow_nan=False)  # no NaN or Infinity tokens


@pytest.mark.parametrize("kwargs,error,message", [
    ({"lr": True}, ValueError, "lr must be a positive number"),
    ({"lr": 1e300}, ValueError, "lr must be a positive number"),
    ({"progress": "no"}, TypeError, "progress must be a bool or None"),
])
def test_train_checks_its_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        train("mlp-relu", 1, ["default"], seeds=1, steps=1, **kwargs)


def test_progress_is_per_step_and_periodic_off_a_terminal(capsys):
    """stderr is not a terminal here: one plain line per tenth of the steps, never a redrawn bar."""
    train("mlp-relu", 1, ["default"], seeds=2, steps=10)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "\r" not in err and len(lines) == 10
    assert lines[0].startswith("torchinit train mlp-relu depth 1: 10% (2/20)") and "100% (20/20)" in lines[-1]


def test_training_leaves_the_global_rng_alone():
    import torch

    torch.manual_seed(3)
    state = torch.get_rng_state()
    first = train("mlp-relu", 1, ["default", "orthogonal"], seeds=1, steps=3, progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(4)  # and does not depend on it
    assert train("mlp-relu", 1, ["default", "orthogonal"], seeds=1, steps=3, progress=False) == first
