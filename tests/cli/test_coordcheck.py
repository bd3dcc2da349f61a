"""``torchinit coordcheck``: the table, JSON, the plot, a user's builder, and one-line errors."""

import json
import textwrap

import pytest

from torchinit.cli.commands import main

FAST = ["--widths", "32,64,128", "--steps", "3", "--no-progress"]


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_table(capsys):
    code, out, err = run_main(capsys, "coordcheck", *FAST)
    assert code == 0, err
    assert "mlp: widths 32,64,128, 3 adamw steps at lr 0.01" in out
    assert "mup: 0 of 4 layer(s) move with width" in out
    assert "sp: " in out and "readout" in out
    assert err == ""  # no progress bar with --no-progress (and none when stderr is not a terminal)


def test_json_and_plot(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "cc.png"
    code, out, err = run_main(capsys, "coordcheck", "--model", "resmlp", "--param", "mup", "--format", "json",
                              "--out", str(png), *FAST)
    assert code == 0, err
    data = json.loads(out, parse_constant=lambda name: pytest.fail(f"not strict JSON: {name}"))
    assert list(data["sizes"]) == ["mup"] and data["flagged"] == {"mup": []} and data["widths"] == [32, 64, 128]
    assert png.stat().st_size > 0 and f"wrote {png}" in err


def test_a_users_builder(capsys, tmp_path, monkeypatch):
    (tmp_path / "widthmodel.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        def build(width):
            return nn.Sequential(nn.Linear(5, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
                                 nn.Linear(width, 3))
    """))
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(capsys, "coordcheck", "--model", "widthmodel:build", "--input-shape", "5", *FAST)
    assert code == 0, err
    assert "mup: 0 of 5 layer(s) move with width" in out
    code, _, err = run_main(capsys, "coordcheck", "--model", "widthmodel:build", *FAST)
    assert code == 2 and "--input-shape is required with --model 'widthmodel:build'" in err


@pytest.mark.parametrize(
    "argv, culprit",
    [
        (["--model", "mpl"], "--model 'mpl' is unknown; use mlp, resmlp, gpt2 or module:callable"),
        (["--widths", "32,64"], "needs at least 3 distinct widths"),
        (["--widths", "32,x,64"], "must be a positive integer"),
        (["--param", "sp,ntk"], "choose from sp,mup"),
        (["--lr", "0"], "must be a positive number"),
        (["--optimizer", "lion"], "invalid choice: 'lion'"),
        (["--model", "mlp", "--input-shape", "8"], "--input-shape is for your own model"),
        (["--out", "plot.txt"], "--out 'plot.txt': name a .png, .pdf, .svg file"),
        (["--steps", "1"], "must be an integer of at least 2"),
        (["--widths", "16,32,100000000"], "width 100000000 would need about"),
        (["--widths", "16,32,64", "--max-memory", "1K"], "over the --max-memory limit of 1 KiB"),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys, argv, culprit):
    code, out, err = run_main(capsys, "coordcheck", *argv)
    assert code == 2 and out == ""
    assert culprit in err and len(err.strip().splitlines()) == 1, err


def test_progress_off_a_terminal_is_a_line_per_tenth(capsys):
    code, _, err = run_main(capsys, "coordcheck", "--widths", "32,64,128", "--steps", "2", "--param", "mup")
    lines = err.strip().splitlines()
    assert code == 0 and "\r" not in err and lines[-1].startswith("coord_check: 100% (6/6)"), err


def test_train_progress_can_be_turned_off(capsys):
    pytest.importorskip("sklearn")
    code, _, err = run_main(capsys, "train", "--model", "mlp-relu", "--depth", "1", "--init", "default", "--seeds",
                            "1", "--steps", "3", "--no-progress")  # fmt: skip
    assert code == 0 and "torchinit train" not in err, err
    code, _, err = run_main(capsys, "train", "--model", "mlp-relu", "--depth", "1", "--init", "default", "--seeds",
                            "1", "--steps", "3")  # fmt: skip
    assert code == 0 and "torchinit train mlp-relu depth 1: 100% (3/3)" in err, err
