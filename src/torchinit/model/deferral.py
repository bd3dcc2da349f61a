"""``deferred()``: build a model with its parameters on meta while recording what construction does to them.

Inside the context, a global parameter-registration hook moves every new parameter to the meta device and
claims it for this thread's :class:`~torchinit.recording.log.Recording`; the torch.nn.init functions that
return at once on meta tensors are patched so that their calls are recorded whole. The patches are installed
for any number of nested or concurrent ``deferred()`` blocks and removed when the last ends, in whatever
order they and other patchers (accelerate's ``init_empty_weights``) close; the hook is installed by the first
block and stays, inert outside a block.

A module that registers a deferred parameter carries a small marker in its ``__dict__`` (:data:`PROVENANCE`), so
that the recording travels with ``copy.deepcopy``: the copy's meta tensors are recorded as copies of the
originals, as a deep copy made inside ``deferred()`` is. A pickle (``torch.save``) does not carry the recording,
which holds live functions and the constructor's values; after unpickling, the marker names the meta tensors
whose recording stayed behind, and ``materialize_`` says so (:func:`refuse_lost_recordings`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

import torch
from torch import nn
from torch.nn.modules.module import (
    register_module_buffer_registration_hook,
    register_module_parameter_registration_hook,
)

from torchinit._util.tensors import is_uninitialized, tensor_stores
from torchinit._util.warn import warn
from torchinit.model.snapshot import Snapshot
from torchinit.model.standins import meta_like
from torchinit.recording.inits import DATA_FACTORIES, PATCHED_ATTRIBUTES, PATCHED_INITS
from torchinit.recording.log import (
    UNDEFINED,
    Recording,
    RecordingMode,
    claim,
    recorded_call,
    recorded_factory,
    recording_of,
    storage_key,
    thread_recordings,
    watch_registration,
)


@contextlib.contextmanager
def deferred() -> Iterator[Recording]:
    """Within this context, parameters are created on the meta device and construction is recorded.

    Constructors run as usual, so buffers (RoPE frequencies, position ids) and any
    Python-side state are computed for real. Each ``nn.Parameter`` is moved to meta
    when it is registered (its value, when the constructor gave it one, is kept for
    :func:`materialize_`), and every operation on meta tensors is recorded instead of
    run: no parameter memory is used and no random numbers are drawn. Recording is per
    thread: modules built by other threads while the context is open are built
    normally. Contexts nest (an inner one joins the outer recording).

    A global parameter-registration hook is installed by the first context and stays; it acts
    only in threads inside a context. The recording travels with ``copy.deepcopy`` of the model
    (or of any module built inside), not with a pickle or ``torch.save`` (``materialize_`` of an
    unpickled copy says so: a ValueError with ``strict=True``, else a warning).

    Yields:
        The :class:`~torchinit.recording.log.Recording` of this construction.

    Example:
        >>> with deferred():
        ...     layer = nn.Linear(4096, 4096)
        >>> layer.weight.is_meta
        True
        >>> _ = materialize_(layer)
        >>> layer.weight.is_meta, bool(layer.weight.abs().max() <= 4096 ** -0.5)
        (False, True)
    """
    stack = thread_recordings()
    if stack:  # nested: join the outer recording (contexts may even exit out of order)
        recording, outer = stack[-1]
        mode = RecordingMode(recording)
        mode.join(outer)
    else:
        recording = Recording()
        mode = RecordingMode(recording)
    with recording_into(recording, mode), mode:
        yield recording


@contextlib.contextmanager
def recording_into(recording: Recording, mode: RecordingMode) -> Iterator[None]:
    """Make this thread record into ``recording``: the process-wide hooks (counted), and the thread's stack."""
    stack = thread_recordings()
    entry = (recording, mode)
    counted = False
    try:
        with _PATCH_LOCK:
            if _PATCH["depth"] == 0:
                _PATCH["installed"] = _install()
            _PATCH["depth"] += 1
            counted = True
        stack.append(entry)
        yield
    finally:
        stack[:] = [e for e in stack if e is not entry]
        if counted:
            with _PATCH_LOCK:
                _PATCH["depth"] -= 1
                if _PATCH["depth"] == 0:
                    _uninstall(_PATCH.pop("installed"))


