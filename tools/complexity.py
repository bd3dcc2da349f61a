"""Fail when a function, method or class in src/ is more complex than the limit (radon's cyclomatic complexity).

    python tools/complexity.py            # exit 1 and a list when something is over the limit

``PENDING`` lists the functions that were over the limit when the check was introduced, each with the
complexity it had then. They may only go down: one that grew fails, and one that reached the limit must
be removed from the list (so the list only shrinks, and ends empty).
"""

from __future__ import annotations

import sys
from pathlib import Path

from radon.complexity import cc_visit

LIMIT = 15
ROOT = Path(__file__).resolve().parents[1] / "src"

#: "module:qualified name" -> complexity when the check was introduced (to be refactored below LIMIT)
PENDING: dict[str, int] = {
}


def measure(root: Path = ROOT) -> dict[str, int]:
    """Complexity of every function, method and class under ``root``, keyed "module:qualified name"."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        module = ".".join(path.relative_to(root).with_suffix("").parts)
        for block in cc_visit(path.read_text()):
            found[f"{module}:{block.fullname}"] = block.complexity
            for inner in getattr(block, "closures", []):
                found[f"{module}:{block.fullname}.{inner.name}"] = inner.complexity
    return found


def problems(found: dict[str, int]) -> list[str]:
    """What the check reports: new functions over the limit, pending ones that grew or are now within it."""
    out = []
    for name, value in sorted(found.items()):
        allowed = PENDING.get(name, LIMIT)
        if value > allowed:
            out.append(f"{name}: complexity {value} > {allowed}")
    for name in sorted(PENDING):
        if found.get(name, 0) <= LIMIT:
            out.append(f"{name}: now within {LIMIT} (or gone): remove it from PENDING")
    return out


def main() -> int:
    report = problems(measure())
    for line in report:
        print(line)
    return 1 if report else 0


if __name__ == "__main__":
    sys.exit(main())
