"""The entry point of the ``torchinit`` command (``[project.scripts] torchinit = "_torchinit_cli:main"``).

It lives outside the ``torchinit`` package on purpose. Importing any module of the package first runs
``torchinit/__init__.py``, which imports torch: seconds in which a Ctrl-C would escape as a traceback (and
the process end by the signal) before any code of the command could catch it. This module imports only the
standard library, installs the command's SIGINT handler, and then imports the command, so that a Ctrl-C at
any moment, during ``import torch`` included, prints one line and exits with status 130, as the command does
once it runs (:func:`torchinit.cli.commands.main`). Only this entry point installs a handler: ``import
torchinit`` and ``torchinit.cli.commands.main`` change no process-wide state.

What Python does before this module runs (its own start-up and ``site``, tens of milliseconds) is outside
any program's reach: a Ctrl-C there ends the process by the signal, which a shell reports as status 130.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Any

#: The exit status of an interrupted command (128 + SIGINT), as a shell reports it.
INTERRUPTED = 130

_interrupts: list[int] = []  # the Ctrl-Cs received, in this process


def _on_interrupt(signum: int, frame: Any) -> None:
    """The first Ctrl-C raises KeyboardInterrupt (cleanup runs, the command reports it); a second one, while the
    first is being handled or after something swallowed it, ends the process at once."""
    _interrupts.append(signum)
    if len(_interrupts) == 1:
        raise KeyboardInterrupt
    _exit_interrupted(signum, frame)


def _exit_interrupted(signum: int, frame: Any) -> None:
    """End the process at once with status 130, one line on stderr (nothing is left to report or put back)."""
    try:
        os.write(2, b"torchinit: interrupted\n")
    finally:
        os._exit(INTERRUPTED)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):  # closed early (| head), or not a real file
            stream.flush()


def _run(argv: list[str] | None) -> int:
    from torchinit.cli.commands import main as command  # imports torch: seconds

    signal.signal(signal.SIGINT, _on_interrupt)  # from here on a Ctrl-C raises: the command reports it
    return command(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the ``torchinit`` command with ``argv`` (default: ``sys.argv[1:]``) and return its exit status.

    Example:
        >>> main(["--version"])  # doctest: +SKIP
        torchinit 0.1.0
        0
    """
    # During the import nothing needs cleaning up, and a KeyboardInterrupt raised there can pass through torch's
    # C++ code (pybind11), which then aborts the process (status -6): a Ctrl-C ends it at once instead.
    signal.signal(signal.SIGINT, _exit_interrupted)
    try:
        status: int | None = _run(argv)
    except KeyboardInterrupt:  # during the import, or a second one while the command reported the first
        status = None
    if status is None or (_interrupts and status != INTERRUPTED):  # not reported by the command itself
        print("torchinit: interrupted", file=sys.stderr)
        status = INTERRUPTED
    _flush()
    if _interrupts:
        # Interrupted, and nothing is left to do: end here, with this status. Returning, the interpreter would end
        # the process by the signal instead when the KeyboardInterrupt passed through a nested PyRun_* call on its
        # way here (torch's C++ code runs Python that way): that marks it unhandled, although it was caught, and a
        # ``python -m`` run then ends by SIGINT (status -2 to a parent process) after the line was printed.
        os._exit(INTERRUPTED)
    # from here on only the interpreter's shutdown runs (thread joins, atexit): a Ctrl-C there ends it at once
    signal.signal(signal.SIGINT, _exit_interrupted)
    return status


if __name__ == "__main__":
    sys.exit(main())
