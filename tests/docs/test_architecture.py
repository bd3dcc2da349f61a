"""docs/architecture.md stays the map: every layer and every module of each layer is on it, in the contract's order."""

import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import torchinit

tomllib = pytest.importorskip("tomllib", reason="Python >= 3.11 reads pyproject.toml")

ROOT = Path(__file__).resolve().parents[2]
PAGE = (ROOT / "docs" / "architecture.md").read_text()
CONTRACTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
LAYERS = next(c for c in CONTRACTS if c["containers"] == ["torchinit"])["layers"]


def _modules(package: str) -> list[str]:
    path = Path(torchinit.__file__).parent / package
    return sorted(m.name for m in pkgutil.iter_modules([str(path)]) if not m.name.startswith("_philox"))


def test_every_layer_is_in_the_diagram_in_the_contracts_order():
    diagram = PAGE[PAGE.index("```") : PAGE.index("```", PAGE.index("```") + 3)]
    rows = [line.split()[0] for line in diagram.splitlines()[1:] if re.match(r"^\s\s?\w", line)]
    assert [r for r in rows if r in LAYERS] == LAYERS


def test_every_module_of_every_layer_is_named_on_the_page():
    for layer in LAYERS:
        for module in _modules(layer):
            assert re.search(rf"\b{module}\b", PAGE), f"{layer}.{module} is not on docs/architecture.md"


def test_every_sub_package_is_a_declared_layer():
    packages = sorted(m.name for m in pkgutil.iter_modules(torchinit.__path__) if m.ispkg)
    assert packages == sorted(LAYERS)


def test_no_module_is_named_like_a_public_function_or_class():
    """``import torchinit.x`` must never hand back a function: no module of any layer is named like a public
    function or class (``probe``, ``fans``, ``fingerprint``, ``deferred``). The public modules ``presets`` and
    ``trainability`` are modules whose implementation has the same name in its layer."""
    for m in pkgutil.walk_packages(torchinit.__path__, "torchinit."):
        short = m.name.rsplit(".", 1)[-1]
        attribute = getattr(torchinit, short, None)
        if attribute is not None:
            kind = type(attribute).__name__
            assert inspect.ismodule(attribute), f"{m.name} is named like torchinit.{short}, a {kind}"


def test_the_complexity_check_flags_a_function_over_the_limit(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("complexity", ROOT / "tools" / "complexity.py")
    complexity = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(complexity)
    branches = "".join(f"    if x == {i}:\n        return {i}\n" for i in range(16))
    (tmp_path / "pkg").mkdir()
    source = f"def simple(x):\n    return x\n\n\ndef branchy(x):\n{branches}    return -1\n"
    (tmp_path / "pkg" / "m.py").write_text(source)
    found = complexity.measure(tmp_path)
    assert found == {"pkg.m:simple": 1, "pkg.m:branchy": 17}
    assert complexity.problems(found) == ["pkg.m:branchy: complexity 17 > 15"]
    assert complexity.problems(complexity.measure()) == []  # and src/ is within the limit


def test_the_old_flat_module_paths_still_import():
    """torchinit 0.1's module paths name the modules that hold their contents now (old pickles load); the
    public modules are the implementation modules themselves (every name, monkeypatching included)."""
    import importlib
    import pickle

    from torchinit._legacy import MOVED

    for old, new in MOVED.items():
        assert importlib.import_module(f"torchinit.{old}") is importlib.import_module(f"torchinit.{new}")
        assert getattr(torchinit, old) is importlib.import_module(f"torchinit.{new}")
    # what torchinit 0.1 wrote for KaimingNormal(mode="fan_out"): the class by its old module path (protocol 2
    # names it in a newline-terminated text opcode, so the path can be swapped in place)
    new_pickle = pickle.dumps(torchinit.KaimingNormal(mode="fan_out"), protocol=2)
    old_pickle = new_pickle.replace(b"torchinit.schemes.initializers\n", b"torchinit.initializers\n")
    assert old_pickle != new_pickle
    assert pickle.loads(old_pickle) == torchinit.KaimingNormal(mode="fan_out")
    assert importlib.import_module("torchinit.presets").__name__ == "torchinit.model.presets"
    assert importlib.import_module("torchinit.trainability").__name__ == "torchinit.diagnostics.trainability"
    assert callable(torchinit.fans) and callable(torchinit.probe) and callable(torchinit.fingerprint)
