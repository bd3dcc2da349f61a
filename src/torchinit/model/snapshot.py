"""One snapshot of a model's state, to put it back after a call that failed or that only looks.

Whole-model calls that write (``Policy.apply_``, ``materialize_``) keep a :class:`Snapshot` so that
a call that raises, ``KeyboardInterrupt`` included, leaves the model as it was (all or nothing).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from torchinit.recording.log import storage_key

__all__ = ["Snapshot"]


class Snapshot:
    """What a whole-model call may change, kept so that a failed call can put the model back (all or nothing).

    Kept: every module's attributes and its parameter, buffer and child registrations
    (shallow copies: no tensor memory), every parameter's and buffer's ``requires_grad``
    and Python attributes, the state of ``generator``, and a clone of each real tensor in
    ``writes``, with its storage (the tensors the call writes in place: the only tensor
    memory this costs). :meth:`restore` puts all of it back; :meth:`on_failure` does so
    when the block it guards raises anything, ``KeyboardInterrupt`` included.

    Example:
        >>> layer = nn.Linear(2, 2)
        >>> before = layer.weight.detach().clone()
        >>> snapshot = Snapshot(layer, writes=[layer.weight])
        >>> with torch.no_grad():
        ...     _ = layer.weight.fill_(7.0)
        >>> snapshot.restore()
        >>> torch.equal(layer.weight, before)
        True
    """

    def __init__(
        self, model: nn.Module, *, writes: Iterable[Tensor] = (), generator: torch.Generator | None = None
    ) -> None:
        self.modules = [(m, dict(m.__dict__), [(d, dict(d)) for d in (m._parameters, m._buffers, m._modules)])
                        for m in model.modules()]  # fmt: skip
        tensors = {id(t): t for m in model.modules() for t in (*m._parameters.values(), *m._buffers.values())
                   if t is not None}  # fmt: skip
        self.tensors = [(t, t.requires_grad, dict(t.__dict__)) for t in tensors.values()]
        real = {id(t): t for t in writes
                if not t.is_meta and not isinstance(t, nn.parameter.UninitializedTensorMixin)}  # fmt: skip
        self.values = [(t, t.detach().clone(), t.untyped_storage(), storage_key(t), t.storage_offset(), t.size(),
                        t.stride()) for t in real.values()]  # fmt: skip
        self.rng = None if generator is None else (generator, generator.get_state())

    def restore(self) -> None:
        """Put the model (and the generator) back as they were when the snapshot was taken."""
        with torch.no_grad():
            for t, value, storage, key, offset, size, stride in self.values:
                if storage_key(t) != key:  # set_ gave it another storage (a parametrization's right_inverse)
                    t.set_(storage, offset, size, stride)
                t.copy_(value)
        for module, attributes, stores in self.modules:
            _put_back(module.__dict__, attributes)
            for store, saved in stores:
                _put_back(store, saved)
        for t, requires_grad, attributes in self.tensors:
            if t.requires_grad != requires_grad:
                t.requires_grad_(requires_grad)
            _put_back(t.__dict__, attributes)
        if self.rng is not None:
            self.rng[0].set_state(self.rng[1])

    @contextlib.contextmanager
    def on_failure(self) -> Iterator[None]:
        """Run the block; if it raises anything, :meth:`restore` and re-raise."""
        try:
            yield
        except BaseException:
            self.restore()
            raise


def _put_back(d: dict[str, Any], saved: dict[str, Any]) -> None:
    """Make ``d`` hold ``saved`` again, in its order (compared by identity: values may be tensors)."""
    if len(d) != len(saved) or any(k != j or v is not w for (k, v), (j, w) in zip(d.items(), saved.items())):
        d.clear()
        d.update(saved)
