"""torchinit's warnings, and a context that silences them in the current thread only.

Validation runs a scheme on meta tensors (an ``Initializer``'s settings when it is built, a policy's
rules before ``apply_`` writes anything); the real call warns later, so these dry runs must not.
``warnings.catch_warnings`` cannot do that safely: it swaps the process-wide filter list, so another
thread's ``warnings.filterwarnings`` during the dry run is lost. :func:`quiet` sets a context variable
instead, which every warning of torchinit's checks; other threads and other libraries' warnings are
untouched.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import warnings
from collections.abc import Iterator

_QUIET = contextvars.ContextVar("torchinit_quiet", default=False)


def warn(message: str, category: type[Warning] = UserWarning, stacklevel: int | None = None) -> None:
    """``warnings.warn(message, category, stacklevel)`` unless :func:`quiet` is active in this context.

    ``stacklevel`` counts as in ``warnings.warn`` from the caller of this function. None (the default):
    the warning points at the first frame outside torchinit, the user's call, however deep inside the
    package it was raised (as Python 3.12's ``skip_file_prefixes`` does).
    """
    if not _QUIET.get():
        level = _first_outside_package() if stacklevel is None else stacklevel + 1
        warnings.warn(message, category, stacklevel=level)


def _first_outside_package() -> int:
    """The ``stacklevel``, counted from ``warn``'s caller's caller, of the first frame not in torchinit's files."""
    frame = sys._getframe(2)  # warn's caller
    level = 2
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level


# torchinit's own files, by path: ``python -m torchinit`` runs torchinit/__main__.py under the name "__main__"
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence torchinit's own warnings in this thread (and task) for the duration of the block."""
    previous = _QUIET.get()
    try:  # set inside the try: a Ctrl-C right after it still puts the previous value back
        _QUIET.set(True)
        yield
    finally:
        _QUIET.set(previous)
