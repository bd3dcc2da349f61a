"""Every public function documents its formula, defaults and a runnable example."""

import doctest
import importlib
import importlib.util
import inspect
import json
import pkgutil
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import torchinit as ti

PUBLIC = [n for n in ti.__all__ if inspect.isfunction(getattr(ti, n))]
ROOT = Path(__file__).resolve().parents[2]
MODULES = sorted(m.name for m in pkgutil.walk_packages(ti.__path__, "torchinit.")
                 if m.name != "torchinit.__main__" and not m.name.endswith("._philox"))


@pytest.mark.parametrize("name", PUBLIC)
def test_docstring_has_formula_defaults_example(name):
    fn = getattr(ti, name)
    doc = inspect.getdoc(fn) or ""
    assert "Example" in doc and ">>>" in doc, name
    assert ":math:" in doc or "=" in doc, name  # a formula
    defaults = [p for p in inspect.signature(fn).parameters.values()
                if p.default is not p.empty and p.default is not None and p.name not in ("generator",)]
    for p in defaults:
        assert p.name in doc or "Default" in doc, (name, p.name)


@pytest.mark.parametrize("module", MODULES)
def test_examples_run(module):
    """The docstring examples are doctests: they run and print what they say."""
    mod = importlib.import_module(module)
    globs = {**vars(mod), "torch": torch, "nn": nn, **{n: getattr(ti, n) for n in ti.__all__}}
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = [t for t in finder.find(mod, module, globs=globs) if t.examples]
    for test in tests:
        torch.manual_seed(0)
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {module}"


@pytest.mark.parametrize("page", ["fans.md", "gain.md", "truncated_normal.md", "glass.md", "materialize.md"])
def test_docs_pages_exist(page):
    assert (ROOT / "docs" / page).read_text().strip()


def test_glass_evidence_page_is_generated_and_agrees():
    """docs/glass.md holds the script's tables; the chain's claims are recomputed here."""
    spec = importlib.util.spec_from_file_location("glass_evidence", ROOT / "docs" / "glass_evidence.py")
    evidence = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evidence)
    page = (ROOT / "docs" / "glass.md").read_text()
    start, end = page.index(evidence.START), page.index(evidence.END)
    tables = page[start:end]
    for name in [*evidence.MATRIX_INITS, *evidence.CONV_INITS]:
        assert f"| {name} |" in tables, name
    assert "| glass isometric | 1 | 1 | 1 |" in tables
    # the committed chain table is what the script computes now (3 significant digits: 5e-3 relative)
    for name in evidence.MATRIX_INITS:
        sv = evidence.chain_jacobian_spectrum(name)
        row = next(line for line in tables.splitlines() if line.startswith(f"| {name} |") and line.count("|") == 5)
        shown = [float(cell) for cell in row.strip("| ").split(" | ")[1:]]
        for got, want in zip(shown, [float(sv.min()), float(sv.max()), evidence.condition(sv)]):
            assert got == pytest.approx(want, rel=5e-3), (name, row)
    assert (ROOT / "docs" / "img" / "glass_spectra.png").stat().st_size > 10_000


NUMBER = r"(?<![\w.=-])\d+(?:\.\d+)?(?![\w.])"


def _matches(text: str, measured: list[float]) -> bool:
    """``text`` is one of ``measured``, as printed or rounded to the digits ``text`` shows."""
    decimals = len(text.split(".")[1]) if "." in text else 0
    return any(abs(m - float(text)) <= 0.5 * 10**-decimals + 1e-9 for m in measured)


