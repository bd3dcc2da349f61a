"""The ``torchinit`` command line: compare and probe, on the embedded models and on a user model file."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

import torchinit
from torchinit.cli.commands import main
from torchinit.diagnostics.compare import DEFAULT_SCHEMES, EXPLODE_STD, SCHEMES, VANISH_GRAD, VANISH_STD

ALL = list(DEFAULT_SCHEMES)
FAST = ["--batch", "16"]


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def summary_rows(text: str) -> dict[str, list[str]]:
    """The rows of the summary table: the last table, after the last dashed rule."""
    lines = text.splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("------")) + 1
    rows = {}
    for line in lines[start:]:
        if not line.strip():
            break
        rows[line.split()[0]] = line.split()
    return rows


def test_compare_default_model_all_schemes(capsys):
    code, out, err = run_main(capsys, "compare")
    assert code == 0, err
    rows = summary_rows(out)
    assert list(rows) == ALL
    for scheme in ALL:
        assert f"== {scheme}: {SCHEMES[scheme].description}" in out
    assert "model: mlp (a deep residual MLP" in out and "shape (256, 64)" in out
    assert "(12 of 54 layers; torchinit probe shows all)" in out


def test_json_summary_flags_and_layers(capsys):
    code, out, _ = run_main(capsys, "compare", "--format", "json", *FAST)
    assert code == 0
    data = json.loads(out)
    assert [d["scheme"] for d in data] == ALL
    for d in data:
        assert {"scheme", "init", "output_std", "input_grad_norm", "exploded", "vanished", "layers"} <= set(d)
        assert len(d["layers"]) == 54 and {"name", "act_mean", "act_std", "grad_std"} <= set(d["layers"][0])
        if d["output_std"] is not None and d["input_grad_norm"] is not None:
            assert d["exploded"] == (d["output_std"] > EXPLODE_STD)
            assert d["vanished"] == (not d["exploded"] and (d["output_std"] < VANISH_STD
                                                            or d["input_grad_norm"] < VANISH_GRAD))
    by = {d["scheme"]: d for d in data}
    # He init keeps each residual branch's variance, so the unnormalized sum doubles per block: 24 blocks explode
    assert by["kaiming_normal"]["exploded"] and not by["default"]["exploded"]
    assert by["default"]["input_grad_norm"] < by["glass"]["input_grad_norm"] < by["glass-isometric"]["input_grad_norm"]
    assert not by["lsuv"]["exploded"] and not by["lsuv"]["vanished"]


def test_cnn_probe_and_plot(capsys, tmp_path):
    png = tmp_path / "cnn.png"
    code, out, err = run_main(capsys, "compare", "--model", "cnn", "--init", "default,glass-isometric,lsuv",
                              "--out", str(png), *FAST)
    assert code == 0, err
    assert list(summary_rows(out)) == ["default", "glass-isometric", "lsuv"]
    assert png.read_bytes()[:4] == b"\x89PNG" and "wrote" in err
    code, out, _ = run_main(capsys, "probe", "--model", "cnn", "--init", "hadamard", *FAST)
    assert code == 0 and "== hadamard" in out and "torchinit probe shows all" not in out
    # depth 2 x 3 stages: blocks 0..5; projections (with weights, so with rows) where the width changes only
    assert "blocks.2.shortcut" in out and "blocks.4.shortcut" in out and "blocks.5.shortcut" not in out


def test_spectrum(capsys):
    code, out, _ = run_main(capsys, "compare", "--init", "default,glass-isometric", "--spectrum", *FAST)
    assert code == 0 and "Jacobian σ_min" in out


def test_same_seed_same_output(capsys):
    _, first, _ = run_main(capsys, "compare", "--init", "default,lecun_normal", "--seed", "7", *FAST)
    _, second, _ = run_main(capsys, "compare", "--init", "default,lecun_normal", "--seed", "7", *FAST)
    _, other, _ = run_main(capsys, "compare", "--init", "default,lecun_normal", "--seed", "8", *FAST)
    assert first == second and summary_rows(first) != summary_rows(other)


USER_MODEL = textwrap.dedent("""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(8, 32), nn.Linear(32, 4)
            self.shortcut = nn.Linear(8, 4, bias=False)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x))) + self.shortcut(x)

    def make():
        return Net()

    def broken():
        raise RuntimeError("no weights today")

    def not_a_model():
        return 42
