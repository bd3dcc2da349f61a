"""The ``torchinit`` command line: ``main([...])`` in process and ``python -m torchinit`` as a subprocess."""

import json
import math
import subprocess
import sys

import pytest
import torch

import torchinit
from torchinit.cli import EXPLODE_STD, SCHEMES, VANISH_GRAD, VANISH_STD, main

ALL = list(SCHEMES)
FAST = ["--depth", "1", "--batch", "16"]


def table_rows(text: str) -> dict[str, list[str]]:
    """The rows of the table (between the dashed rule and the next blank line), keyed by scheme."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("----")) + 1
    rows = {}
    for line in lines[start:]:
        if not line.strip():
            break
        cells = line.split()
        rows[cells[0]] = cells
    return rows


def numbers(cells: list[str]) -> tuple[float, float]:
    # scheme, description (may contain spaces), output std, input grad norm, exploded, vanished
    return float(cells[-4]), float(cells[-3])


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_default_table(capsys):
    code, out, err = run_main(capsys, "compare")
    assert code == 0, err
    rows = table_rows(out)
    assert list(rows) == ALL
    for cells in rows.values():
        std, grad = numbers(cells)
        assert math.isfinite(std) and std > 0
        assert math.isfinite(grad) and grad > 0
        assert cells[-2:] in (["no", "no"], ["yes", "no"], ["no", "yes"])
    head = out.splitlines()[:3]
    assert "930,378 params" in head[0] and "64 -> [64x4, 128x4, 256x4, 128x4, 64x4, 32x4] -> 10" in head[0]
    assert "batch 256" in head[1] and "seed 0" in head[1]
    assert "mean(output**2)" in head[2]
    footer = out.splitlines()[-1]
    assert f"{EXPLODE_STD:.0e}" in footer and f"{VANISH_STD:.0e}" in footer and f"{VANISH_GRAD:.0e}" in footer


def test_json_flags_follow_thresholds(capsys):
    code, out, err = run_main(capsys, "compare", "--format", "json")
    assert code == 0, err
    data = json.loads(out)
    assert [d["scheme"] for d in data] == ALL
    for d in data:
        assert set(d) == {"scheme", "init", "output_std", "input_grad_norm", "exploded", "vanished"}
        assert isinstance(d["output_std"], float) and math.isfinite(d["output_std"])
        assert isinstance(d["input_grad_norm"], float) and math.isfinite(d["input_grad_norm"])
        assert d["exploded"] == (d["output_std"] > EXPLODE_STD)
        assert d["vanished"] == (d["output_std"] < VANISH_STD or d["input_grad_norm"] < VANISH_GRAD)
    by = {d["scheme"]: d for d in data}
    # He init keeps each residual branch's variance, so the unnormalized sum doubles per block: 24 blocks explode.
    assert by["kaiming"]["exploded"] and not by["default"]["exploded"]


def test_same_seed_same_output_other_seed_differs(capsys):
    _, first, _ = run_main(capsys, "compare", "--seed", "7", *FAST)
    _, second, _ = run_main(capsys, "compare", "--seed", "7", *FAST)
    _, other, _ = run_main(capsys, "compare", "--seed", "8", *FAST)
    assert first == second
    assert table_rows(first) != table_rows(other)


def test_schemes_subset_keeps_order(capsys):
    code, out, _ = run_main(capsys, "compare", "--schemes", "lecun, kaiming,lecun", "--format", "json", *FAST)
    assert code == 0
    assert [d["scheme"] for d in json.loads(out)] == ["lecun", "kaiming"]


def test_non_finite_is_null_in_json_and_exploded(capsys):
    argv = ["compare", "--schemes", "kaiming", "--depth", "40", "--batch", "4", "--format", "json"]
    code, out, _ = run_main(capsys, *argv)
    assert code == 0
    (d,) = json.loads(out)
    assert d["output_std"] is None and d["exploded"] and not d["vanished"]


@pytest.mark.parametrize(
    "argv, option",
    [
        (["compare", "--batch", "0"], "--batch"),
        (["compare", "--depth", "two"], "--depth"),
        (["compare", "--seed", "-1"], "--seed"),
        (["compare", "--schemes", "kaiming,he"], "--schemes"),
        (["compare", "--schemes", ","], "--schemes"),
        (["compare", "--format", "xml"], "--format"),
        (["compare", "--bogus"], "--bogus"),
    ],
)
def test_bad_option_exits_2_naming_it(capsys, argv, option):
    code, out, err = run_main(capsys, *argv)
    assert code == 2
    assert out == ""
    assert "error:" in err and option in err


def test_no_subcommand_prints_help_and_returns_2(capsys):
    code, out, err = run_main(capsys)
    assert code == 2
    assert "usage: torchinit" in err and "compare" in err


def test_version(capsys):
    code, out, _ = run_main(capsys, "--version")
    assert code == 0
    assert out.strip() == f"torchinit {torchinit.__version__}"


def python_m(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torchinit", *argv], capture_output=True, text=True, timeout=120)


def test_python_m_matches_in_process(capsys):
    proc = python_m("compare", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    assert list(table_rows(proc.stdout)) == ALL
    code, out, _ = run_main(capsys, "compare", "--seed", "3")
    assert code == 0
    assert proc.stdout == out  # reproducible across processes


def test_python_m_bad_option():
    proc = python_m("compare", "--format", "yaml")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "--format" in proc.stderr and "invalid choice" in proc.stderr


@pytest.mark.parametrize("scheme", ["glass", "glass-isometric"])
def test_glass_schemes_change_only_the_shortcuts(scheme):
    from torchinit._demo_model import build_default_model
    from torchinit.cli import init_model

    default = build_default_model(depth=1, seed=1)
    model = init_model(build_default_model(depth=1, seed=1), scheme, torch.Generator().manual_seed(1))
    before, after = dict(default.named_parameters()), dict(model.named_parameters())
    changed = {name for name in after if not torch.equal(after[name], before[name])}
    shortcuts = {name for name in after if ".shortcut." in name}
    assert changed == shortcuts and shortcuts
    if scheme == "glass-isometric":
        for name in shortcuts:
            w = after[name].detach().double()
            gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
            assert torch.allclose(gram, torch.eye(gram.shape[0], dtype=torch.float64), atol=1e-6)


def test_glass_shortcuts_carry_more_gradient_than_default(capsys):
    code, out, _ = run_main(capsys, "compare", "--schemes", "default,glass,glass-isometric", "--format", "json")
    assert code == 0
    grad = {d["scheme"]: d["input_grad_norm"] for d in json.loads(out)}
    assert grad["default"] < grad["glass"] < grad["glass-isometric"]
