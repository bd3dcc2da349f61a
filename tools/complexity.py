"""Fail when a function, method or class in src/ is more complex than the limit (radon's cyclomatic complexity).

    python tools/complexity.py            # exit 1 and a list when something is over the limit

radon counts one per decision (if, for, while, except, with, assert, a boolean operator, a comprehension's
if) plus one; a class counts as the average of its methods. Above 15 a function is split into named steps.
"""

from __future__ import annotations

import sys
from pathlib import Path

from radon.complexity import cc_visit

LIMIT = 15
ROOT = Path(__file__).resolve().parents[1] / "src"


def measure(root: Path = ROOT) -> dict[str, int]:
    """Complexity of every function, method, class and closure under ``root``, keyed "module:qualified name"."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        module = ".".join(path.relative_to(root).with_suffix("").parts)
        for block in cc_visit(path.read_text()):
            found[f"{module}:{block.fullname}"] = block.complexity
            for inner in getattr(block, "closures", []):
                found[f"{module}:{block.fullname}.{inner.name}"] = inner.complexity
    return found


def problems(found: dict[str, int]) -> list[str]:
    """One line for each block over :data:`LIMIT`."""
    return [f"{name}: complexity {value} > {LIMIT}" for name, value in sorted(found.items()) if value > LIMIT]


def main() -> int:
    report = problems(measure())
    for line in report:
        print(line)
    return 1 if report else 0


if __name__ == "__main__":
    sys.exit(main())