""")


def run_cli(tmp_path, *argv: str) -> subprocess.CompletedProcess:
    (tmp_path / "usermodel.py").write_text(USER_MODEL)
    return subprocess.run([sys.executable, "-m", "torchinit", *argv], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)


@pytest.mark.subprocess
def test_user_model_file(tmp_path):
    proc = run_cli(tmp_path, "compare", "--model", "usermodel:make", "--input-shape", "8",
                   "--init", "default,glass,orthogonal", "--batch", "32")
    assert proc.returncode == 0, proc.stderr
    assert list(summary_rows(proc.stdout)) == ["default", "glass", "orthogonal"]
    assert "shortcut" in proc.stdout and "fc1" in proc.stdout


BAD_INPUT = [
    (["compare", "--model", "nosuchmodule:make", "--input-shape", "8"], "nosuchmodule"),
    (["compare", "--model", "usermodel:nothing", "--input-shape", "8"], "nothing"),
    (["compare", "--model", "usermodel:broken", "--input-shape", "8"], "no weights today"),
    (["compare", "--model", "usermodel:not_a_model", "--input-shape", "8"], "returned int"),
    (["compare", "--model", "usermodel:make"], "--input-shape is required"),
    (["compare", "--model", "usermodel:make", "--input-shape", "8,x"], "'8,x'"),
    (["compare", "--model", "usermodel:make", "--input-shape", "0"], "'0'"),
    (["compare", "--model", "usermodel:make", "--input-shape", "5"], "failed"),
    (["compare", "--model", "resnet"], "'resnet'"),
    (["compare", "--init", "kaiming,he"], "'kaiming', 'he'"),
    (["probe", "--init", "glassy"], "glassy"),
    (["compare", "--batch", "0"], "--batch"),
    (["compare", "--format", "xml"], "--format"),
]


@pytest.mark.parametrize("argv,culprit", BAD_INPUT)
def test_bad_input_exit_2_one_line_no_traceback(tmp_path, monkeypatch, capsys, argv, culprit):
    (tmp_path / "usermodel.py").write_text(USER_MODEL)
    monkeypatch.chdir(tmp_path)  # the user's model is imported from the current directory
    monkeypatch.delitem(sys.modules, "usermodel", raising=False)
    code, out, err = run_main(capsys, *argv)
    sys.modules.pop("usermodel", None)
    assert code == 2 and out == ""
    assert "Traceback" not in err and culprit in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.subprocess
@pytest.mark.parametrize("argv,culprit", [BAD_INPUT[0], BAD_INPUT[2], BAD_INPUT[-1]])
def test_bad_input_exit_2_one_line_no_traceback_in_a_real_process(tmp_path, argv, culprit):
    proc = run_cli(tmp_path, *argv)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr and culprit in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_no_subcommand_and_version(capsys):
    code, out, err = run_main(capsys)
    assert code == 2
    assert err == ("torchinit: error: a command is required: compare, probe, train or coordcheck (see torchinit "
                   "--help)\n")
    code, out, _ = run_main(capsys, "--version")
    assert code == 0 and out.startswith(f"torchinit {torchinit.__version__} (torch {torch.__version__}; keyed kernel: ")


@pytest.mark.subprocess
def test_version_says_when_the_kernel_is_not_in_use():
    """pip hides the build's output; ``torchinit --version`` is where the kernel's absence shows."""
    import os

    env = {**os.environ, "TORCHINIT_NO_KERNEL": "1"}
    proc = subprocess.run([sys.executable, "-c", "import _torchinit_cli; _torchinit_cli.main(['--version'])"],
                          capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("keyed kernel: disabled by TORCHINIT_NO_KERNEL)"), proc.stdout


@pytest.mark.parametrize("command", [["compare", "--init", "default", *FAST], ["coordcheck", "--widths", "8,16,32"],
                                     ["train", "--steps", "1"]])
def test_out_without_matplotlib_fails_before_the_work(capsys, tmp_path, monkeypatch, command):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, out, err = run_main(capsys, *command, "--out", str(tmp_path / "x.png"))
    assert code == 2 and out == "" and not (tmp_path / "x.png").exists()
    assert "--out" in err and "pip install 'torchinit[plot]'" in err and len(err.strip().splitlines()) == 1


def test_an_unknown_model_is_named_first(capsys):
    code, _, err = run_main(capsys, "compare", "--model", "mpl")
    assert code == 2 and "--model 'mpl' is unknown" in err


def test_help_never_breaks_a_word_and_shows_every_default(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    for command in ("compare", "probe", "train", "coordcheck"):
        code, text, _ = run_main(capsys, command, "--help")
        assert code == 0
        words = set(" ".join(text.split()).replace(",", " ").split())
        assert "kaim" not in words and "ing_uniform" not in words, command
        assert "--max-memory" not in text or "(default: half the physical memory," in " ".join(text.split()), command


@pytest.mark.subprocess
def test_warnings_print_as_one_line(tmp_path):
    (tmp_path / "wmod.py").write_text(textwrap.dedent("""
        import warnings
        from torch import nn

        def make():
            warnings.warn("something\\nto say", UserWarning)
            return nn.Sequential(nn.Linear(4, 4))
    """))
    proc = subprocess.run([sys.executable, "-m", "torchinit", "probe", "--model", "wmod:make", "--input-shape", "4",
                           "--batch", "8"], cwd=tmp_path, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "torchinit probe: warning: something to say" in proc.stderr.splitlines(), proc.stderr


def test_a_caller_recording_warnings_still_records_them(monkeypatch):
    import warnings

    def warn_and_run(args, stdout):
        warnings.warn("something to say", UserWarning, stacklevel=1)
        return 0

    monkeypatch.setattr("torchinit.cli.commands._run", warn_and_run)
    before = warnings.formatwarning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["compare"]) == 0
    assert [str(w.message) for w in caught] == ["something to say"]
    assert warnings.formatwarning is before  # the command's one-line format ends with the command
