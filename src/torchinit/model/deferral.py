"""``deferred()``: build a model with its parameters on meta while recording what construction does to them.

Inside the context, a global parameter-registration hook moves every new parameter to the meta device and
claims it for this thread's :class:`~torchinit.recording.log.Recording`; the torch.nn.init functions that
return at once on meta tensors are patched so that their calls are recorded whole. Both are installed once
for any number of nested or concurrent ``deferred()`` blocks and removed when the last ends, in whatever
order they and other patchers (accelerate's ``init_empty_weights``) close.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any, cast

import torch
from torch import nn
from torch.nn.modules.module import register_module_parameter_registration_hook

from torchinit._util.tensors import is_uninitialized
from torchinit.model.snapshot import Snapshot
from torchinit.model.standins import meta_like
from torchinit.recording.inits import PATCHED_ATTRIBUTES, PATCHED_INITS
from torchinit.recording.log import (
    UNDEFINED,
    Recording,
    RecordingMode,
    claim,
    recorded_call,
    thread_recordings,
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

    A global parameter-registration hook is installed while any context is open; it acts
    only in threads inside a context, and is removed when the last context exits.

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
        mode.fresh = outer.fresh
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
        _HOOK.append(True)
    installed: list[tuple[Any, str, Any, Any]] = []
    try:
        for holder, key, original in _meta_skipping_inits():
            patched = recorded_call(original)
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
        param = _make_meta(param, recording, mode)
    if recording.knows(param):
        claim(param, recording)
    return param


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


def _get_entry(holder: Any, key: str) -> Any:
    return holder.get(key) if isinstance(holder, dict) else getattr(holder, key, None)


def _set_entry(holder: Any, key: str, value: Any) -> None:
    if isinstance(holder, dict):
        holder[key] = value
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
