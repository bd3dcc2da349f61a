r"""The keyed random stream: values that are a pure function of (key, index), on any device, in any thread.

A :class:`Stream` is a 64-bit Philox key and a 64-bit sub-stream number. Its word ``w``
(a uint32) is word ``w mod 4`` of the Philox4x32-10 block of the counter
``(b mod 2^32, b div 2^32, sub mod 2^32, sub div 2^32)``, ``b = w div 4`` (Salmon, Moraes,
Dror, Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC 2011). Any element of any
tensor can therefore be computed without computing the others: a slice, a shard on
another rank, a chunk in another thread all get exactly the values the whole tensor
would have at those positions. The full specification, with known-answer vectors, is in
``docs/keyed_rng.md``.

Values, for element ``i`` (the tensor's row-major index plus ``offset``):

* **uniform** on ``[low, high)``: ``low + (high - low) u`` in float64, rounded to the
  dtype, with ``u = (word_i >> 8) 2^-24`` for float32 and lower, and
  ``u = (word_{2i} 2^21 + word_{2i+1} >> 11) 2^-53`` for float64; a value that rounds
  up to ``high`` becomes the largest value below it;
* **normal**: ``mean + std z_i`` in float64, rounded to the dtype, where block ``b``'s words
  ``(a, c, d, e)`` give ``z_{4b..4b+3} = (r_a cos t_c, r_a sin t_c, r_d cos t_e, r_d sin t_e)``
  (Box-Muller), ``r_a = sqrt(-2 log((a + 1/2) 2^-32))`` and
  ``t_c = (c >> 30) pi/2 + ((c mod 2^30 + 1/2) 2^-30 - 1/2) pi/2``. ``log``, ``cos`` and
  ``sin`` are fixed polynomials in float64 (docs), evaluated with correctly rounded
  operations only, so every implementation gives the same bits.

Two implementations give identical values: a small C kernel (``_philox.c``, built at
install, loaded with ctypes, :data:`KERNEL`), used for CPU tensors in float32/float64
(fp16/bf16 through a float32 buffer), chunk by chunk in threads; and torch operations
(:func:`reference_words`, ...), used on other devices, where the kernel is not built,
and by the tests to check the kernel.

Threads: a call uses ``min(torch.get_num_threads(), CPUs)`` threads (the caller's
included): helper threads started on first use, one per CPU at most, which sleep between
fills and never hold up the interpreter's exit. Nothing here changes a process-wide or
thread setting. Chunk ``k`` always covers elements ``[k CHUNK, (k+1) CHUNK)`` and the
values never depend on the chunking or the thread count. An exception or
``KeyboardInterrupt`` in the caller stops the chunks not yet started and waits for the
running ones (~1 ms each) before propagating, so nothing writes to the tensor after the
call has returned or raised. A fill that writes the tensor in place (a contiguous float
tensor) then writes the chunks still missing before it propagates the exception: the tensor
is untouched (an interrupt before the first chunk) or complete, never half-written.
"""

from __future__ import annotations

import _thread
import contextlib
import ctypes
import functools
import hashlib
import itertools
import math
import os
import queue
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor

from torchinit._util.floats import next_float
from torchinit.rng.seeds import draw_key_bits

__all__ = [
    "CHUNK",
    "KERNEL",
    "KERNEL_STATUS",
    "Stream",
    "normal_",
    "philox4x32_10",
    "reference_words",
    "trunc_poly_",
    "uniform_",
    "words",
]

#: Elements per chunk of a threaded fill (1 MiB of float32, ~1 ms).
CHUNK = 1 << 18
#: Tensors with fewer elements are filled in the calling thread only.
PARALLEL_THRESHOLD = 1 << 19
#: Elements per step of the torch-operations implementation (bounds its temporary memory).
REFERENCE_CHUNK = 1 << 20

_DOMAIN = b"torchinit.keyed/v1\0"
_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_MASK32 = 0xFFFFFFFF
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# The transform's constants, the same doubles as in _philox.c (float.hex of the correctly rounded values).
_LOG_C = [float.fromhex(h) for h in (
    "0x1.0000000000000p+0", "0x1.5555555555555p-2", "0x1.999999999999ap-3", "0x1.2492492492492p-3",
    "0x1.c71c71c71c71cp-4", "0x1.745d1745d1746p-4", "0x1.3b13b13b13b14p-4", "0x1.1111111111111p-4",
    "0x1.e1e1e1e1e1e1ep-5")]  # 1/(2k+1)