# Installed once for all contexts, counted under a lock; whether they defer or record is per thread.
_PATCH_LOCK = threading.Lock()


_PATCH: dict[str, Any] = {"depth": 0}

#: Whether the parameter-registration hook is installed (once per process, never removed: see _install).
_HOOK: list[bool] = []


def _install() -> list[tuple[Any, str, Any, Any]]:
    """Install the parameter-registration hook and the recorded torch.nn.init functions; all or nothing.

    The hook is torch's global one (``register_module_parameter_registration_hook``), not a replaced
    ``nn.Module.register_parameter``: accelerate's ``init_empty_weights`` replaces that method and puts
    back the one it found, so two replacements would only nest when they close in the reverse order.
    It is installed by the first ``deferred()`` and stays: it returns at once in a thread outside
    ``deferred()``, and torch iterates its hooks without a lock, so adding or removing one while
    another thread registers a parameter could fail that thread ("mutated during iteration").
    Returns what :func:`_uninstall` takes: ``(holder, key, original, patched)`` for each patched entry.
    """
    if not _HOOK:
        # torch annotates the hook as returning None; it documents (and uses) a returned parameter
        register_module_parameter_registration_hook(cast("Callable[..., None]", _defer_registration))
        register_module_buffer_registration_hook(_watch_buffer)
        _HOOK.append(True)
    installed: list[tuple[Any, str, Any, Any]] = []
    entries: list[tuple[Any, str, Any, Callable[..., Any]]] = [
        (holder, key, original, recorded_call) for holder, key, original in _meta_skipping_inits()]
    entries += [(holder, key, original, recorded_factory) for holder, key, original in _data_factories()]
    if not hasattr(torch.utils, "swap_tensors"):  # the staticmethod itself, put back as it was
        entries.append((nn.Parameter, "__new__", vars(nn.Parameter)["__new__"], _meta_at_birth))
    try:
        for holder, key, original, recorder in entries:
            patched = recorder(original)
            _set_entry(holder, key, patched)
            installed.append((holder, key, original, patched))
    except BaseException:
        _uninstall(installed)
        raise
    return installed


def _uninstall(installed: list[tuple[Any, str, Any, Any]]) -> None:
    """Undo :func:`_install`, newest first. An entry that someone replaced since keeps the replacement (ours,
    wrapped inside it, only records in threads inside ``deferred()``, so it is inert once all have closed)."""
    for holder, key, original, patched in reversed(installed):
        if _get_entry(holder, key) is patched:
            _set_entry(holder, key, original)


def _defer_registration(module: nn.Module, name: str, param: nn.Parameter) -> nn.Parameter | None:
    """The registration hook: in a thread inside ``deferred()``, the parameter becomes meta and is claimed."""
    stack = thread_recordings()
    if not stack or is_uninitialized(param):
        return None
    recording, mode = stack[-1]
    if not param.is_meta:
        ref, meta = recording.replaced.get(id(param), (None, None))
        param = cast("nn.Parameter", meta) if ref is not None and ref() is param else _make_meta(param, recording, mode)
    if recording.knows(param):
        claim(param, recording)
        watch_registration(module, name, param, recording)
        if PROVENANCE not in module.__dict__:
            module.__dict__[PROVENANCE] = _Provenance(module)
    return param


def _meta_at_birth(original: staticmethod) -> staticmethod:
    """``nn.Parameter.__new__`` for a torch without ``torch.utils.swap_tensors`` (before 2.3), where registration
    cannot turn the constructor's own parameter into the meta one: in a thread inside ``deferred()``, a parameter that
    construction makes is meta from its creation, so that the constructor's references, a second registration (a
    tie) and writes made through them all see the recorded tensor. Parameters that torch makes as copies (a deep
    copy, an unpickled one, a module's conversion) and those torchinit makes itself stay as they are made, as they
    do on a newer torch."""
    make = original.__func__

    def __new__(cls: type, data: Any = None, requires_grad: bool = True) -> Any:
        param = make(cls, data, requires_grad)
        stack = thread_recordings()
        if not stack or param.is_meta or is_uninitialized(param) or _made_as_a_copy(sys._getframe(1)):
            return param
        recording, mode = stack[-1]
        return _make_meta(param, recording, mode)

    return staticmethod(__new__)


