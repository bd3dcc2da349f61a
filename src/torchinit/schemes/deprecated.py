"""The deprecated names of ``torch.nn.init`` (``uniform``, ``normal``, ...): they work and warn, as torch's do.

torch 2.13 keeps eleven aliases without the trailing underscore that call the in-place
function and emit a ``FutureWarning``. torchinit keeps them so that code written against
``torch.nn.init`` runs unchanged with ``import torchinit as init``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from torchinit._util.warn import warn
from torchinit.schemes.basic import constant_, dirac_, eye_, normal_, uniform_
from torchinit.schemes.structured import orthogonal_, sparse_
from torchinit.schemes.variance import kaiming_normal_, kaiming_uniform_, xavier_normal_, xavier_uniform_

__all__ = ["ALIASES"]


def _deprecated(function: Callable[..., Any]) -> Callable[..., Any]:
    new_name = function.__name__
    old_name = new_name[:-1]

    @functools.wraps(function)
    def alias(*args: Any, **kwargs: Any) -> Any:
        warn(
            f"`torchinit.{old_name}` is deprecated in favor of `torchinit.{new_name}` (as `nn.init.{old_name}` is).",
            FutureWarning,
            stacklevel=2,
        )
        return function(*args, **kwargs)

    alias.__name__ = alias.__qualname__ = old_name
    alias.__doc__ = f"{old_name}(...): deprecated, use :func:`torchinit.{new_name}`, which it calls."
    return alias


#: The aliases, by old name (torch.nn.init 2.13's list).
ALIASES = {
    f.__name__[:-1]: _deprecated(f)
    for f in (uniform_, normal_, constant_, eye_, dirac_, xavier_uniform_, xavier_normal_, kaiming_uniform_,
              kaiming_normal_, orthogonal_, sparse_)
}  # fmt: skip
