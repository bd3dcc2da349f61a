"""Every golden value of ``cases.py`` recomputed and compared with ``digests.json``, bit for bit.

``digests.json`` was recorded on the code before torchinit was restructured into sub-packages.
A failure names the case whose value changed: the code now writes other bits than it did. Fix
the code; never regenerate the file to make this pass. Nothing here writes a file or changes the
global RNG.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from _thirdparty import need

HERE = Path(__file__).resolve().parent


def _load_cases() -> ModuleType:
    """``cases.py`` of this directory, under a name of its own (tests/ has no packages; any import mode works)."""
    name = "_torchinit_golden_cases"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / "cases.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # before running it: its dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules[name]


cases = _load_cases()
GOLDEN: dict[str, Any] = json.loads((HERE / "digests.json").read_text())
RECORDED_WITH: dict[str, str] = GOLDEN.pop(cases.ENVIRONMENT_KEY, {})
#: The cases by group (``fn/normal_``, ``model/gpt2``, ...): one test each, which reports every case that differs.
GROUPS: dict[str, list[str]] = {}
for _name, _case in cases.all_cases().items():
    GROUPS.setdefault(_case.group, []).append(_name)


def test_the_cases_are_the_recorded_ones():
    names = set(cases.all_cases())
    missing = sorted(names - set(GOLDEN))
    extra = sorted(set(GOLDEN) - names)
    assert not missing, f"{len(missing)} case(s) have no recorded value, e.g. {missing[:5]}"
    assert not extra, f"{len(extra)} recorded value(s) have no case, e.g. {extra[:5]}"


def _release(version: str | None) -> str:
    return ".".join((version or "").split("+")[0].split(".")[:2])


#: Whether the digests were recorded on another torch release (2.1 against 2.13, not 2.13.0 against 2.13.1).
OTHER_RELEASE = _release(RECORDED_WITH.get("torch")) != _release(cases.environment().get("torch"))


def torch_defined(name: str) -> bool:
    """Whether the bits of case ``name`` are torch's rather than torchinit's, so that another torch release may
    change them: draws from a torch generator or the global RNG go through torch's sampling kernels (the
    half-precision ``uniform_`` and ``normal_`` of torch 2.1 differ from 2.13's, as ``torch.nn.init``'s own values
    do), and float64 orthogonal matrices come from the build's LAPACK QR (a few ulps apart between builds). The
    keyed streams (``seed=``) and the deterministic schemes are torchinit's own on every release."""
    path = name.split("/")
    return path[-1] in ("generator", "global") or ("orthogonal_" in path[1] and "float64" in path)


@pytest.mark.parametrize("group", list(GROUPS))
def test_golden(group: str):
    names = [n for n in GROUPS[group] if not (OTHER_RELEASE and torch_defined(n))]
    for module in sorted({m for name in names for m in cases.all_cases()[name].requires}):
        need(module)
        top = module.split(".")[0]
        installed = cases.environment().get(top)
        if OTHER_RELEASE and top in RECORDED_WITH and installed != RECORDED_WITH[top]:  # (make compat's venv)
            pytest.skip(f"recorded with {top} {RECORDED_WITH[top]}; {installed} is installed")
    differ = []
    for name in names:
        got = cases.compute_case(name)
        if name not in GOLDEN or got != GOLDEN[name]:
            recorded = repr(GOLDEN[name]) if name in GOLDEN else "(nothing)"
            differ.append(f"{name}\n    recorded: {recorded}\n    now:      {got!r}")
    if differ:  # (on another torch release, only the cases whose bits are torchinit's own were compared)
        now = cases.environment()
        changed = {k: f"{RECORDED_WITH.get(k)} -> {now.get(k)}" for k in sorted({*RECORDED_WITH, *now})
                   if RECORDED_WITH.get(k) != now.get(k)}  # fmt: skip
        where = f"\n(recorded in another environment: {changed})" if changed else ""
        pytest.fail(f"{len(differ)} of the {len(names)} cases of {group} differ from the values recorded before the "
                    "restructure:\n  " + "\n  ".join(differ) + where, pytrace=False)
