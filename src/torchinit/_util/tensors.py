"""Tensor facts that torch's type stubs cannot express, and how a writer stays complete or untouched. Imports
nothing from torchinit.

- :func:`is_uninitialized`: a lazy module's parameter or buffer (``nn.LazyLinear`` before its first forward),
  which has no shape and no values yet;
- :func:`tensor_stores`: a module's parameter and buffer registrations as dicts of tensors;
- **zero, then one write**, for a pattern on zeros with no temporary: ``try: t.zero_()`` then, in the
  ``finally``, one torch operation on arguments computed beforehand (``t.index_put_(index, values)``).
  CPython delivers a Ctrl-C only at a Python function's entry, after a C call returns or at a loop's
  back edge: one that lands after ``zero_()`` returns still gets the pattern written (complete), one
  before it writes nothing (untouched). ``identity_``, ``delta_orthogonal_`` and ``glass_`` do this;
- :func:`keeps_thread_modes`: a public writer leaves the thread's grad and dispatch modes as it found them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor, nn

__all__ = ["is_uninitialized", "keeps_thread_modes", "tensor_stores"]


def is_uninitialized(t: Any) -> bool:
    """Whether ``t`` is a lazy module's parameter or buffer, which has no shape or values until its first forward.

    Example:
        >>> is_uninitialized(nn.LazyLinear(3).weight), is_uninitialized(nn.Linear(2, 3).weight)
        (True, False)
    """
    return isinstance(t, nn.parameter.UninitializedTensorMixin)  # type: ignore[attr-defined]


def tensor_stores(module: nn.Module) -> tuple[dict[str, Tensor | None], dict[str, Tensor | None]]:
    """``module``'s own ``_parameters`` and ``_buffers`` (the dicts themselves), typed as holding tensors.

    torch annotates ``_parameters`` as holding Parameters; the code that registers stand-ins and staged
    tensors in either dict (a parameter's stand-in is a parameter too) writes them through this one view.
    """
    return cast("dict[str, Tensor | None]", module._parameters), module._buffers


def keeps_thread_modes(func: Callable[..., Any]) -> Callable[..., Any]:
    """``func``, which leaves the thread's grad mode and torch dispatch modes as it found them on every exit.

    torch's ``no_grad()`` restores the mode, and a ``TorchDispatchMode`` leaves the thread's mode
    stack, in a Python ``__exit__``; a Ctrl-C that lands at that method's entry skips it and leaves
    gradients off, or the mode installed, for the thread. Here the grad mode is put back by one C call,
    which an interrupt cannot split, and modes pushed within and left behind are popped.

    Example:
        >>> @keeps_thread_modes
        ... def f():
        ...     torch.set_grad_enabled(False)
        >>> f(); torch.is_grad_enabled()
        True
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        grad, modes = torch.is_grad_enabled(), torch._C._len_torch_dispatch_stack()
        try:
            return func(*args, **kwargs)
        finally:
            torch._C._set_grad_enabled(grad)
            while torch._C._len_torch_dispatch_stack() > modes:  # left by an interrupted __exit__
                torch._C._pop_torch_dispatch_stack()

    return wrapper
