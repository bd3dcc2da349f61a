"""Fast random fills of large CPU tensors: torch's own ``normal_``/``uniform_`` kernels, chunk by chunk, in threads.

torch's CPU ``normal_`` and ``uniform_`` run on one core whatever ``torch.get_num_threads()``
says: the kernel is serial because it draws from one generator under that generator's
lock. :func:`fill_` splits a large contiguous tensor into fixed-size chunks and fills each
chunk with torch's own kernel and its own ``torch.Generator``, in a small pool of threads
(torch releases the GIL inside the kernel). Each value therefore has exactly the
distribution torch's kernel gives in the tensor's dtype, and on ``k`` cores the fill
takes about ``1/k`` of the time.

Determinism. One draw from the caller's generator (or the global RNG) per call gives a
128-bit key; chunk ``i`` always covers elements ``[i * CHUNK, (i + 1) * CHUNK)`` and draws
from a generator whose whole Mersenne-Twister state is expanded from ``(key, i)``
(SHAKE-128). The values depend on the generator's state, the tensor's size and dtype,
the distribution and its parameters; never on the number of threads or on which thread
fills which chunk. They are not the values ``tensor.normal_(generator=g)`` would give:
the same distribution, another stream.

Why the whole state and not ``manual_seed``: a CPU ``torch.Generator`` keeps only the low
32 bits of its seed (``manual_seed(s)`` and ``manual_seed(s + 2**32)`` draw the same
numbers), so per-chunk seeds would repeat with probability about ``chunks² / 2³³`` per
model: 0.15% for 1B parameters (~3,600 chunks), near certain for 70B (~270,000), and a
repeat is two identical blocks of weights. A state expanded from 128 bits avoids that. The
state's byte layout (``Generator.get_state()``) is checked once against the documented
mt19937 seeding; if a torch release ever changes it, chunk generators fall back to
``manual_seed`` with the 32-bit limitation (:data:`FULL_STATE` says which).

Threads. A module-level ``ThreadPoolExecutor`` is created on first use with at most
``os.cpu_count()`` workers (the CPUs this process may run on); a call uses
``min(torch.get_num_threads(), that)`` threads, the calling thread included, so
``torch.set_num_threads(1)`` makes it serial. Nothing here changes a process-wide or
thread setting (no ``torch.set_num_threads``: in OpenMP builds a count set in any thread
leaks to threads created later). A ``KeyboardInterrupt`` (or any error) in the caller
stops the chunks not yet started, waits for the running ones (one chunk each, ~1 ms)
so that nothing writes to the tensor after ``fill_`` has returned or raised, and
propagates. A forked child starts a new pool.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import itertools
import math
import os
import struct
import threading
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["CHUNK", "FULL_STATE", "THRESHOLD", "fill_", "replay_fill"]

#: Elements per chunk: fixed, so chunk boundaries (and the values) do not depend on the thread count.
#: 2**18 fp32 values take ~1 ms with torch's normal_: short enough to balance a few threads on
#: common weight shapes (a 2**20-element tensor is 4 chunks) and to stop within ~1 ms on an
#: interrupt, long enough that the per-chunk cost (the state's SHAKE-128 and set_state, ~13 us)
#: stays near 1% (benchmarks/NOTES_model_init.md).
CHUNK = 1 << 18

#: Tensors with fewer elements are left to torch (``fill_`` returns False). Measured on 2 cores
#: (benchmarks/NOTES_model_init.md): one chunk (2**18) gains nothing; from two chunks (2**19
#: elements, 2 MiB fp32) the threaded fill is ~1.6x faster, at 2**24 ~1.8x.
THRESHOLD = 1 << 19

_KINDS = {"normal_": (0.0, 1.0), "uniform_": (0.0, 1.0)}
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_PLAIN_TYPES = (Tensor, nn.Parameter)
_DOMAIN = b"torchinit.fastfill/v1\0"
_MT_N = 624
_STATE_OFFSET = 24  # uint64 the_initial_seed; int left; int seeded; uint64 next; then uint64 state[624]


# ---- the mt19937 state layout of torch.Generator.get_state(), checked once -----------------------------------


def _mt19937_init(seed: int) -> list[int]:
    """The mt19937 state ``init_genrand(seed)`` makes (what ATen's CPU generator does on manual_seed)."""
    state = [seed & 0xFFFFFFFF]
    for j in range(1, _MT_N):
        state.append((1812433253 * (state[-1] ^ (state[-1] >> 30)) + j) & 0xFFFFFFFF)
    return state


def _check_layout() -> bytes | None:
    """The byte template of a freshly seeded generator's state if its layout is the one expected, else None.

    Expected (ATen's ``CPUGeneratorImplState``): ``uint64 the_initial_seed; int left; int seeded;
    uint64 next; uint64 state[624]; ...``, each mt19937 word in the low half of a uint64 slot, the
    high half ignored by ``set_state``. Checked here: the words of ``manual_seed(s)`` are mt19937's
    ``init_genrand(s)``; a state crafted with random high halves is adopted with its low halves
    (``get_state`` gives them back) and draws exactly as the same state with the high halves zeroed.
    """
    try:
        seed = 0x9E3779B9
        raw = bytes(torch.Generator().manual_seed(seed).get_state().tolist())
        head = struct.unpack_from("<QiiQ", raw, 0)
        words = list(struct.unpack_from(f"<{_MT_N}Q", raw, _STATE_OFFSET))
        if head != (seed, 1, 1, 0) or words != _mt19937_init(seed):
            return None
        material = hashlib.shake_128(b"torchinit.fastfill layout check").digest(8 * _MT_N)
        low = b"".join(material[k:k + 4] + bytes(4) for k in range(0, 8 * _MT_N, 8))
        probe, clean = torch.Generator(), torch.Generator()
        probe.set_state(_craft(raw, material))
        clean.set_state(_craft(raw, low))
        if not torch.equal(probe.get_state(), _craft(raw, low)):
            return None
        if not torch.equal(torch.empty(64).uniform_(generator=probe), torch.empty(64).uniform_(generator=clean)):
            return None
        return raw
    except Exception:  # noqa: BLE001 - any surprise: fall back to manual_seed
        return None


def _craft(template: bytes, material: bytes) -> Tensor:
    """A generator state: ``template`` with its 624 uint64 word slots set to ``material`` (4992 bytes)."""
    state = bytearray(template)
    state[_STATE_OFFSET:_STATE_OFFSET + 8 * _MT_N] = material
    return torch.frombuffer(state, dtype=torch.uint8)


_TEMPLATE = _check_layout()

#: True when chunk generators get a full mt19937 state (2**19968 possibilities); False when this torch's
#: state layout was not the expected one and chunk generators are seeded with ``manual_seed`` (2**32).
FULL_STATE = _TEMPLATE is not None


def _seed_chunk(gen: torch.Generator, key: bytes, index: int) -> None:
    material = hashlib.shake_128(_DOMAIN + key + index.to_bytes(8, "little")).digest(8 * _MT_N)
    if _TEMPLATE is not None:
        gen.set_state(_craft(_TEMPLATE, material))
    else:
        gen.manual_seed(int.from_bytes(material[:8], "little"))


# ---- the thread pool ---------------------------------------------------------------------------------------

_POOL: concurrent.futures.ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 2


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = concurrent.futures.ThreadPoolExecutor(max_workers=_cpus(), thread_name_prefix="torchinit-fastfill")
        return _POOL


def _forget_pool() -> None:  # in a forked child the pool's threads do not exist
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _threads() -> int:
    """How many threads one call uses (the caller's included): torch's intra-op count, at most the CPUs."""
    return max(1, min(torch.get_num_threads(), _cpus()))


# ---- the fill ----------------------------------------------------------------------------------------------


def _eligible(tensor: Any) -> bool:
    if type(tensor) not in _PLAIN_TYPES or tensor.device.type != "cpu" or tensor.layout != torch.strided:
        return False
    if tensor.dtype not in _DTYPES or tensor.numel() < THRESHOLD or not tensor.is_contiguous():
        return False
    if tensor.is_inference() or (tensor.requires_grad and torch.is_grad_enabled()):
        return False  # torch raises for these in-place fills; let it
    try:  # a mode active in this thread would not see the other threads' operations
        from torch.utils._python_dispatch import _get_current_dispatch_mode

        if _get_current_dispatch_mode() is not None or torch._C._len_torch_function_stack() > 0:
            return False
    except (ImportError, AttributeError):  # pragma: no cover - older torch
        return False
    return True


def fill_(tensor: Tensor, kind: str, *params: float, generator: torch.Generator | None = None) -> bool:
    """Fill ``tensor`` in place from ``normal_(mean, std)`` or ``uniform_(low, high)`` on several cores.

    The values come from torch's own kernel (``Tensor.normal_``/``Tensor.uniform_``) applied
    to fixed chunks of :data:`CHUNK` elements, each with its own generator (module
    docstring): the same distribution as ``tensor.normal_(mean, std)`` in the tensor's
    dtype, ``[low, high)`` for uniform, from another stream. Deterministic given the
    generator's state (the global RNG's when ``generator`` is None), whatever the number
    of threads; one draw is taken from the generator per call.

    Returns False, changing nothing and drawing nothing, when the fast path does not
    apply: fewer than :data:`THRESHOLD` elements, not contiguous, not on the CPU, not a
    floating dtype torch fills (fp16, bf16, fp32, fp64), a tensor subclass, an inference
    tensor, a leaf that requires grad with grad enabled, or a dispatch/function mode active.
    The caller then fills the tensor the usual way.

    Args:
        tensor: the tensor to fill.
        kind: ``"normal_"`` (params: mean, std; defaults 0, 1) or ``"uniform_"``
            (params: low, high; defaults 0, 1), as torch's methods take them.
        generator: the seed source; None: the global RNG.

    Returns:
        True when ``tensor`` was filled.

    Raises:
        ValueError: an unknown ``kind``, or parameters torch rejects (std < 0, low > high, ...).

    Example:
        >>> w = torch.empty(2048, 1024)  # 2**21 elements: above THRESHOLD
        >>> fill_(w, "normal_", 0.0, 0.02, generator=torch.Generator().manual_seed(0))
        True
        >>> round(float(w.std()), 3), fill_(torch.empty(8), "uniform_", -1.0, 1.0)  # small: left to torch
        (0.02, False)
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {sorted(_KINDS)}; got {kind!r}")
    if len(params) > 2:
        raise TypeError(f"{kind} takes at most 2 parameters; got {len(params)}")
    a, b = (*params, *_KINDS[kind][len(params):])
    if not _eligible(tensor):
        return False
    try:  # torch's own argument checks, with its messages, before anything is drawn or written
        getattr(torch.empty(1, dtype=tensor.dtype), kind)(a, b, generator=torch.Generator())
    except RuntimeError as err:
        raise ValueError(f"{kind}({a}, {b}): {err}") from None
    key = bytes(torch.empty(2, dtype=torch.int64).random_(generator=generator).view(torch.uint8).tolist())
    _fill_chunks(tensor.detach().view(-1), kind, a, b, key, _threads())
    return True


def _fill_chunks(flat: Tensor, kind: str, a: float, b: float, key: bytes, threads: int) -> None:
    """Fill ``flat`` chunk by chunk in ``threads`` threads (the caller's included); chunk i from (key, i)."""
    count = math.ceil(flat.numel() / CHUNK)
    next_index = itertools.count().__next__  # atomic under the GIL
    stop = threading.Event()

    def work() -> None:
        gen = torch.Generator()
        try:
            while not stop.is_set():
                i = next_index()
                if i >= count:
                    return
                _seed_chunk(gen, key, i)
                getattr(flat[i * CHUNK:(i + 1) * CHUNK], kind)(a, b, generator=gen)
        except BaseException:
            stop.set()  # the others stop after their current chunk
            raise

    helpers = min(threads, count) - 1
    futures = [_pool().submit(work) for _ in range(helpers)] if helpers > 0 else []
    try:
        work()
        for f in futures:
            f.result()  # interruptible; re-raises a helper's error
    except BaseException:
        stop.set()
        for f in futures:
            f.cancel()
        concurrent.futures.wait(futures)  # running helpers finish their chunk: nothing writes after we return
        raise


# ---- the hook of Recording.replay --------------------------------------------------------------------------


def replay_fill(tensor: Tensor, op: Any, generator: torch.Generator | None = None) -> bool:
    """``Recording.replay``'s ``fill`` hook: fill a recorded ``normal_``/``uniform_`` with :func:`fill_`.

    ``op`` is a recorded :class:`~torchinit.recording.Op` whose ATen arguments are
    ``(TensorRef, mean, std)`` / ``(TensorRef, from, to)``, trailing defaults possibly
    omitted, scalars possibly given by name. ``generator`` is the one replay would pass
    (a stream of ``materialize_(generator=...)``); None uses the recorded one (usually
    None: the global RNG). Returns False for any other operation and whenever
    :func:`fill_` does.

    Example:
        >>> from types import SimpleNamespace
        >>> op = SimpleNamespace(name="normal_", func=torch.ops.aten.normal_.default, args=(None, 0.0, 0.02), kwargs={})
        >>> replay_fill(torch.empty(1 << 20), op, torch.Generator().manual_seed(0))
        True
    """
    name = getattr(op, "name", None)
    if name not in _KINDS:
        return False
    schema = getattr(op.func, "_schema", None)
    if schema is None:  # a whole-function call (trunc_normal_ ...), not the ATen op
        return False
    params = []
    for i, arg in enumerate(schema.arguments[1:3], start=1):
        if i < len(op.args):
            value = op.args[i]
        elif arg.name in op.kwargs:
            value = op.kwargs[arg.name]
        else:
            value = arg.default_value
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return False
        params.append(float(value))
    if generator is None:
        generator = op.kwargs.get("generator")
    return fill_(tensor, name, *params, generator=generator)
