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
import warnings
from collections.abc import Iterator

_QUIET = contextvars.ContextVar("torchinit_quiet", default=False)


def warn(message: str, category: type[Warning] = UserWarning, stacklevel: int = 1) -> None:
    """``warnings.warn(message, category, stacklevel)`` unless :func:`quiet` is active in this context.

    ``stacklevel`` counts as in ``warnings.warn`` from the caller of this function.
    """
    if not _QUIET.get():
        warnings.warn(message, category, stacklevel=stacklevel + 1)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence torchinit's own warnings in this thread (and task) for the duration of the block."""
    token = _QUIET.set(True)
    try:
        yield
    finally:
        _QUIET.reset(token)