def test_readme_speed_numbers_come_from_the_benchmark_results():
    """Each row of the README's speed tables quotes one row of benchmarks/results/*.md (its first cell aside),
    and every other number in the Speed section is a number of those files."""
    readme = (ROOT / "README.md").read_text()
    speed = readme[readme.index("## Speed"):readme.index("## Glass init")]
    results = "\n".join((ROOT / "benchmarks" / "results" / f).read_text() for f in ("cpu.md", "model_init.md"))
    result_rows = [[float(x) for x in re.findall(NUMBER, line.split("|", 2)[2])]
                   for line in results.splitlines() if line.startswith("| ") and not line.startswith("| call")]
    table_rows = [line for line in speed.splitlines() if line.startswith("| ") and not line.startswith("| call")
                  and not line.startswith("| way") and not line.startswith("|---")]
    assert len(table_rows) >= 15
    for line in table_rows:
        quoted = re.findall(NUMBER, line.split("|", 2)[2])  # not the first cell
        assert len(quoted) >= 2, line
        assert any(all(_matches(q, row) for q in quoted) for row in result_rows), line
    prose = "\n".join(line for line in speed.splitlines() if not line.startswith("|"))
    measured = [float(x) for x in re.findall(NUMBER, results)]
    for text in re.findall(r"(\d+(?:\.\d+)?)(?: ms|×)", prose):
        if text != "2":  # the README's "drifts by up to 2×" is about the machine, not a result  # noqa: RUF003
            assert _matches(text, measured), text
    assert "make bench" in readme and "make demo" in readme and "make test" in readme


def test_readme_shows_the_demo_plot():
    readme = (ROOT / "README.md").read_text()
    assert "![signal by depth](docs/img/compare.png)" in readme and "make demo" in readme
    assert (ROOT / "docs" / "img" / "compare.png").read_bytes()[:4] == b"\x89PNG"
    makefile = (ROOT / "Makefile").read_text()
    # make demo draws the same plot into an untracked file: the tree stays clean
    assert "torchinit compare --out build/compare.png" in makefile and "build/" in (ROOT / ".gitignore").read_text()


def test_sharded_docs_quote_the_sharded_benchmark():
    """docs/sharded.md carries benchmarks/results/sharded.md's table verbatim; its prose and the README's sentence
    quote numbers of that file."""
    results = (ROOT / "benchmarks" / "results" / "sharded.md").read_text()
    docs = (ROOT / "docs" / "sharded.md").read_text()
    rows = [line for line in results.splitlines() if line.startswith("|")]
    assert len(rows) >= 4 and all(row in docs for row in rows)
    measured = [float(x) for x in re.findall(r"\d+(?:\.\d+)?", results)]  # "0.61x" included
    readme = (ROOT / "README.md").read_text()
    sentence = readme[readme.index("Per rank, `materialize_`"):]
    sentence = sentence[:sentence.index("\n\n")]
    quoted = re.findall(r"(\d+(?:\.\d+)?)×", sentence) + re.findall(r"(\d+(?:\.\d+)?)×", docs)
    assert quoted and all(_matches(q, measured) for q in quoted), quoted
    assert "400M" in sentence and "400M fp32 parameters" in results


def test_trainability_page_holds_its_script_results():
    """docs/trainability.md's tables are what docs/trainability.py made of docs/trainability_results.json, every
    run with at least 3 seeds, each with its figure; the README's sentence quotes those numbers."""
    spec = importlib.util.spec_from_file_location("trainability_docs", ROOT / "docs" / "trainability.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    results = json.loads((ROOT / "docs" / "trainability_results.json").read_text())
    page = (ROOT / "docs" / "trainability.md").read_text()
    assert set(results) == set(script.RUNS)
    for name, result in results.items():
        assert result["seeds"] >= 3 and result["steps"] == script.STEPS
        assert script.block(name, result) in page, name
        assert (ROOT / "docs" / "img" / f"trainability_{name}.png").read_bytes()[:4] == b"\x89PNG"
    readme = (ROOT / "README.md").read_text()
    assert "(docs/img/trainability_mlp-tanh-64.png)" in readme
    sentence = readme[readme.index("![does it train]"):].split("\n\n")[1]  # the paragraph under the figure
    quoted = re.findall(r"(\d+(?:\.\d+)?)%", sentence)
    accuracies = [100 * a for r in results.values() for e in r["schemes"].values() for a in e["test_acc"]]
    means = [100 * sum(e["test_acc"]) / len(e["test_acc"]) for r in results.values() for e in r["schemes"].values()]
    assert quoted and all(_matches(q, accuracies + means) for q in quoted), quoted
    prose = "\n".join(line for line in page.splitlines() if not line.startswith("|"))
    quoted = re.findall(r"(\d+(?:\.\d+)?)%", prose)
    assert len(quoted) >= 10 and all(_matches(q, accuracies + means) for q in quoted), quoted
