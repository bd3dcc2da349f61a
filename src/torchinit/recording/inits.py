"""The torch.nn.init functions that are recorded as whole calls, in one table.

These functions return at once on a meta tensor (torch 2.13), so their effect never reaches ATen and a
recording of construction would not see it. (torch 2.2's run their operations on it; recorded whole, that run is
only a validation, and records nothing.) Within ``deferred()`` they are patched with
:func:`~torchinit.recording.log.recorded_call` and their calls are recorded whole; every one of them writes
each element of its tensor without reading it (an overwrite). A keyed replay (``materialize_(seed=)``)
runs such a call as torchinit's twin, the function with ``seed=`` that draws the same distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DATA_FACTORIES", "PatchedInit", "PATCHED_INITS", "PATCHED_ATTRIBUTES", "RECORDED_NAMES", "keyed_twin_name",
    "recorded_name",
]  # fmt: skip


@dataclass(frozen=True)
class PatchedInit:
    """One torch.nn.init function that ``deferred()`` records whole."""

    #: The name its calls are recorded under (:attr:`~torchinit.recording.log.Op.name`): the public name.
    recorded_as: str
    #: The attribute of torch.nn.init that is patched: the function itself, or a helper that it looks up at
    #: call time (``trunc_normal_`` calls ``_no_grad_trunc_normal_``, which is patched, so that its callers'
    #: references to ``trunc_normal_`` itself are recorded as well).
    patched: str
    #: The public name in ``torchinit`` of the function with ``seed=`` that draws the same distribution,
    #: or None when there is none (``dirac_`` is deterministic).
    keyed_twin: str | None

    @property
    def patches_helper(self) -> bool:
        """Whether the patched attribute is a helper the public function looks up at call time: then references to
        the public function taken elsewhere (transformers' table, ``from torch.nn.init import ...``) need no patch."""
        return self.patched != self.recorded_as


PATCHED_INITS: tuple[PatchedInit, ...] = (
    PatchedInit(recorded_as="trunc_normal_", patched="_no_grad_trunc_normal_", keyed_twin="trunc_normal_"),
    PatchedInit(recorded_as="orthogonal_", patched="orthogonal_", keyed_twin="orthogonal_"),
    PatchedInit(recorded_as="sparse_", patched="sparse_", keyed_twin="sparse_"),
    PatchedInit(recorded_as="dirac_", patched="dirac_", keyed_twin=None),
)

#: The attributes of torch.nn.init that ``deferred()`` patches, in table order.
PATCHED_ATTRIBUTES: tuple[str, ...] = tuple(init.patched for init in PATCHED_INITS)

#: The names their whole calls are recorded under.
RECORDED_NAMES: frozenset[str] = frozenset(init.recorded_as for init in PATCHED_INITS)


def keyed_twin_name(func: object) -> str | None:
    """The public name of torchinit's keyed twin of the torch.nn.init function ``func``, or None.

    ``func`` may be the patched attribute or the public function (``_no_grad_trunc_normal_`` and
    ``trunc_normal_`` both give ``"trunc_normal_"``); anything that is not one of :data:`PATCHED_INITS`
    in torch.nn.init, or has no twin, gives None.

        >>> import torch
        >>> keyed_twin_name(torch.nn.init._no_grad_trunc_normal_), keyed_twin_name(torch.nn.init.dirac_)
        ('trunc_normal_', None)
    """
    if getattr(func, "__module__", None) != "torch.nn.init":
        return None
    name = getattr(func, "__name__", "")
    for init in PATCHED_INITS:
        if name in (init.recorded_as, init.patched):
            return init.keyed_twin
    return None


def recorded_name(func: object) -> str:
    """The name a whole call of ``func`` is recorded under: its own, or for a patched helper of torch.nn.init the
    public function's (``_no_grad_trunc_normal_`` is recorded as ``trunc_normal_``)."""
    name: str = getattr(func, "__name__", "")
    for init in PATCHED_INITS:
        if name == init.patched:
            return init.recorded_as
    return name


#: The factories that build a tensor from Python data (a list, a NumPy array), as ``(holder, attribute)`` names:
#: ``torch.tensor``, ``torch.as_tensor``, ``torch.asarray``, ``Tensor.new_tensor`` and the legacy ``Tensor.new``.
#: torch fills such a tensor below the dispatcher, so on the meta device (``device=p.device`` under
#: ``deferred()``) a recording sees no operation make it. Within ``deferred()`` they are patched with
#: :func:`~torchinit.recording.threads.recorded_factory`, which records the value. (The legacy typed
#: constructors, ``torch.FloatTensor(...)``, refuse the meta device, so they never make a meta tensor.)
DATA_FACTORIES: tuple[tuple[str, str], ...] = (
    ("torch", "tensor"), ("torch", "as_tensor"), ("torch", "asarray"), ("torch.Tensor", "new_tensor"),
    ("torch.Tensor", "new"),
)  # fmt: skip
