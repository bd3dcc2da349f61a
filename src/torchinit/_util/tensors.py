"""Tensor facts that torch's type stubs cannot express, and how a writer stays complete or untouched. Imports only
``_util.checks``.

- :func:`is_uninitialized`: a lazy module's parameter or buffer (``nn.LazyLinear`` before its first forward),
  which has no shape and no values yet;
- :func:`tensor_stores`: a module's parameter and buffer registrations as dicts of tensors;
- :func:`write_pattern`: zeros with values at an index, complete or untouched, with no temporary where
  torch runs the writes without Python code around them;
- :func:`keeps_thread_modes`: a public writer leaves the thread's grad and dispatch modes as it found them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor, nn

from torchinit._util.checks import _compiling

__all__ = ["is_uninitialized", "keeps_thread_modes", "tensor_stores", "write_pattern"]


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
        if _compiling():  # traced by torch.compile: no Python runs at call time to interrupt, nothing to put back
            return func(*args, **kwargs)
        grad, before = torch.is_grad_enabled(), _dispatch_stack()
        try:
            return func(*args, **kwargs)
        finally:
            torch._C._set_grad_enabled(grad)
            _exit_modes_pushed_since(before)  # left by an interrupted __exit__: exit them now

    return wrapper


def _dispatch_stack() -> list[Any]:
    return [torch._C._get_dispatch_stack_at(i) for i in range(torch._C._len_torch_dispatch_stack())]


def _exit_modes_pushed_since(before: list[Any]) -> None:
    """Exit the dispatch modes on the stack now that were not on it in ``before``, the latest listed first, never one
    the caller pushed: torch 2.2 and later list their own modes (fake, proxy, functional) before the others, so the
    last entry is not the last pushed. Where a mode's ``__exit__`` was cut off after its bookkeeping (torch's flag
    deques popped, the stack entry not), running it again fails: then only its stack entry is removed."""
    kept = {id(m) for m in before}
    while True:
        stack = _dispatch_stack()
        new = [m for m in stack if id(m) not in kept]
        if not new:
            return
        mode = new[-1]
        try:
            mode.__exit__(None, None, None)
        except Exception:
            _remove_from_stack(mode)
        if len(_dispatch_stack()) >= len(stack):
            return  # no progress: leave it rather than loop


def _remove_from_stack(mode: Any) -> None:
    """Take ``mode`` off the dispatch stack: one of torch's by its key, any other only when it is the last entry."""
    stack = _dispatch_stack()
    if not any(m is mode for m in stack):
        return
    key = mode.__dict__.get("_mode_key")
    if key is not None:
        torch._C._pop_torch_dispatch_stack(key)
    elif stack[-1] is mode:
        _pop_dispatch_stack(None)


def _pop_dispatch_stack(key: Any) -> None:
    """Take the innermost entry off the dispatch stack: by its mode key on torch 2.2 and later, none before."""
    try:
        torch._C._pop_torch_dispatch_stack(key)
    except TypeError:  # torch 2.1: no argument
        torch._C._pop_torch_dispatch_stack()


def write_pattern(t: Tensor, index: Any, values: Any) -> None:
    """``t`` becomes zeros with ``values`` at ``index`` (``t[index] = values``): complete or untouched.

    CPython delivers a Ctrl-C only at a Python function's entry, after a C call returns or at a
    loop's back edge. On a plain tensor with no torch-function or dispatch mode active, torch runs
    ``zero_()`` and the indexed write as C calls with no Python code around them, so the write sits
    in the ``finally`` of the zeroing: an interrupt after ``zero_()`` still gets the pattern
    (complete), one before writes nothing (untouched), and no temporary is needed. Anywhere else
    (a tensor subclass, ``with torch.device(...)``, ``deferred()``'s recording), Python code runs
    around each operation, so the pattern is built in a zero tensor and copied in one write.
    ``index`` and ``values`` must be computed beforehand.

    Example:
        >>> t = torch.ones(2, 2)
        >>> write_pattern(t, (torch.tensor([0, 1]), torch.tensor([1, 0])), 3.0)
        >>> t
        tensor([[0., 3.],
                [3., 0.]])
    """
    with torch.no_grad():
        if type(t) in (Tensor, nn.Parameter) and not _python_around_ops():
            try:
                t.zero_()
            finally:
                t[index] = values
        else:
            result = torch.zeros_like(t)
            result[index] = values
            t.copy_(result)


def _python_around_ops() -> bool:
    """Whether a torch-function mode or a dispatch mode runs Python code around torch operations here."""
    return bool(torch._C._is_torch_function_mode_enabled() or torch._C._len_torch_dispatch_stack())
