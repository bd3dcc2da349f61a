"""docs/mup.md's evidence: the script runs (a tiny version here), and the page holds the tables the committed
results give."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _evidence():
    spec = importlib.util.spec_from_file_location("mup_evidence", ROOT / "docs" / "mup_evidence.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.subprocess
def test_the_script_runs(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    proc = subprocess.run([sys.executable, str(ROOT / "docs" / "mup_evidence.py"), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "**digits, mup**" in proc.stdout and "**text-depth, CompleteP**" in proc.stdout
    data = json.loads((tmp_path / "mup_results.json").read_text())
    assert len(data["runs"]) == 2 * 2 * 2 * 3 + 2 * 2 * 3  # (digits, text) x (sp, mup) x 2 widths x 3 lrs + depths
    assert (tmp_path / "mup_sweeps.png").stat().st_size > 0


def test_the_page_holds_what_the_committed_results_give():
    evidence = _evidence()
    page = (ROOT / "docs" / "mup.md").read_text()
    block = page[page.index(evidence.START) + len(evidence.START): page.index(evidence.END)].strip()
    data = json.loads((ROOT / "docs" / "mup_results.json").read_text())
    settings = data["settings"]
    results = {tuple(r["key"]): (float("nan") if r["loss"] is None else r["loss"]) for r in data["runs"]}
    assert len(settings["lrs"]) >= 7 and len(settings["seeds"]) >= 3
    assert len(settings["digits"]["widths"]) >= 4 and len(settings["text"]["widths"]) >= 4
    summary = evidence.summarize(results, tuple(settings["lrs"]))
    want = evidence.markdown(summary, data["corpus"], tuple(settings["lrs"]), tuple(settings["seeds"]),
                             settings["steps"], data["seconds"], data["workers"])  # fmt: skip
    assert block == want.strip()
    assert (ROOT / "docs" / "img" / "mup_sweeps.png").stat().st_size > 10_000
