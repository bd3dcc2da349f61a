"""A progress bar on stderr for long work (``lsuv_``, ``coord_check``), drawn with ``\\r`` and no dependency."""

from __future__ import annotations

import sys
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """A one-line bar, ``label [#####.....] done/total note``, redrawn in place on ``stream`` (stderr).

    ``enabled=None`` shows it only when the stream is a terminal; a disabled bar writes nothing. The line is ended
    by :meth:`close` (or leaving the ``with`` block), whatever happened. ``periodic=True``: where the stream is not a
    terminal (a log file, CI), a plain line at every tenth of the work instead of the redrawn bar.

    Example:
        >>> with Progress(3, "work", enabled=False) as bar:
        ...     for i in range(3):
        ...         bar.step(f"item {i}")
        >>> bar.done
        3
    """

    WIDTH = 30

    def __init__(self, total: int, label: str, *, enabled: bool | None = None, stream: TextIO | None = None,
                 periodic: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.total, self.label, self.done = max(int(total), 1), label, 0
        terminal = _is_terminal(self.stream)
        self.enabled = enabled if enabled is not None else (terminal or periodic)
        self.lines = self.enabled and periodic and not terminal  # one line per tenth, not a redrawn bar
        self._drawn = False

    def step(self, note: str = "") -> None:
        """One more unit done; ``note`` says which."""
        self.done += 1
        if self.lines:
            if self.done * 10 // self.total > (self.done - 1) * 10 // self.total or self.done == self.total:
                print(f"{self.label}: {100 * self.done // self.total}% ({self.done}/{self.total}) {note}",
                      file=self.stream, flush=True)  # fmt: skip
        elif self.enabled:
            filled = self.WIDTH * min(self.done, self.total) // self.total
            bar = "#" * filled + "." * (self.WIDTH - filled)
            print(f"\r{self.label} [{bar}] {self.done}/{self.total} {note[:40]:<40}", end="", file=self.stream,
                  flush=True)  # fmt: skip
            self._drawn = True

    def close(self) -> None:
        if self._drawn:
            print(file=self.stream, flush=True)
            self._drawn = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False
