"""Public writers leave the thread's grad mode and dispatch-mode stack as they found them, even when an interrupt
skipped an ``__exit__`` inside them (``_util.tensors.keeps_thread_modes``)."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from torchinit._util.tensors import keeps_thread_modes


class _Passing(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


@keeps_thread_modes
def _skips_its_exits(outer_grad: bool):
    """Enters a dispatch mode and turns gradients off without leaving either, as an interrupt at the entry of
    their ``__exit__`` would, then raises the interrupt."""
    _Passing().__enter__()
    torch.set_grad_enabled(not outer_grad)
    raise KeyboardInterrupt


@pytest.mark.parametrize("grad", [True, False])
def test_a_mode_left_pushed_is_exited_and_the_interrupt_still_propagates(grad):
    with torch.set_grad_enabled(grad):
        depth = torch._C._len_torch_dispatch_stack()
        with pytest.raises(KeyboardInterrupt):
            _skips_its_exits(grad)
        assert torch._C._len_torch_dispatch_stack() == depth and torch.is_grad_enabled() == grad
    torch.manual_seed(3)
    a = torch.rand(4)
    torch.manual_seed(3)
    assert torch.equal(a, torch.rand(4))  # no mode left between the draws and the global generator


def test_a_mode_the_caller_pushed_stays():
    with _Passing():
        depth = torch._C._len_torch_dispatch_stack()
        with pytest.raises(KeyboardInterrupt):
            _skips_its_exits(True)
        assert torch._C._len_torch_dispatch_stack() == depth == 1
    assert torch._C._len_torch_dispatch_stack() == 0


class _HalfExited(_Passing):
    """A mode whose first ``__exit__`` is cut off as a Ctrl-C can cut torch's own: its bookkeeping done (here: all
    of it), its entry still on the dispatch stack, and an exception; running ``__exit__`` again would fail."""

    def __init__(self) -> None:
        super().__init__()
        self.exits = 0

    def __exit__(self, *exc):
        self.exits += 1
        if self.exits > 1:
            raise IndexError("pop from an empty deque")  # what torch's __exit__ raises when run a second time
        super().__exit__(*exc)
        torch._C._push_on_torch_dispatch_stack(self)
        raise KeyboardInterrupt


@keeps_thread_modes
def _exits_half(mode: _HalfExited):
    with mode:
        pass


def test_a_mode_whose_exit_was_cut_off_is_taken_off_the_stack():
    depth = torch._C._len_torch_dispatch_stack()
    mode = _HalfExited()
    with pytest.raises(KeyboardInterrupt):
        _exits_half(mode)
    assert torch._C._len_torch_dispatch_stack() == depth and mode.exits == 2


@keeps_thread_modes
def _leaves_a_fake_mode_on():
    from torch._subclasses.fake_tensor import FakeTensorMode

    FakeTensorMode().__enter__()  # as a Ctrl-C at the start of its __exit__ would leave it


def test_a_torch_mode_left_on_is_exited_and_the_callers_own_mode_stays():
    """torch 2.2 and later list their own modes (fake, proxy, functional) before the others: the mode left on is
    found by identity, not taken as the last entry of the stack, which is the caller's here."""
    caller = _Passing()
    with caller:
        _leaves_a_fake_mode_on()
        stack = [torch._C._get_dispatch_stack_at(i) for i in range(torch._C._len_torch_dispatch_stack())]
        assert stack == [caller]
    assert torch._C._len_torch_dispatch_stack() == 0