_SIN_C = [float.fromhex(h) for h in (
    "0x1.0000000000000p+0", "-0x1.5555555555555p-3", "0x1.1111111111111p-7", "-0x1.a01a01a01a01ap-13",
    "0x1.71de3a556c734p-19", "-0x1.ae64567f544e4p-26", "0x1.6124613a86d09p-33")]  # (-1)^k/(2k+1)!
_COS_C = [float.fromhex(h) for h in (
    "0x1.0000000000000p+0", "-0x1.0000000000000p-1", "0x1.5555555555555p-5", "-0x1.6c16c16c16c17p-10",
    "0x1.a01a01a01a01ap-16", "-0x1.27e4fb7789f5cp-22", "0x1.1eed8eff8d898p-29",
    "-0x1.93974a8c07c9dp-37")]  # (-1)^k/(2k)!
_LN2 = float.fromhex("0x1.62e42fefa39efp-1")
_SQRT2 = float.fromhex("0x1.6a09e667f3bcdp+0")
_HALF_PI = float.fromhex("0x1.921fb54442d18p+0")


# ---- the stream ---------------------------------------------------------------------------------------------


def _u64(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            import numpy as np  # NumPy integers are integers too

            if isinstance(value, np.integer):
                value = int(value)
        except ImportError:  # pragma: no cover
            pass
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int in [0, 2**64); got {type(value).__name__}")
    if not 0 <= value < 1 << 64:
        raise ValueError(f"{what} must be an int in [0, 2**64); got {value}")
    return value


@dataclass(frozen=True)
class Stream:
    """A keyed stream: a Philox4x32-10 key ``(k0, k1)`` and a sub-stream number ``sub``.

    Build one with :meth:`of` (from a seed and a name) or :meth:`from_generator`.

    Example:
        >>> from torchinit.rng import keyed
        >>> keyed.Stream.of(0, "weight")
        Stream(k0=2000312449, k1=905663710, sub=0)
        >>> w = keyed.normal_(torch.empty(8), keyed.Stream.of(0, "weight"))
        >>> torch.equal(w, keyed.normal_(torch.empty(8), keyed.Stream.of(0, "weight")))
        True
    """

    k0: int
    k1: int
    sub: int = 0

    def __post_init__(self) -> None:
        for field in ("k0", "k1"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MASK32:
                raise ValueError(f"{field} must be an int in [0, 2**32); got {value!r}")
        _u64(self.sub, "sub")

    @classmethod
    def of(cls, seed: int, name: str = "") -> Stream:
        """The stream of ``(seed, name)``: key = the first 8 bytes of SHAKE-128(domain || seed || name).

        ``seed`` is an int in ``[0, 2**64)`` (8 bytes, little-endian), ``name`` a str (UTF-8);
        the domain is ``b"torchinit.keyed/v1\\0"``. The key words are the two little-endian
        uint32 of those 8 bytes.
        """
        seed = _u64(seed, "seed")
        if not isinstance(name, str):
            raise TypeError(f"name must be a str; got {type(name).__name__}")
        try:
            encoded = name.encode("utf-8")
        except UnicodeEncodeError as err:  # a lone surrogate: not text
            raise ValueError(f"name must be encodable as UTF-8; got {name!r}: {err.reason}") from None
        digest = hashlib.shake_128(_DOMAIN + seed.to_bytes(8, "little") + encoded).digest(8)
        return cls(int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:], "little"))

    @classmethod
    def from_generator(cls, generator: torch.Generator | None = None) -> Stream:
        """A stream keyed by one draw of 64 random bits from ``generator`` (None: the global RNG)."""
        bits = draw_key_bits(generator)
        return cls(bits & _MASK32, bits >> 32)

    def substream(self, sub: int) -> Stream:
        """The same key on sub-stream ``sub`` (an independent stream, e.g. for a second pass)."""
        return Stream(self.k0, self.k1, _u64(sub, "sub"))


def philox4x32_10(counter: tuple[int, int, int, int], key: tuple[int, int]) -> tuple[int, int, int, int]:
    """One Philox4x32-10 block in plain Python (the specification; slow). Used for the known-answer tests.

    Example:
        >>> [hex(w) for w in philox4x32_10((0, 0, 0, 0), (0, 0))]
        ['0x6627e8d5', '0xe169c58d', '0xbc57ac4c', '0x9b00dbd8']
    """
    x0, x1, x2, x3 = counter
    k0, k1 = key
    for _ in range(10):
        p0, p1 = _M0 * x0, _M1 * x2
        x0, x1, x2, x3 = (p1 >> 32) ^ x1 ^ k0, p1 & _MASK32, (p0 >> 32) ^ x3 ^ k1, p0 & _MASK32
        k0, k1 = (k0 + _W0) & _MASK32, (k1 + _W1) & _MASK32
    return x0, x1, x2, x3


