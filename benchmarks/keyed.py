"""The keyed stream against torch's RNG (``make bench``): uniform and normal fills at 1 and 2 threads.

16M values (2**24) per fill, fp32 and bf16, on a preallocated tensor touched first (no page
faults in the timings). Rows, all in one process, interleaved, median of ``REPEATS`` after a
warm-up:

* torch: ``tensor.uniform_(generator=g)`` / ``tensor.normal_(generator=g)`` (serial in torch's CPU
  kernel whatever the thread count);
* keyed, 1 thread / keyed, 2 threads: ``torchinit.rng.keyed.uniform_``/``normal_`` with ``workers=1``/``2``;
* memset floor: ``tensor.zero_()``.

The truncated normal rows (N(0, 1) cut at ±2) compare torch's ``nn.init.trunc_normal_`` with
torchinit's ``trunc_normal_``, whose large-tensor path is the keyed kernel, with torchinit's
thread pool capped at 1 and 2 threads (``keyed.threads`` patched in this process); its time
includes the staging copy that keeps the tensor unchanged on errors.

Peak memory: the extra resident memory of one call above the tensor (VmHWM reset through
``/proc/self/clear_refs`` before the call), in MiB. The markdown goes to ``benchmarks/results/keyed.md``.

    python benchmarks/keyed.py
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

import torchinit as ti
from torchinit.rng import keyed

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_init import load, peak_kib, reset_peak, source_state, status_kib

N = 1 << 24
REPEATS = 11
RESULTS = Path(__file__).resolve().parent / "results" / "keyed.md"


def _threads(n: int, call: Callable[[], object]) -> Callable[[], object]:
    """``call`` with torchinit's pools capped at ``n`` threads (keyed.threads patched here only)."""

    def capped() -> object:
        original = keyed.threads
        keyed.threads = lambda: n
        try:
            return call()
        finally:
            keyed.threads = original

    return capped


def cases(t: torch.Tensor, kind: str, gen: torch.Generator) -> dict[str, Callable[[], object]]:
    if kind == "trunc_normal_":  # torch's sampler against torchinit's, whose large-tensor path runs on the kernel
        return {
            "torch": lambda: torch.nn.init.trunc_normal_(t, 0.0, 1.0, -2.0, 2.0, generator=gen),
            "keyed, 1 thread": _threads(1, lambda: ti.trunc_normal_(t, 0.0, 1.0, -2.0, 2.0, generator=gen)),
            "keyed, 2 threads": _threads(2, lambda: ti.trunc_normal_(t, 0.0, 1.0, -2.0, 2.0, generator=gen)),
            "memset floor": lambda: t.zero_(),
        }
    stream = keyed.Stream.of(0, "bench")
    return {
        "torch": lambda: getattr(t, kind)(generator=gen),
        "keyed, 1 thread": lambda: getattr(keyed, kind)(t, stream, workers=1),
        "keyed, 2 threads": lambda: getattr(keyed, kind)(t, stream, workers=2),
        "memset floor": lambda: t.zero_(),
    }


def measure(dtype: torch.dtype, kind: str) -> dict[str, tuple[float, float]]:
    t = torch.empty(N, dtype=dtype).zero_()
    gen = torch.Generator().manual_seed(0)
    calls = cases(t, kind, gen)
    times: dict[str, list[float]] = {k: [] for k in calls}
    peaks: dict[str, float] = {}
    for i in range(-1, REPEATS):  # -1: warm-up (the pool's threads, lazy code)
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            if i >= 0:
                times[name].append((time.perf_counter() - start) * 1e3)
    for name, call in calls.items():
        how = reset_peak()
        before = status_kib("VmRSS")
        call()
        peaks[name] = max(0, peak_kib(how) - before) / 1024
    return {k: (statistics.median(v), peaks[k]) for k, v in times.items()}


def main() -> None:
    if keyed.KERNEL is None:
        sys.exit("torchinit.rng.keyed.KERNEL is None: the C kernel is not built (pip install -e . with a C compiler)")
    started = load()
    lines = [
        "# The keyed stream against torch's RNG",
        "",
        "Written by `make bench` (`benchmarks/keyed.py`).",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}; "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}); {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} "
        f"UTC. Load average at the start {started}, at the end LOAD_END. Source: {source_state()}.",
        "",
        f"{N:,} values per fill on a preallocated tensor touched first; one process, the ways interleaved, median of "
        f"{REPEATS} after a warm-up. **× torch**: torch's time / this row's time (above 1: faster than torch). "
        "**peak**: extra resident memory of one call. torch's CPU `normal_`/`uniform_` are serial: one core "
        "whatever the thread count.",
        "",
        "| fill | dtype | way | time (ms) | × torch | × memset floor | peak (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    goals = []
    for kind in ("uniform_", "normal_", "trunc_normal_"):
        for dtype in (torch.float32, torch.bfloat16):
            rows = measure(dtype, kind)
            ref, floor = rows["torch"][0], rows["memset floor"][0]
            for way, (ms, peak) in rows.items():
                lines.append(f"| `{kind}` | {str(dtype).replace('torch.', '')} | {way} | {ms:.1f} | {ref / ms:.2f}× | "
                             f"{ms / floor:.1f}× | {peak:.1f} |")  # fmt: skip
            if kind == "normal_" and dtype == torch.float32:
                one, two = ref / rows["keyed, 1 thread"][0], ref / rows["keyed, 2 threads"][0]
                goals = [
                    f"* 1 thread: {one:.2f}× torch's `normal_` (goal ≥ 1×): **{'met' if one >= 1 else 'not met'}**",
                    f"* 2 threads: {two:.2f}× (goal ≥ 1.7×): **{'met' if two >= 1.7 else 'not met'}**",
                ]
            print(f"{kind} {dtype} done", file=sys.stderr)
    lines += ["", "Goal, 16M fp32 keyed normals against torch's `normal_`:", "", *goals, ""]
    text = "\n".join(lines).replace("LOAD_END", load())
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
