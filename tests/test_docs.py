"""Every public function documents its formula, defaults and an example."""

import inspect
from pathlib import Path

import pytest

import torchinit as ti

PUBLIC = [n for n in ti.__all__ if inspect.isfunction(getattr(ti, n))]
ROOT = Path(__file__).resolve().parents[1]


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


@pytest.mark.parametrize("page", ["fans.md", "gain.md", "truncated_normal.md"])
def test_docs_pages_exist(page):
    assert (ROOT / "docs" / page).read_text().strip()
