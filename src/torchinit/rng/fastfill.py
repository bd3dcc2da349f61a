"""Fast random fills of large CPU tensors for materialization: the keyed stream, chunk by chunk, in threads.

torch's CPU ``normal_`` and ``uniform_`` run on one core whatever ``torch.get_num_threads()``
says: the kernel is serial because it draws from one generator under that generator's
lock. :func:`fill_` fills a large contiguous tensor from the keyed Philox stream of
:mod:`torchinit.rng.keyed` instead: the same distribution (normal, or uniform on ``[low, high)``,
rounded to the tensor's dtype), a different stream, computed by a compiled kernel in
fixed-size chunks over the CPUs. On 2 cores it is about 2x to 3x faster than ``normal_``
(``benchmarks/results/keyed.md``).

Determinism. One draw of 64 bits from the caller's generator (or the global RNG) per call
keys the stream (:meth:`torchinit.rng.keyed.Stream.from_generator`); element ``i`` is a pure
function of that key and ``i``, so the values depend on the generator's state, the
tensor's size and dtype, the distribution and its parameters; never on the number of
threads. They are not the values ``tensor.normal_(generator=g)`` would give.

Threads and interrupts: those of :mod:`torchinit.rng.keyed` (a pool used up to
``min(torch.get_num_threads(), CPUs)`` threads, no thread setting changed, an interrupt
waits for the running chunks and propagates).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from torchinit.rng import keyed

__all__ = ["THRESHOLD", "fill_", "replay_fill", "recorded_fill"]

#: Tensors with fewer elements are left to torch (``fill_`` returns False): below two chunks the
#: threads gain nothing.
THRESHOLD = keyed.PARALLEL_THRESHOLD

_KINDS = {"normal_": (0.0, 1.0), "uniform_": (0.0, 1.0)}
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_PLAIN_TYPES = (Tensor, nn.Parameter)


def _eligible(tensor: Any) -> bool:
    # Not the kernel's presence: without it the keyed stream is computed with torch operations, the same bits
    # (slower), so a model's values never depend on whether a C compiler was there at install.
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

    The values come from the keyed stream (module docstring): the same distribution as
    ``tensor.normal_(mean, std)`` in the tensor's dtype, ``[low, high)`` for uniform, from
    another stream. Deterministic given the generator's state (the global RNG's when
    ``generator`` is None), whatever the number of threads; one draw is taken from the
    generator per call.

    Returns False, changing nothing and drawing nothing, when the fast path does not
    apply: fewer than :data:`THRESHOLD` elements, not contiguous,
    not on the CPU, not a floating dtype torch fills (fp16, bf16, fp32, fp64), a tensor
    subclass, an inference tensor, a leaf that requires grad with grad enabled, a
    dispatch/function mode active, or parameters that are not finite. The caller then
    fills the tensor the usual way.

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
        getattr(torch.empty(1, dtype=tensor.dtype, device="cpu"), kind)(a, b, generator=torch.Generator())
    except RuntimeError as err:
        raise ValueError(f"{kind}({a}, {b}): {err}") from None
    if not (math.isfinite(a) and math.isfinite(b)):
        return False
    getattr(keyed, kind)(tensor.detach(), keyed.Stream.from_generator(generator), a, b)
    return True


# ---- the hook of Recording.replay --------------------------------------------------------------------------


def replay_fill(tensor: Tensor, op: Any, generator: torch.Generator | None = None, index: int = -1) -> bool:
    """``Recording.replay``'s ``fill`` hook: fill a recorded ``normal_``/``uniform_`` with :func:`fill_`.

    ``op`` is a recorded :class:`~torchinit.recording.log.Op` whose ATen arguments are
    ``(TensorRef, mean, std)`` / ``(TensorRef, from, to)``, trailing defaults possibly
    omitted, scalars possibly given by name. ``generator`` is the one replay would pass
    (a stream of ``materialize_(generator=...)``); None uses the recorded one (usually
    None: the global RNG). ``index`` (the op's place in the recording) is not used. Returns False
    for any other operation and whenever :func:`fill_` does.

    Example:
        >>> from types import SimpleNamespace
        >>> op = SimpleNamespace(name="normal_", func=torch.ops.aten.normal_.default, args=(None, 0.0, 0.02), kwargs={})
        >>> replay_fill(torch.empty(1 << 20), op, torch.Generator().manual_seed(0))
        True
    """
    recorded = recorded_fill(op)
    if recorded is None:
        return False
    if generator is None:
        generator = op.kwargs.get("generator")
    return fill_(tensor, recorded[0], *recorded[1], generator=generator)


def recorded_fill(op: Any) -> tuple[str, tuple[float, float]] | None:
    """``(kind, (a, b))`` of a recorded ATen ``normal_``/``uniform_`` (defaults filled in), or None for any other op.

    ``op``'s arguments are ``(TensorRef, mean, std)`` / ``(TensorRef, from, to)``, trailing
    defaults possibly omitted, scalars possibly given by name.
    """
    name = getattr(op, "name", None)
    if name not in _KINDS:
        return None
    schema = getattr(op.func, "_schema", None)
    if schema is None:  # a whole-function call (trunc_normal_ ...), not the ATen op
        return None
    params = []
    for i, arg in enumerate(schema.arguments[1:3], start=1):
        if i < len(op.args):
            value = op.args[i]
        elif arg.name in op.kwargs:
            value = op.kwargs[arg.name]
        else:
            value = arg.default_value
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return None
        params.append(float(value))
    return name, (params[0], params[1])