def _made_as_a_copy(frame: Any) -> bool:
    """Whether the code creating a parameter (``frame``, above any ``__new__`` of a subclass) is torch's copying
    code (``Parameter.__deepcopy__``, unpickling, ``Module._apply``) or torchinit's own."""
    while frame is not None and frame.f_code.co_name == "__new__":
        frame = frame.f_back
    if frame is None:
        return False
    filename = frame.f_code.co_filename
    return filename in _copying_files() or filename.startswith(_PACKAGE_DIR)


#: torchinit's source directory: a parameter made by its code is its own, not construction's.
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


@functools.lru_cache(maxsize=1)
def _copying_files() -> frozenset[str]:
    """The source files of torch that make parameters as copies of existing ones."""
    import torch._utils
    import torch.nn.modules.module
    import torch.nn.parameter

    return frozenset(m.__file__ for m in (torch._utils, torch.nn.modules.module, torch.nn.parameter) if m.__file__)


def _watch_buffer(module: nn.Module, name: str, buffer: torch.Tensor | None) -> None:
    """The buffer-registration hook: in a thread inside ``deferred()``, a recorded meta buffer (a table built on a
    parameter's device) is watched in its place, so that a conversion after ``deferred()`` keeps its recording."""
    stack = thread_recordings()
    if stack and isinstance(buffer, torch.Tensor) and buffer.is_meta and stack[-1][0].knows(buffer):
        watch_registration(module, name, buffer, stack[-1][0])


def _make_meta(param: nn.Parameter, recording: Recording, mode: RecordingMode) -> nn.Parameter:
    """Turn the real ``param`` into a meta one, in place where torch allows it, and record its value.

    In place (``torch.utils.swap_tensors``, torch >= 2.3) the constructor's own references
    and a second registration of the same parameter (a tie) see the meta tensor too;
    where swapping is refused, a new Parameter with the same class and attributes is made.
    """
    mode.paused = True  # creating the stand-in is torchinit's doing, not construction's
    try:
        undefined = mode.is_undefined(param)
        meta = meta_like(param)
        swap = getattr(torch.utils, "swap_tensors", None)
        if swap is not None and type(meta) is type(param):
            try:
                attributes = dict(param.__dict__)
                swap(param, meta)  # now ``param`` is the meta tensor and ``meta`` holds the real data
                param.__dict__.update(attributes)
                meta, param = param, meta
            except RuntimeError:  # other references to the tensor at the C++ level: keep the new object
                pass
        value = UNDEFINED if undefined else param.detach()
        mode.release(param)
        recording.add_leaf(meta, value)
        if meta is not param and isinstance(param, nn.Parameter):  # not swapped: a tie must find the same stand-in
            recording.replaced[id(param)] = (weakref.ref(param), meta)
    finally:
        mode.paused = False
    return meta


def _meta_skipping_inits() -> list[tuple[Any, str, Any]]:
    """Where the torch.nn.init functions recorded whole (:data:`~torchinit.recording.inits.PATCHED_INITS`) are
    looked up: ``(holder, key, function)`` in torch.nn.init, and in the table transformers captured at import
    (``transformers.initialization.TORCH_INIT_FUNCTIONS``)."""
    import sys

    found: list[tuple[Any, str, Any]] = [(nn.init, name, getattr(nn.init, name)) for name in PATCHED_ATTRIBUTES]
    table = getattr(sys.modules.get("transformers.initialization"), "TORCH_INIT_FUNCTIONS", None)
    if isinstance(table, dict):  # it holds the public functions, not a helper looked up at call time
        originals = {id(getattr(nn.init, init.patched)) for init in PATCHED_INITS if not init.patches_helper}
        found += [(table, key, fn) for key, fn in list(table.items()) if id(fn) in originals]
    return found


