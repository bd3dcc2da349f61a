"""One snapshot of a model's state, to put it back after a call that failed or that only looks.

One mechanism, taken two ways:

* ``Snapshot(model, writes=..., generator=...)``: what a whole-model call that writes
  (``Policy.apply_``, ``materialize_``) may change, so that a call that raises,
  ``KeyboardInterrupt`` included, leaves the model as it was (all or nothing, see
  :meth:`Snapshot.on_failure`). Cheap: the only tensors copied are those in ``writes``.
* :meth:`Snapshot.everything`: everything a forward pass may change, for the diagnostics
  that only look (``probe``, ``jacobian_spectrum``) or that mean to change some weights
  and nothing else (``lsuv_``). Used as a context manager, the block's changes are undone
  on the way out. It costs one copy of the model's tensors.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.nn.parameter import is_lazy

from torchinit.recording.log import storage_key

__all__ = ["Snapshot"]

#: Types of module attributes whose contents :meth:`Snapshot.everything` keeps (shallow: the items, not their state).
_CONTAINERS = (dict, OrderedDict, list, set)
#: Integer dtypes of each element size, to compare floating-point tensors bit for bit.
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}

#: How to read and how to set one random number generator's state.
StatePair = tuple[Callable[[], Any], Callable[[Any], Any]]


class _Part(Protocol):
    """One kind of state a snapshot keeps and can put back."""

    def restore(self, failed: bool) -> None:
        """Put the state back; ``failed``: the guarded block raised (a successful one may keep some changes)."""


class Snapshot:
    """What a call may change in a model, kept so that it can be put back (all or nothing, or look-only).

    ``Snapshot(model, writes=..., generator=...)`` keeps: every module's attributes and its
    parameter, buffer and child registrations (shallow copies: no tensor memory), every
    parameter's and buffer's ``requires_grad`` and Python attributes, the state of
    ``generator``, and a clone of each real tensor in ``writes``, with its storage (the
    tensors the call writes in place: the only tensor memory this costs). :meth:`restore`
    puts all of it back; :meth:`on_failure` does so when the block it guards raises
    anything, ``KeyboardInterrupt`` included. :meth:`everything` keeps more, for a block
    that only looks (see there).

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
        modules = list(model.modules())
        self._random = _RandomStates(_generator_states([generator] if generator is not None else []))
        self._parts: list[_Part] = [_Writes(writes), _Modules(modules, _registries), _TensorFlags(modules),
                                    self._random]  # fmt: skip

    @classmethod
    def everything(
        cls, model: nn.Module, *, keep: Sequence[Tensor] = (), generators: Sequence[torch.Generator] = ()
    ) -> Snapshot:
        """A snapshot of everything a forward pass may change in ``model``; use it as a context manager at once.

        It keeps, for every module of ``model`` (``model.modules()``):

        - its ``__dict__`` bindings: parameters, buffers and submodules by name (the same
          tensor and module objects come back, so a buffer a forward pass *reassigns*, say
          ``self.count = self.count + 1``, or registers again, is put back), hooks,
          ``training`` and any plain attribute (a step counter); the contents of attributes
          that are lists, dicts or sets (shallow: the items come back, not the items' state);
        - the values of every parameter, buffer and tensor attribute (one copy each, on its
          own device: **this doubles the memory of the model's tensors for the duration**),
          their ``requires_grad`` and their ``.grad`` (set aside, not copied: ``.grad`` is
          None from the moment the snapshot is taken, so a backward pass writes fresh ones);
        - the states of the ``torch.Generator`` attributes of the modules and of
          ``generators``: private generators, the model's and the caller's own. Never the
          process-wide ones (torch's global CPU and CUDA generators, Python's ``random``,
          NumPy's): setting them back would rewind the stream of every other thread that
          drew meanwhile, which would then draw the same numbers again. A block that must
          not advance them draws from private ones instead (the diagnostics run the forward
          pass under :class:`~torchinit.diagnostics.probing.private_random`).

        On leaving the ``with`` block, also by an exception or a KeyboardInterrupt (which
        then propagates), all of that is put back: values are written back into the
        original tensors' memory, only where their bits differ (an untouched tensor is not
        written, its version counter does not move). On a successful exit, the values of
        ``keep`` (tensors the caller means to change, like :func:`~torchinit.lsuv_`'s
        weights) are left as they are (in their original memory, should a forward pass
        have swapped it), and the generators as they were at the last :meth:`mark_rng`
        (the caller's own, intended draws).

        Not restored, being out of reach: state outside the module tree (globals, objects
        a forward pass closes over, a ``loss`` callable's state), the inner state of
        non-tensor objects held in attributes (their binding comes back), tensors inside
        list/dict attributes (the container's contents come back, their values do not),
        and the global random number generators (see above). Refused up front, with a
        ``TypeError``/``ValueError`` naming ``model``: TorchScript modules (their attributes
        live in C++) and uninitialized (lazy) parameters or buffers (materializing them is
        the one change that cannot be undone by writing values back).

        Example:
            >>> model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
            >>> weight, generator = model[0].weight.detach().clone(), torch.Generator().manual_seed(0)
            >>> with Snapshot.everything(model, generators=[generator]):
            ...     _ = model[0].weight.data.mul_(0), model.eval(), torch.rand(3, generator=generator)
            >>> rewound = torch.equal(generator.get_state(), torch.Generator().manual_seed(0).get_state())
            >>> torch.equal(model[0].weight, weight), model.training, rewound
            (True, True, True)
        """
        _refuse_unrestorable(model)
        modules = list(model.modules())
        attributes = _Modules(modules, _containers)
        values = _Values(modules, keep)
        module_generators = [v for _, saved, _ in attributes.saved for v in saved.values()
                             if isinstance(v, torch.Generator)]  # fmt: skip
        snapshot = cls.__new__(cls)
        snapshot._random = _RandomStates(_generator_states([*generators, *module_generators]))
        snapshot._parts = [attributes, values, snapshot._random]
        values.set_grads_aside()
        return snapshot

    def restore(self) -> None:
        """Put the model (and the generators) back as they were when the snapshot was taken.

        Every part is put back even when one fails; the first failure is then raised.
        """
        errors = self._restore(failed=True)
        if errors:
            raise errors[0]

    @contextlib.contextmanager
    def on_failure(self) -> Iterator[None]:
        """Run the block; if it raises anything, :meth:`restore` and re-raise."""
        try:
            yield
        except BaseException:
            self.restore()
            raise

    def mark_rng(self) -> None:
        """A successful exit leaves the generators as they are now (the caller's intended draws stand)."""
        self._random.mark()

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Put everything back (on success: but ``keep`` and the generators' marked states); never swallows."""
        failed = exc_type is not None
        errors = self._restore(failed)
        if errors and not failed:
            raise errors[0]
        if errors and exc is not None and hasattr(exc, "add_note"):  # Python 3.11 on
            exc.add_note(f"restoring the model failed too: {errors[0]!r}")

    def _restore(self, failed: bool) -> list[Exception]:
        errors = []
        for part in self._parts:
            try:
                part.restore(failed)
            except Exception as error:  # every part runs; the caller reports the first failure
                errors.append(error)
        return errors


def _refuse_unrestorable(model: nn.Module) -> None:
    """Raise unless :meth:`Snapshot.everything` can restore ``model`` (see there); the errors name ``model``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module; got {type(model).__name__}")
    scripted = next((n for n, m in model.named_modules() if isinstance(m, torch.jit.ScriptModule)), None)
    if scripted is not None:
        raise TypeError(f"model{'.' + scripted if scripted else ''} is a TorchScript module: its attributes "
                        "live outside Python and could not be restored; pass the eager module")
    lazy = [f"{n}.{k}" if n else k for n, m in model.named_modules() for k, t in
            (*m._parameters.items(), *m._buffers.items()) if t is not None and is_lazy(t)]  # fmt: skip
    if lazy:
        raise ValueError(f"model has uninitialized (lazy) tensors ({', '.join(lazy[:5])}): materializing them "
                         "could not be undone; run one forward pass on a sample first")


# ---- the module tree -------------------------------------------------------------------------------------------


def _registries(module: nn.Module, attributes: dict[str, Any]) -> list[Any]:
    """The parameter, buffer and child registrations of ``module``."""
    return [module._parameters, module._buffers, module._modules]


def _containers(module: nn.Module, attributes: dict[str, Any]) -> list[Any]:
    """Every attribute of ``module`` that is a plain list, dict or set (registrations and hooks among them)."""
    return [v for v in attributes.values() if type(v) in _CONTAINERS]


class _Modules:
    """Every module's attribute bindings, and the contents of the containers ``containers`` picks among them."""

    def __init__(self, modules: list[nn.Module], containers: Callable[[nn.Module, dict[str, Any]], list[Any]]) -> None:
        self.saved: list[tuple[nn.Module, dict[str, Any], list[tuple[Any, Any]]]] = []
        for module in modules:
            attributes = dict(module.__dict__)
            contents = [(c, _copy_contents(c)) for c in containers(module, attributes)]
            self.saved.append((module, attributes, contents))

    def restore(self, failed: bool) -> None:
        for module, attributes, contents in self.saved:
            _put_back(module.__dict__, attributes)
            for container, items in contents:
                _refill(container, items)


def _copy_contents(container: Any) -> Any:
    return list(container) if isinstance(container, list) else set(container) if isinstance(container, set) \
        else dict(container)  # fmt: skip


def _refill(container: Any, items: Any) -> None:
    """Make ``container`` (a list, set or dict) hold ``items`` again, the same object."""
    if isinstance(container, list):
        container[:] = items
    elif isinstance(container, set):
        container.clear()
        container.update(items)
    else:
        _put_back(container, items)


def _put_back(d: dict[str, Any], saved: dict[str, Any]) -> None:
    """Make ``d`` hold ``saved`` again, in its order (compared by identity: values may be tensors)."""
    if len(d) != len(saved) or any(k != j or v is not w for (k, v), (j, w) in zip(d.items(), saved.items())):
        d.clear()
        d.update(saved)


# ---- tensors ---------------------------------------------------------------------------------------------------


def _registered(modules: list[nn.Module]) -> list[Tensor]:
    """Every parameter and buffer of ``modules``, once each (a tied one is one object under two names)."""
    tensors = {id(t): t for m in modules for t in (*m._parameters.values(), *m._buffers.values()) if t is not None}
    return list(tensors.values())


class _TensorFlags:
    """Every parameter's and buffer's ``requires_grad`` and Python attributes."""

    def __init__(self, modules: list[nn.Module]) -> None:
        self.saved = [(t, t.requires_grad, dict(t.__dict__)) for t in _registered(modules)]

    def restore(self, failed: bool) -> None:
        for t, requires_grad, attributes in self.saved:
            if t.requires_grad != requires_grad:
                t.requires_grad_(requires_grad)
            _put_back(t.__dict__, attributes)


class _Writes:
    """A clone of each real tensor a call writes in place, with its storage (``set_`` may give it another one)."""

    def __init__(self, writes: Iterable[Tensor]) -> None:
        real = {id(t): t for t in writes if not t.is_meta and not is_lazy(t)}
        self.saved = [(t, t.detach().clone(), t.untyped_storage(), storage_key(t), t.storage_offset(), t.size(),
                       t.stride()) for t in real.values()]  # fmt: skip

    def restore(self, failed: bool) -> None:
        with torch.no_grad():
            for t, value, storage, key, offset, size, stride in self.saved:
                if storage_key(t) != key:  # set_ gave it another storage (a parametrization's right_inverse)
                    t.set_(storage, offset, size, stride)
                t.copy_(value)


class _Values:
    """The values of every parameter, buffer and tensor attribute, their ``requires_grad`` and ``.grad``.

    Values come back into the original memory, written only where their bits differ; on a
    successful exit, those of ``keep`` stay as they are (in their original memory).
    """

    def __init__(self, modules: list[nn.Module], keep: Sequence[Tensor]) -> None:
        self.keep = {id(t) for t in keep}
        self.saved: dict[int, tuple[Tensor, Tensor, Tensor, bool, Tensor | None]] = {}
        for m in modules:
            attributes = [v for v in m.__dict__.values() if isinstance(v, Tensor)]
            for t in (*m._parameters.values(), *m._buffers.values(), *attributes):
                if t is not None and id(t) not in self.saved:
                    leaf = t.is_leaf  # .grad of a non-leaf is never filled (and reading it warns)
                    with _inference_mode_of(t):
                        copy = t.detach().clone()
                    self.saved[id(t)] = (t, t.detach(), copy, t.requires_grad, t.grad if leaf else None)

    def set_grads_aside(self) -> None:
        """``.grad`` is None until the restore, so a backward pass writes fresh ones."""
        for t, *_, grad in self.saved.values():
            if grad is not None:
                t.grad = None

    def restore(self, failed: bool) -> None:
        for t, alias, copy, requires_grad, grad in self.saved.values():
            with torch.no_grad(), _inference_mode_of(alias):
                if failed or id(t) not in self.keep:
                    _write_back(t, alias, copy)
                elif alias.layout == torch.strided and not _same_place(t, alias) and _same_kind(t, alias):
                    alias.copy_(t.detach())  # a kept tensor keeps its new values, in its original memory
                    t.data = alias
            if t.is_leaf:
                if t.requires_grad != requires_grad:
                    t.requires_grad_(requires_grad)
                if t.grad is not grad:
                    t.grad = grad


def _inference_mode_of(t: Tensor) -> contextlib.AbstractContextManager[Any]:
    """Inference mode as ``t`` needs it to be cloned or written; no context at all where the thread is in that
    mode already (the usual case). torch's guard restores the mode when the guard object dies, so one whose
    ``__exit__`` an interrupt skipped would change the mode later, long after the call has returned."""
    wanted = t.is_inference()
    if torch.is_inference_mode_enabled() == wanted:
        return contextlib.nullcontext()
    return torch.inference_mode(wanted)


def _write_back(t: Tensor, alias: Tensor, copy: Tensor) -> None:
    """``t`` views ``alias``'s memory again and holds ``copy``'s values (written only where the bits differ)."""
    if alias.layout != torch.strided:
        t.data = copy
        return
    if not _same_place(t, alias):
        t.data = alias  # reassigned .data, a new dtype or device: back to the original memory
    if not _bits_equal(alias, copy):
        alias.copy_(copy)


def _bits_equal(a: Tensor, b: Tensor) -> bool:
    """``a`` and ``b`` hold the same bits (so -0.0 differs from 0.0 and a NaN equals itself); False when unsure."""
    if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device or a.layout != torch.strided:
        return False
    try:
        if a.dtype.is_floating_point or a.dtype.is_complex:
            as_int = _BITS.get(a.element_size())
            if as_int is None:
                return False
            a, b = a.view(as_int), b.view(as_int)
        return bool(torch.equal(a, b))
    except (RuntimeError, NotImplementedError):
        return False


def _same_place(t: Tensor, alias: Tensor) -> bool:
    """``t`` still views the memory, shape, strides and dtype that ``alias`` (taken at the snapshot) views."""
    try:
        return (_same_kind(t, alias) and t.stride() == alias.stride() and t.storage_offset() == alias.storage_offset()
                and t.untyped_storage().data_ptr() == alias.untyped_storage().data_ptr())  # fmt: skip
    except (RuntimeError, NotImplementedError):
        return False


def _same_kind(t: Tensor, alias: Tensor) -> bool:
    return t.dtype == alias.dtype and t.device == alias.device and t.shape == alias.shape


# ---- random number generators ----------------------------------------------------------------------------------


def _generator_states(generators: Sequence[torch.Generator]) -> list[StatePair]:
    return [(g.get_state, g.set_state) for g in generators]


class _RandomStates:
    """The states of some random number generators: at the snapshot, and at the last :meth:`mark`."""

    def __init__(self, pairs: list[StatePair]) -> None:
        self.pairs = pairs
        self.at_start = self.on_success = [get() for get, _ in pairs]

    def mark(self) -> None:
        self.on_success = [get() for get, _ in self.pairs]

    def restore(self, failed: bool) -> None:
        for (_, set_state), state in zip(self.pairs, self.at_start if failed else self.on_success):
            set_state(state)