# ---- the reference implementation: torch operations, any device --------------------------------------------


def _mulhilo(m: int, x: Tensor) -> tuple[Tensor, Tensor]:
    """High and low 32 bits of ``m * x`` (x < 2**32 in int64 lanes), with no product above 2**49."""
    a, b = x * (m & 0xFFFF), x * (m >> 16)
    mid = a + ((b & 0xFFFF) << 16)
    return (b >> 16) + (mid >> 32), mid & _MASK32


def _reference_blocks(stream: Stream, first_block: int, count: int, device: torch.device) -> Tensor:
    """Blocks ``[first_block, first_block + count)`` as an int64 tensor of shape (count, 4), uint32 values."""
    b = torch.arange(first_block, first_block + count, dtype=torch.int64, device=device)
    x0, x1 = b & _MASK32, (b >> 32) & _MASK32
    x2 = torch.full_like(b, stream.sub & _MASK32)
    x3 = torch.full_like(b, stream.sub >> 32)
    k0, k1 = stream.k0, stream.k1
    for _ in range(10):
        hi0, lo0 = _mulhilo(_M0, x0)
        hi1, lo1 = _mulhilo(_M1, x2)
        # the keys as 0-dim tensors: under a dispatch mode (deferred()'s), torch 2.1 refuses ``tensor ^ int``
        key0, key1 = (torch.tensor(k, dtype=torch.int64, device=device) for k in (k0, k1))
        x0, x1, x2, x3 = hi1 ^ x1 ^ key0, lo1, hi0 ^ x3 ^ key1, lo0
        k0, k1 = (k0 + _W0) & _MASK32, (k1 + _W1) & _MASK32
    return torch.stack([x0, x1, x2, x3], dim=1)