def _data_factories() -> list[tuple[Any, str, Any]]:
    """Where the data factories (:data:`~torchinit.recording.inits.DATA_FACTORIES`) are looked up: ``(holder, key,
    function)``; a method torch.Tensor inherits is :data:`_INHERITED` (the patch is then deleted, not replaced)."""
    holders = {"torch": torch, "torch.Tensor": torch.Tensor}
    found = []
    for holder_name, key in DATA_FACTORIES:
        holder = holders[holder_name]
        own = holder is torch or key in holder.__dict__
        found.append((holder, key, getattr(holder, key) if own else _Inherited(getattr(holder, key))))
    return found


class _Inherited:
    """A method a class inherits (``torch.Tensor.new_tensor`` from ``TensorBase``): patched by an attribute of the
    class itself, restored by deleting that attribute, so the class is left exactly as it was."""

    def __init__(self, method: Any) -> None:
        self.method = method

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.method(*args, **kwargs)


def _get_entry(holder: Any, key: str) -> Any:
    """The entry as stored: for a class's own attribute, its ``__dict__`` value (a staticmethod, not the function
    attribute access gives), so that putting it back leaves the class as it was."""
    if isinstance(holder, dict):
        return holder.get(key)
    if isinstance(holder, type) and key in vars(holder):
        return vars(holder)[key]
    return getattr(holder, key, None)


def _set_entry(holder: Any, key: str, value: Any) -> None:
    if isinstance(holder, dict):
        holder[key] = value
    elif isinstance(value, _Inherited):
        delattr(holder, key)
    else:
        setattr(holder, key, value)


