"""Plain-text tables for reports and the command line. Imports nothing from torchinit."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["text_table"]


def text_table(header: Sequence[str], rows: Iterable[Sequence[str]], numeric: Iterable[int] = ()) -> str:
    """Columns padded to their widest cell, a dashed rule under the header; ``numeric`` columns right-aligned.

    Example:
        >>> print(text_table(("name", "std"), [("a", "1.0"), ("bb", "0.25")], numeric={1}))
        name   std
        ----  ----
        a      1.0
        bb    0.25
    """
    rows = [tuple(map(str, r)) for r in rows]
    right = set(numeric)
    widths = [max(len(r[i]) for r in [tuple(header), *rows]) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in [tuple(header), *rows]]  # fmt: skip
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