def reference_words(stream: Stream, first: int, count: int, device: torch.device | str = "cpu") -> Tensor:
    """Words ``[first, first + count)`` of ``stream`` (uint32 values in int64), by torch operations."""
    b0 = first // 4
    blocks = _reference_blocks(stream, b0, (first + count + 3) // 4 - b0, torch.device(device))
    return blocks.reshape(-1)[first - 4 * b0:first - 4 * b0 + count]


def _polynomial(coefficients: list[float], x: Tensor) -> Tensor:
    p = coefficients[-1] * torch.ones_like(x)
    for c in reversed(coefficients[:-1]):
        p = p * x + c
    return p


def _reference_log(x: Tensor, bias: float = 1023.0) -> Tensor:
    """``log`` of positive normal float64 values as the kernel computes it: ``e ln 2 + 2 s P(s^2)``.

    ``x = m 2^(E - bias)`` with ``m`` in ``[sqrt(1/2), sqrt(2)]``, ``s = (m - 1)/(m + 1)`` and ``P``
    the fixed polynomial :data:`_LOG_C`; ``bias`` other than 1023 scales ``x`` by a power of two.
    """
    bits = x.view(torch.int64)
    e = (bits >> 52).to(torch.float64) - bias
    m = ((bits & 0x000FFFFFFFFFFFFF) | 0x3FF0000000000000).view(torch.float64)
    big = m > _SQRT2
    m = torch.where(big, m * 0.5, m)
    e = torch.where(big, e + 1.0, e)
    s = (m - 1.0) / (m + 1.0)
    return e * _LN2 + (s * 2.0) * _polynomial(_LOG_C, s * s)


def _reference_standard_normals(stream: Stream, first: int, count: int, device: torch.device) -> Tensor:
    """Standard normals ``z_first .. z_{first+count-1}`` in float64 (the module docstring's transform)."""
    b0 = first // 4
    w = _reference_blocks(stream, b0, (first + count + 3) // 4 - b0, device)
    x = w[:, 0::2].to(torch.float64) + 0.5  # radius words a, d
    log_u = _reference_log(x, 1055.0)  # log((a + 1/2) 2^-32): the 2^-32 folded into the exponent, as the kernel does
    r = _sqrt(log_u * -2.0)
    c = w[:, 1::2]  # angle words c, e
    q = c >> 30
    phi = ((c & 0x3FFFFFFF).to(torch.float64) * 2.0**-30 + (2.0**-31 - 0.5)) * _HALF_PI
    p2 = phi * phi
    sin, cos = phi * _polynomial(_SIN_C, p2), _polynomial(_COS_C, p2)
    odd = (q & 1) == 1
    x_, y_ = torch.where(odd, sin, cos), torch.where(odd, cos, sin)
    cos_t = torch.where(((q + 1) & 2) != 0, -x_, x_)
    sin_t = torch.where((q & 2) != 0, -y_, y_)
    z = torch.stack([r[:, 0] * cos_t[:, 0], r[:, 0] * sin_t[:, 0], r[:, 1] * cos_t[:, 1], r[:, 1] * sin_t[:, 1]], 1)
    return z.reshape(-1)[first - 4 * b0:first - 4 * b0 + count]


def _sqrt(x: Tensor) -> Tensor:
    """Correctly rounded float64 sqrt. torch's CPU kernel is not (1 ulp off in ~1% of values, AVX-512 build,
    torch 2.13), NumPy's is, and so is CUDA's: the spec's sqrt is the IEEE one, as in the C kernel. Without NumPy,
    torch's result is corrected (:func:`correctly_rounded_sqrt`)."""
    if x.device.type == "cpu":
        try:
            import numpy as np
        except ImportError:
            return correctly_rounded_sqrt(x)
        return torch.from_numpy(np.sqrt(x.numpy()))
    return torch.sqrt(x)


#: Dekker's splitter for float64: 2^27 + 1.
_SPLIT = 134217729.0


def correctly_rounded_sqrt(x: Tensor) -> Tensor:
    """The correctly rounded square root of the positive finite float64 ``x``, from torch's (at most 1 ulp off):
    of ``y`` and its two neighbours, the one whose square is nearest ``x``. The square's error is computed exactly
    with Dekker's product (no fused multiply-add), and ``y*y - x`` is exact by Sterbenz's lemma; a square root is
    never halfway between two doubles, so there is no tie."""
    y = torch.sqrt(x)
    below, above = next_float(y, up=False), next_float(y, up=True)
    candidates = torch.stack([below, y, above])
    t = candidates * _SPLIT
    hi = t - (t - candidates)
    lo = candidates - hi
    p = candidates * candidates
    e = ((hi * hi - p) + 2.0 * hi * lo) + lo * lo  # p + e == candidates**2 exactly
    residual = ((p - x) + e).abs()
    return candidates.gather(0, residual.argmin(0, keepdim=True)).squeeze(0)


def _reference_values(stream: Stream, kind: str, a: float, b: float, first: int, count: int,
                      dtype: torch.dtype, device: torch.device) -> Tensor:
    """Elements ``[first, first + count)`` of ``kind`` in ``dtype`` (float64 or float32; others from float32)."""
    wide = torch.float64 if dtype == torch.float64 else torch.float32
    if kind == "normal_":
        values = (_reference_standard_normals(stream, first, count, device) * b + a).to(wide)
    else:
        span = b - a
        if wide == torch.float64:
            w = reference_words(stream, 2 * first, 2 * count, device).view(count, 2)
            u = ((w[:, 0] << 21) | (w[:, 1] >> 11)).to(torch.float64) * 2.0**-53
        else:
            u = (reference_words(stream, first, count, device) >> 8).to(torch.float64) * 2.0**-24
        values = (u * span + a).to(wide)
        top = torch.tensor(b, dtype=torch.float64, device=device).to(wide)
        values = torch.where(values >= top, next_float(top, up=False), values)
    return _narrow(values, kind, b, dtype)


def _ceiling(high: float, dtype: torch.dtype) -> float:
    """The largest value of ``dtype`` below ``high`` as float32 rounds it then ``dtype`` does: a uniform's cap."""
    top = torch.tensor(high, dtype=torch.float64, device="cpu").to(torch.float32).to(dtype)
    return float(next_float(top, up=False))


def _narrow(values: Tensor, kind: str, high: float, dtype: torch.dtype, out: Tensor | None = None) -> Tensor:
    """float32 values in a lower dtype (into ``out`` if given); a uniform that rounded up to ``high`` is capped."""
    if values.dtype == dtype and out is None:
        return values
    out = values.to(dtype) if out is None else out.copy_(values)
    if kind == "uniform_" and dtype not in (torch.float32, torch.float64):
        out.clamp_max_(_ceiling(high, dtype))
    return out


# ---- the C kernel -------------------------------------------------------------------------------------------


def _load_kernel() -> tuple[ctypes.CDLL | None, str]:
    """The kernel library next to this module, and a word on its status (why it is not loaded)."""
    if os.environ.get("TORCHINIT_NO_KERNEL"):  # to test and time the torch-operations path
        return None, "disabled by TORCHINIT_NO_KERNEL"
    here = os.path.dirname(os.path.abspath(__file__))
    found = [os.path.join(here, name) for name in sorted(os.listdir(here))
             if name.startswith("_philox.") and name.endswith((".so", ".dylib", ".dll"))]  # fmt: skip
    if not found:  # not built (no C compiler at install)
        return None, "not built (no C compiler at install): the torch-operations stream is used, same bits"
    try:
        lib = ctypes.CDLL(found[0])
    except OSError as err:  # pragma: no cover
        return None, f"not loadable ({err})"
    u32, u64, dbl, ptr = ctypes.c_uint32, ctypes.c_uint64, ctypes.c_double, ctypes.c_void_p
    lib.ti_words.argtypes = [u32, u32, u32, u32, u64, u64, ptr]
    lib.ti_words.restype = None
    for fn in ("ti_normal_f32", "ti_normal_f64", "ti_uniform_f32", "ti_uniform_f64"):
        getattr(lib, fn).argtypes = [u32, u32, u32, u32, u64, u64, dbl, dbl, ptr]
        getattr(lib, fn).restype = None
    lib.ti_trunc_poly_f32.argtypes = [u32, u32, u32, u32, u64, u64, dbl, dbl, dbl, dbl, dbl, ptr, ctypes.c_int32,
                                      ctypes.c_float, ctypes.c_float, ptr]
    lib.ti_trunc_poly_f32.restype = None
    return lib, f"loaded from {found[0]}"


#: The compiled kernel (a ctypes library), or None where it was not built: then the torch-operations path runs.
#: ``KERNEL_STATUS`` says which, and why.
KERNEL, KERNEL_STATUS = _load_kernel()


def _kernel_fill(stream: Stream, kind: str, a: float, b: float, first: int, out: Tensor) -> None:
    """``out`` (contiguous CPU float32/float64) = elements ``[first, first + out.numel())``; GIL released."""
    fn = getattr(KERNEL, f"ti_{kind[:-1]}_f{64 if out.dtype == torch.float64 else 32}")
    fn(stream.k0, stream.k1, stream.sub & _MASK32, stream.sub >> 32, first, out.numel(), a, b, out.data_ptr())


#: The most polynomial coefficients :func:`trunc_poly_` takes (the kernel's fixed buffer).
MAX_COEFFS = 32


def _coefficients(coeffs: Any) -> list[float]:
    """``coeffs`` as 1 to :data:`MAX_COEFFS` finite floats: the kernel reads exactly ``len(coeffs)`` of them."""
    if isinstance(coeffs, (str, bytes)) or not hasattr(coeffs, "__len__"):
        raise TypeError(f"coeffs must be a list of floats; got {type(coeffs).__name__}")
    if not 1 <= len(coeffs) <= MAX_COEFFS:
        raise ValueError(f"coeffs: 1 to {MAX_COEFFS} coefficients; got {len(coeffs)}")
    return [_finite(f"coeffs[{k}]", c) for k, c in enumerate(coeffs)]


def trunc_poly_(out: Tensor, stream: Stream, first: int, y_lo: float, y_hi: float, mean: float,
                a0: float, a1: float, coeffs: list[float], lo: float, hi: float) -> Tensor:
    """The truncated normal's polynomial inverse CDF on the stream: the kernel, or torch operations (same bits).

    ``out`` (float32, any device) gets elements ``[first, first + out.numel())``:
    ``x = mean + y H(a0 + a1 log(1 - y^2))`` with ``y = y_lo + (y_hi - y_lo) (word_i + 1/2) 2^-32``
    and ``H(s) = sum_k coeffs[k] s^k`` (Horner, no fused operations), in float64 with the
    stream's ``log`` (docs/keyed_rng.md), rounded to float32 and clamped to ``[lo, hi]``.
    Used by :mod:`torchinit.schemes.truncnorm`, which fits ``H``; 1 to :data:`MAX_COEFFS` finite coefficients.
    """
    coeffs = _coefficients(coeffs)
    if out.dtype != torch.float32:
        raise TypeError(f"out must be float32; got {out.dtype}")
    if KERNEL is not None and out.device.type == "cpu" and out.is_contiguous() and type(out) is Tensor:
        kernel_trunc_poly(stream, first, out, y_lo, y_hi, mean, a0, a1, coeffs, lo, hi)
        return out
    w = reference_words(stream, first, out.numel(), out.device).to(torch.float64)
    y = y_lo + (y_hi - y_lo) * ((w + 0.5) * 2.0**-32)
    s = a0 + a1 * _reference_log(1.0 - y * y)
    p = coeffs[-1] * torch.ones_like(s)
    for c in reversed(coeffs[:-1]):
        p = p * s + c
    return out.copy_((mean + y * p).to(torch.float32).clamp_(lo, hi).view(out.shape))


def kernel_trunc_poly(stream: Stream, first: int, out: Tensor, y_lo: float, y_hi: float, mean: float,
                      a0: float, a1: float, coeffs: list[float], lo: float, hi: float) -> None:
    """:func:`trunc_poly_` by the kernel (``KERNEL`` must be built; ``out`` contiguous CPU float32); GIL released."""
    coeffs = _coefficients(coeffs)
    c = (ctypes.c_double * len(coeffs))(*coeffs)
    kernel = cast(ctypes.CDLL, KERNEL)  # built: the caller checked
    kernel.ti_trunc_poly_f32(stream.k0, stream.k1, stream.sub & _MASK32, stream.sub >> 32, first, out.numel(),
                             y_lo, y_hi, mean, a0, a1, c, len(coeffs) - 1, lo, hi, out.data_ptr())


# ---- the thread pool ----------------------------------------------------------------------------------------

def _cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 2


# Helper threads are started with ``_thread`` and fed through a ``_queue.SimpleQueue``, and the caller's side of a
# fill takes only ``_thread`` locks: all C, so a Ctrl-C cannot land halfway through an acquire-release pair of
# Python code (a ThreadPoolExecutor's submit runs threading.Condition code in the caller, and an interrupt at the
# entry of its ``__exit__`` leaves a lock held: the next fill then waits forever). The threads are never joined:
# they sleep in ``get`` between fills and do not hold up the interpreter's exit.
_TASKS: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
_HELPERS_LOCK = _thread.allocate_lock()
_helper_count = 0


def _helper_main() -> None:
    while True:
        _TASKS.get()()  # a _ChunkRun's helper: it catches everything and hands errors to its caller


def _start_helper() -> None:
    """Start one helper thread (``RuntimeError`` where none can start: a thread limit, interpreter shutdown)."""
    _thread.start_new_thread(_helper_main, ())


def _offer(task: Callable[[], None], count: int) -> None:
    """Queue ``task`` for ``count`` helpers, starting helper threads up to ``count`` (at most one per CPU)."""
    global _helper_count
    for _ in range(count):
        _TASKS.put(task)
    with _HELPERS_LOCK:
        while _helper_count < min(count, _cpus()):
            _start_helper()  # a failure leaves tasks queued: they find their call closed whenever they run
            _helper_count += 1


def _forget_helpers() -> None:  # in a forked child the helper threads do not exist
    global _TASKS, _HELPERS_LOCK, _helper_count
    _TASKS, _HELPERS_LOCK, _helper_count = queue.SimpleQueue(), _thread.allocate_lock(), 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_helpers)


def threads() -> int:
    """How many threads one fill uses (the caller's included): torch's intra-op count, at most the CPUs."""
    return max(1, min(torch.get_num_threads(), _cpus()))


def run_chunks(count: int, work: Callable[[int], None], workers: int | None = None) -> None:
    """Call ``work(k)`` for ``k`` in ``range(count)``, in ``workers`` threads (the caller's included).

    Each chunk runs exactly once. An error in any thread, or an interrupt in the caller,
    stops the chunks not yet started; the running ones finish before this returns or raises,
    and no helper task can start a chunk afterwards, even one a helper picks up late (queued
    while no thread could be started). Where no helper thread can be started (at interpreter
    shutdown, under a thread limit), the caller runs every chunk itself.
    """
    run = _ChunkRun(count, work)
    try:
        helpers = min(threads() if workers is None else workers, count) - 1
        if helpers > 0:
            with contextlib.suppress(RuntimeError):  # "can't start new thread": the caller does the rest
                _offer(run.helper, helpers)
        run.loop()
    except BaseException:
        run.stopped = True
        raise
    finally:
        run.close()  # waits for the helpers that started; later ones find it closed
    run.raise_helper_error()


class _ChunkRun:
    """The shared state of one :func:`run_chunks` call: the next chunk, the helpers at work, the first error.

    ``_done`` is held from the start and released by the last helper to finish once the call is closed,
    so the caller waits on a lock it never has to give back (an interrupt cannot leave it half-released).
    """

    def __init__(self, count: int, work: Callable[[int], None]) -> None:
        self.count, self.work = count, work
        self.next_index = itertools.count().__next__  # atomic under the GIL
        self.stopped = False
        self.grad, self.inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
        self._mutex = _thread.allocate_lock()
        self._done = _thread.allocate_lock()
        self._done.acquire()
        self._closed = False
        self._active = 0
        self._error: BaseException | None = None

    def loop(self) -> None:
        """Run chunks until none is left or the run stops."""
        while not self.stopped:
            k = self.next_index()
            if k >= self.count:
                return
            self.work(k)

    def helper(self) -> None:
        """A helper thread's part: nothing at all once the call has ended."""
        with self._mutex:
            if self._closed:
                return
            self._active += 1
        try:
            # torch's grad and inference modes are per thread: the helpers work in the caller's
            with torch.inference_mode(self.inference), torch.set_grad_enabled(self.grad):
                self.loop()
        except BaseException as err:  # handed to the caller
            self.stopped = True
            self._error = self._error or err
        finally:
            with self._mutex:
                self._active -= 1
                if self._closed and not self._active:
                    self._done.release()

    def close(self) -> None:
        """No helper starts from now on; wait for those at work (nothing writes after the call returns).

        A ``KeyboardInterrupt`` while waiting stops the helpers' next chunks, and the wait goes on before it
        is raised: the chunks running then finish (each is short).
        """
        interrupted: BaseException | None = None
        while True:
            try:
                self._wait()
                break
            except BaseException as err:  # a Ctrl-C in the wait
                self.stopped = True
                interrupted = interrupted or err
        if interrupted is not None:
            raise interrupted

    def _wait(self) -> None:
        with self._mutex:
            self._closed = True
            busy = self._active > 0
        while busy and not self._done.acquire(timeout=0.05):
            pass

    def raise_helper_error(self) -> None:
        if self._error is not None:
            raise self._error


# ---- filling tensors ----------------------------------------------------------------------------------------


def _check_target(tensor: Tensor, what: str) -> None:
    if not isinstance(tensor, Tensor):
        raise TypeError(f"tensor must be a torch.Tensor; got {type(tensor).__name__}")
    if tensor.dtype not in _FLOATS:
        raise TypeError(f"{what}: tensor dtype must be one of {[str(d) for d in _FLOATS]}; got {tensor.dtype}")


#: Elements ``offset + i`` of a fill stay below this (float64 uniforms use two words each; the torch-operations
#: implementation indexes words in int64).
MAX_ELEMENT = 1 << 61


def _fill(tensor: Tensor, stream: Stream, kind: str, a: float, b: float, offset: int,
          workers: int | None) -> Tensor:
    offset = _u64(offset, "offset")
    if offset + tensor.numel() > MAX_ELEMENT:
        raise ValueError(f"offset + numel must be at most 2**61; got offset={offset}, numel={tensor.numel()}")
    try:  # torch's own checks of an in-place write (a leaf that requires grad, an inference tensor), on no element
        tensor.unsqueeze(0)[:0].zero_()  # also bumps the version counter, as the write below does not
    except RuntimeError as err:
        raise ValueError(f"tensor cannot be written in place here: {err}") from None
    n = tensor.numel()
    if n == 0:
        return tensor
    target = tensor.detach()
    if not _kernel_can_write(target):
        with _outside_func_transforms():  # the values are constants of the index, whatever transform is active
            values = torch.cat([
                _reference_values(stream, kind, a, b, offset + s, min(REFERENCE_CHUNK, n - s), target.dtype,
                                  target.device)
                for s in range(0, n, REFERENCE_CHUNK)
            ])
        target.copy_(values.view(target.shape))
        return tensor
    contiguous = target.is_contiguous()
    flat = target.view(-1) if contiguous else torch.empty(n, dtype=target.dtype, device="cpu")
    wide = flat.dtype in (torch.float32, torch.float64)

    def work(k: int) -> None:
        part = flat[k * CHUNK:(k + 1) * CHUNK]
        if wide:
            _kernel_fill(stream, kind, a, b, offset + k * CHUNK, part)
        else:
            buffer = torch.empty(part.numel(), dtype=torch.float32, device="cpu")
            _kernel_fill(stream, kind, a, b, offset + k * CHUNK, buffer)
            _narrow(buffer, kind, b, part.dtype, out=part)

    _all_chunks(math.ceil(n / CHUNK), work, 1 if n < PARALLEL_THRESHOLD else workers)
    if not contiguous:
        target.copy_(flat.view(target.shape))
    return tensor


def _kernel_can_write(target: Tensor) -> bool:
    """Whether the kernel can write ``target``'s memory: a plain CPU tensor with storage. A tensor inside a
    ``torch.func`` transform (``vmap``, ``grad``) has none and takes the torch-operations path, whose values are
    the same for every vmapped sample: they depend on the seed, the name and the index within the tensor only."""
    return (KERNEL is not None and target.device.type == "cpu" and type(target) is Tensor
            and not torch._C._functorch.is_functorch_wrapped_tensor(target))


def _outside_func_transforms() -> Any:
    """A context in which ``torch.func`` transforms do not wrap new tensors (``torch.func.grad`` would, and NumPy's
    sqrt cannot read a wrapped tensor); plain torch where that switch does not exist."""
    disable = getattr(torch._C, "_DisableFuncTorch", None)
    return contextlib.nullcontext() if disable is None else disable()


#: How many times :func:`_all_chunks` runs the chunks an interrupt left unwritten before it gives up.
COMPLETION_ROUNDS = 3


def _all_chunks(count: int, work: Callable[[int], None], workers: int | None) -> None:
    """:func:`run_chunks` for a fill written in place: if it raises (a Ctrl-C, an error in a helper), the chunks
    not yet written are written before the exception propagates, so the tensor is complete, never half-written.

    A chunk's values depend on its index only, so writing a chunk again (one interrupted halfway) gives the same
    bits, and completing costs nothing when nothing goes wrong (staging the whole tensor doubled the time of a
    16M-element fill, 25 to 51 ms). A chunk that keeps failing is tried :data:`COMPLETION_ROUNDS` more times;
    only then does the error leave the tensor partly written (no such error is known for the kernel: it
    allocates nothing for float32/float64, and a float32 buffer of one chunk for float16/bfloat16).
    """
    written = bytearray(count)

    def write(k: int) -> None:
        work(k)
        written[k] = 1

    try:
        run_chunks(count, write, workers)
    except BaseException:
        _write_the_rest(written, write, workers)
        raise


def _write_the_rest(written: bytearray, write: Callable[[int], None], workers: int | None) -> None:
    """Write the chunks ``written`` does not mark, in up to :data:`COMPLETION_ROUNDS` rounds. A chunk that fails
    (another Ctrl-C) does not stop the others; it is left for the next round. The caller raises the first error."""

    def write_or_leave(k: int) -> None:
        with contextlib.suppress(BaseException):  # unmarked: the next round writes it again
            write(k)

    for _ in range(COMPLETION_ROUNDS):
        with contextlib.suppress(BaseException):  # a Ctrl-C between chunks: keep completing
            left = [k for k, done in enumerate(written) if not done]
            if not left:
                return
            run_chunks(len(left), functools.partial(_indexed, write_or_leave, left), workers)


def _indexed(work: Callable[[int], None], indices: list[int], j: int) -> None:
    work(indices[j])


def _finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(value)  # NumPy scalars, 0-d tensors
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a real number; got {type(value).__name__}") from None
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite; got {value}")
    return value


def normal_(tensor: Tensor, stream: Stream, mean: float = 0.0, std: float = 1.0, *, offset: int = 0,
            workers: int | None = None) -> Tensor:
    r"""Fill ``tensor`` with :math:`\mathcal{N}(\text{mean}, \text{std}^2)` from ``stream``: element ``i`` gets value
    ``offset + i``.

    ``i`` is the row-major index, whatever the strides. Deterministic in
    ``(stream, offset, index, dtype, mean, std)``; never in the device, the thread count
    or the chunking. ``workers`` caps the threads (default: :func:`threads`).

    Example:
        >>> from torchinit.rng import keyed
        >>> w = keyed.normal_(torch.empty(1000, 10), keyed.Stream.of(0, "w"), std=0.02)
        >>> torch.equal(w[500:], keyed.normal_(torch.empty(500, 10), keyed.Stream.of(0, "w"), std=0.02, offset=5000))
        True
    """
    _check_target(tensor, "normal_")
    mean, std = _finite("mean", mean), _finite("std", std)
    if std < 0:
        raise ValueError(f"std must be >= 0; got {std}")
    return _fill(tensor, stream, "normal_", mean, std, offset, workers)


def uniform_(tensor: Tensor, stream: Stream, low: float = 0.0, high: float = 1.0, *, offset: int = 0,
             workers: int | None = None) -> Tensor:
    r"""Fill ``tensor`` with :math:`\mathcal{U}[\text{low}, \text{high})` from ``stream`` (see :func:`normal_`).

    Example:
        >>> from torchinit.rng import keyed
        >>> u = keyed.uniform_(torch.empty(4096), keyed.Stream.of(1), -1.0, 1.0)
        >>> bool(u.min() >= -1) and bool(u.max() < 1)
        True
    """
    _check_target(tensor, "uniform_")
    low, high = _finite("low", low), _finite("high", high)
    if not low <= high:
        raise ValueError(f"uniform_ needs low <= high; got low={low}, high={high}")
    return _fill(tensor, stream, "uniform_", low, high, offset, workers)


def words(stream: Stream, first: int, count: int) -> Tensor:
    """Words ``[first, first + count)`` of ``stream`` as an int64 tensor of uint32 values (the kernel when built)."""
    first, count = _u64(first, "first"), _u64(count, "count")
    if KERNEL is None:
        return reference_words(stream, first, count)
    out = torch.empty(count, dtype=torch.int32, device="cpu")
    KERNEL.ti_words(stream.k0, stream.k1, stream.sub & _MASK32, stream.sub >> 32, first, count, out.data_ptr())
    return out.to(torch.int64) & _MASK32