class Rehearsal:
    """Code run on meta stand-ins of a model's tensors and recorded, the model put back afterwards.

    The one primitive behind re-enactment (a meta model's own init, recorded so it can be replayed)
    and :func:`~torchinit.model.replay.replay_program_` (a module's init program replayed keyed)::

        with Rehearsal(model) as rehearsal:
            store[key] = stand_in                   # swap stand-ins in (not recorded) ...
            rehearsal.recording.add_leaf(stand_in, value)
            with rehearsal.running():              # ... then run the code: recorded, nothing computed
                program(model)
        # here the model's registrations and attributes are as before, whatever happened

    ``deferred()`` records construction the same way, into a recording of its own.
    """

    def __init__(self, model: nn.Module) -> None:
        self.recording = Recording()
        self.mode = RecordingMode(self.recording)
        self._snapshot = Snapshot(model)

    def __enter__(self) -> Rehearsal:
        self.mode.paused = True  # swapping stand-ins in is torchinit's doing, not the code's
        return self

    def __exit__(self, *exc: object) -> None:
        self.mode.paused = False
        self._snapshot.restore()

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Record what the block does to the stand-ins (without gradients)."""
        self.mode.paused = False
        with recording_into(self.recording, self.mode), self.mode, torch.no_grad():
            yield


# ---- copies of deferred modules -----------------------------------------------------------------------------------

#: The ``__dict__`` key of the marker a module built under ``deferred()`` carries (see the module docstring).
PROVENANCE = "_torchinit_deferred"

_COPIES_LOCK = threading.Lock()
#: For each recording, the deep copies recorded into it after construction: (copy's storage, source's storage).
_COPIES: weakref.WeakKeyDictionary[Recording, list[tuple[int, int]]] = weakref.WeakKeyDictionary()


class _Provenance:
    """The marker of a module that registered a deferred parameter: it carries the recording through a deep copy.

    ``copy.deepcopy`` copies a module's ``__dict__`` in order, so its parameters and buffers are copied (and in
    ``memo``) before this marker, which then records each meta copy as a copy of its original (:func:`_record_copy`).
    It holds the module weakly and the recording not at all (the meta tensors keep their recording alive).
    """

    def __init__(self, module: nn.Module, *, materialized: bool = False) -> None:
        self._module = weakref.ref(module)
        self.materialized = materialized  # set by materialize_: its tensors are real because they were given values

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        module = self._module()
        copy = memo.get(id(module)) if module is not None else None
        if module is None or copy is None:  # copied on its own, not as part of its module: nothing to carry
            return self
        for store in tensor_stores(module):
            for t in store.values():
                copied = memo.get(id(t)) if t is not None else None
                if t is not None and isinstance(copied, torch.Tensor) and copied is not t:
                    _record_copy(t, copied)
        return _Provenance(copy, materialized=self.materialized)

    def __reduce__(self) -> tuple[Any, ...]:
        """A pickle carries no recording: it unpickles as a :class:`_LostRecording` of the module's meta tensors that
        had one (the pickler has written the module's parameters and buffers already, so these are references), or,
        with none left (materialized), as None: such a pickle names nothing of torchinit and loads without it."""
        module = self._module()
        stores = tensor_stores(module) if module is not None else ()
        recorded = tuple(t for store in stores for t in store.values()
                         if t is not None and recording_of(t) is not None)  # fmt: skip
        return (_LostRecording, (recorded,)) if recorded else (type(None), ())


class _LostRecording:
    """The marker after unpickling: these meta tensors were recorded by ``deferred()``, and the recording stayed in
    the process that pickled them (:func:`refuse_lost_recordings`). It survives further copies and pickles."""

    def __init__(self, tensors: Iterable[torch.Tensor]) -> None:
        self._tensors = [weakref.ref(t) for t in tensors]

    def tensors(self) -> list[torch.Tensor]:
        return [t for ref in self._tensors if (t := ref()) is not None]

    def __deepcopy__(self, memo: dict[int, Any]) -> _LostRecording:
        return _LostRecording(memo.get(id(t), t) for t in self.tensors())

    def __reduce__(self) -> tuple[Any, ...]:
        tensors = tuple(t for t in self.tensors() if t.is_meta)  # a materialized one has lost nothing
        return (_LostRecording, (tensors,)) if tensors else (type(None), ())


def _record_copy(source: torch.Tensor, copy: torch.Tensor) -> None:
    """Record the meta tensor ``copy``, made by ``copy.deepcopy`` from ``source``, into ``source``'s recording.

    Inside ``deferred()`` the recording mode has recorded the clone already; outside, the copy is recorded as what it
    is, a new storage set to the source's value at this point of the construction (an undefined leaf and a
    ``copy_``), so that ``materialize_`` of the copy replays the source's history.
    """
    recording = recording_of(source) if source.is_meta and copy.is_meta else None
    if recording is None:
        return
    if not recording.knows(copy):
        recording.add_leaf(copy, UNDEFINED)
        recording.record(torch.ops.aten.copy_.default, (copy, source), {}, None)
        found = recording.found_conversions.get(storage_key(source))
        if found is not None:  # a copy of a tensor converted after deferred(): as uncertain as its source
            recording.found_conversions[storage_key(copy)] = found
        with _COPIES_LOCK:
            _COPIES.setdefault(recording, []).append((storage_key(copy), storage_key(source)))
    claim(copy, recording)


def names_through_copies(recording: Recording, names: dict[int, str]) -> dict[int, str]:
    """``names`` (storage -> qualified name), and for each deep copy or conversion recorded after construction whose
    source is not named, the source named as its copy: the random operations of the source's history then draw from
    the streams of that name, so a copy materializes as its original does with the same ``seed``/``generator``."""
    with _COPIES_LOCK:
        copies = list(_COPIES.get(recording, ()))
    copies += recording.conversions  # a converted tensor (model.half() after deferred()) is named as its source too
    if not copies:
        return names
    named = dict(names)
    for copy, source in reversed(copies):  # newest first: a copy of a copy names the copy, then the original
        if copy in named and source not in named:
            named[source] = named[copy]
    return named


def refuse_lost_recordings(model: nn.Module, tensors: Iterable[tuple[str, torch.Tensor]], strict: bool) -> set[str]:
    """Say which of the named meta ``tensors`` (none of which has a recording) lost theirs in a pickle of ``model``.

    With ``strict``, a ValueError; otherwise a warning (they are then re-enacted, as for a model built on meta).
    Returns the names said, lost or replaced after construction (:func:`_refuse_replaced`), so that the
    re-enactment's own report does not name them again as something they are not.
    """
    lost_ids = {id(t) for m in model.modules() if isinstance(marker := m.__dict__.get(PROVENANCE), _LostRecording)
                for t in marker.tensors()}  # fmt: skip
    tensors = list(tensors)
    lost = [name for name, t in tensors if id(t) in lost_ids]
    replaced = _refuse_replaced(model, [name for name, t in tensors if id(t) not in lost_ids], strict)
    if not lost:
        return set(replaced)
    message = (
        f"the model is a pickled copy (pickle, torch.save/torch.load) of a model built under deferred(), and "
        f"deferred()'s recording of its construction did not travel with it: {', '.join(lost)} cannot be replayed. "
        "Copy it with copy.deepcopy (the recording travels), materialize it before pickling, or build it under "
        "deferred() in the process that materializes it"
    )
    if strict:
        raise ValueError(f"strict: {message}")
    warn(f"materialize_: {message}; they are re-enacted from the modules' init methods instead, and what a "
         "constructor computed (a LayerScale gamma) is lost.", UserWarning)  # fmt: skip
    return set(lost) | set(replaced)


def note_materialized(model: nn.Module) -> None:
    """Note on ``model``'s deferred modules that ``materialize_`` gave them their values."""
    for module in model.modules():
        marker = module.__dict__.get(PROVENANCE)
        if isinstance(marker, _Provenance):
            marker.materialized = True


def refuse_emptied(model: nn.Module, strict: bool, *, whole: bool) -> None:
    """Name the modules of ``model`` built under ``deferred()`` and never materialized whose parameters are all real
    now: their recorded tensors were replaced (``to_empty()``, whose memory holds no values, or a state dict loaded
    with ``assign=True``), and ``materialize_`` keeps them as they are. ``whole``: nothing in ``model`` is meta, so
    there is nothing to materialize at all (``strict`` then raises); otherwise a warning names them."""
    emptied = [name or type(model).__name__ for name, m in model.named_modules()
               if isinstance(marker := m.__dict__.get(PROVENANCE), _Provenance) and not marker.materialized
               and _all_real(m)]
    if not emptied:
        return
    where = ", ".join(emptied[:5]) + (", ..." if len(emptied) > 5 else "")
    what = ("nothing to materialize: the model was built under deferred(), and every tensor its recording knows was "
            "replaced by a real one before materialize_ ran" if whole else
            f"{len(emptied)} module(s) built under deferred() hold real parameters that replaced the recorded ones "
            "before materialize_ ran")  # fmt: skip
    message = (
        f"{what} (in {where}). to_empty() does that and leaves the memory uninitialized; a state dict loaded with "
        "assign=True does it too. The tensors are kept as they are. To initialize, call materialize_ instead of "
        "to_empty(): it allocates and initializes in one step"
    )
    if strict and whole:
        raise ValueError(f"strict: {message}")
    warn(f"materialize_: {message}.", UserWarning)


def _all_real(module: nn.Module) -> bool:
    """Whether ``module`` holds parameters and every one is real (a lazy module's uninitialized ones are neither)."""
    params = [p for p in module._parameters.values() if p is not None]
    return bool(params) and not any(p.is_meta or is_uninitialized(p) for p in params)


def _refuse_replaced(model: nn.Module, names: list[str], strict: bool) -> list[str]:
    """Say which of the named meta tensors without a recording belong to modules built under ``deferred()``:
    they were replaced after construction, by something the recording cannot follow."""
    replaced = [name for name in names if isinstance(_owner(model, name).__dict__.get(PROVENANCE), _Provenance)]
    if not replaced:
        return replaced
    message = (
        f"{', '.join(replaced)} of a model built under deferred() are meta tensors its recording does not know: "
        "they were replaced after construction (a conversion whose result has the recorded dtype in new memory, "
        "such as .half().float(), or a new tensor assigned). Convert inside the `with torchinit.deferred():` "
        "block, where every step is recorded, or after materialize_"
    )
    if strict:
        raise ValueError(f"strict: {message}")
    warn(f"materialize_: {message}; they are re-enacted from the modules' init methods instead, and what a "
         "constructor computed (a LayerScale gamma) is lost.", UserWarning)  # fmt: skip
    return replaced


def _owner(model: nn.Module, name: str) -> nn.Module:
    prefix = name.rpartition(".")[0]
    try:
        return model.get_submodule(prefix) if prefix else model
    except AttributeError:  # a name that is not a plain module path (a tied or parametrized tensor)
        return model
