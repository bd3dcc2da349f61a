"""CPU benchmarks of torchinit against torch.nn.init (``make bench``).

Every torchinit function with a ``torch.nn.init`` twin is timed against it in
the same run, on the same preallocated tensor, beside the memset floor
(``tensor.zero_()``) and the plain RNG fill it builds on (``normal_`` or
``uniform_``). Functions without a twin are timed against that plain fill.
The extra peak resident memory of one call is measured per function and
implementation in a fresh subprocess. The markdown goes to
``benchmarks/results/cpu.md`` and to stdout; progress goes to stderr.

    python benchmarks/run.py                   # the whole suite
    python benchmarks/run.py --mem INDEX IMPL  # internal: one peak-memory probe
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import inspect
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.init as tinit
from torch import Tensor

import torchinit as ti

try:  # the published glass init, a dev dependency
    import glassInit as glass_ref
except ImportError:  # pragma: no cover
    glass_ref = None

Fill = Callable[[Tensor, torch.Generator], object]

SEED = 0
REPEATS = 11
SLOW_REPEATS = 3  # for calls that take seconds (torch's trunc_normal_, glassinit, big QRs)
TARGET = 1.5  # the project's bar for trunc_normal_: at most 1.5x normal_
THREADS = torch.get_num_threads()  # the machine default, read before anything changes it
RESULTS = Path(__file__).resolve().parent / "results" / "cpu.md"

REFS: dict[str, Fill] = {
    "zero_": lambda t, g: t.zero_(),
    "normal_": lambda t, g: t.normal_(generator=g),
    "uniform_": lambda t, g: t.uniform_(generator=g),
}


@dataclass(frozen=True)
class Case:
    """One table row: a torchinit call, its torch twin (if any) and the plain fill to compare with."""

    label: str
    shape: tuple[int, ...]
    ours: Fill
    theirs: Fill | None = None
    ref: str = "normal_"  # a key of REFS
    dtype: torch.dtype = torch.float32
    theirs_repeats: int = REPEATS
    ours_repeats: int = REPEATS

    def impl(self, name: str) -> Fill:
        return {"ours": self.ours, "theirs": self.theirs, "ref": REFS[self.ref]}[name]  # type: ignore[return-value]

    @property
    def memory_impls(self) -> tuple[str, str]:
        return ("ours", "theirs") if self.theirs else ("ours", "ref")


@dataclass
class Row:
    case: Case
    ms: dict[str, float]
    mib: dict[str, float] = field(default_factory=dict)


Column = tuple[str, Callable[[Row], str]]


@dataclass(frozen=True)
class Group:
    title: str
    note: str
    cases: list[Case]
    columns: list[Column]


# ---------------------------------------------------------------- cases

SQ = (4096, 4096)  # 16M fp32 values, 64 MiB
CONV = (1024, 1024, 4, 4)  # as many values, for dirac_
N32M = (32 * 1024 * 1024,)
SIGMA_U = 0.02 / ti.truncated_std_factor(2.0)  # trunc_normal_std_(std=0.02) draws N(0, SIGMA_U) cut at +-2 SIGMA_U


def twin(name: str, shape: tuple[int, ...], ref: str, *args: object, **kw: object) -> Case:
    """A case calling ``name`` with the same arguments in torchinit and in torch.nn.init."""
    ours, theirs = getattr(ti, name), getattr(tinit, name)
    if "generator" in inspect.signature(theirs).parameters:
        return Case(name, shape, lambda t, g: ours(t, *args, generator=g, **kw),
                    lambda t, g: theirs(t, *args, generator=g, **kw), ref)  # fmt: skip
    return Case(name, shape, lambda t, g: ours(t, *args, **kw), lambda t, g: theirs(t, *args, **kw), ref)


def slow(case: Case) -> Case:
    """The same case, timed SLOW_REPEATS times for both implementations."""
    return dataclasses.replace(case, theirs_repeats=SLOW_REPEATS, ours_repeats=SLOW_REPEATS)


def trunc(label: str, dtype: torch.dtype = torch.float32, **kw: float) -> Case:
    """A trunc_normal_ row on 32M values; torch's twin gets fewer repeats."""
    return Case(label, N32M, lambda t, g: ti.trunc_normal_(t, generator=g, **kw),
                lambda t, g: tinit.trunc_normal_(t, generator=g, **kw), "normal_", dtype, SLOW_REPEATS)  # fmt: skip


def fmt_ms(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def ms(key: str) -> Callable[[Row], str]:
    return lambda r: fmt_ms(r.ms.get(key))


def fmt_ratio(x: float) -> str:
    return f"{x:.2f}×" if x >= 0.1 else f"{x:.3f}×"


def ratio(num: str, den: str) -> Callable[[Row], str]:
    return lambda r: fmt_ratio(r.ms[num] / r.ms[den]) if num in r.ms and den in r.ms else "—"


def mib(key: str) -> Callable[[Row], str]:
    return lambda r: f"{r.mib[key]:.1f}" if key in r.mib else "—"


def tensor_desc(r: Row) -> str:
    dtype = {torch.float32: "fp32", torch.bfloat16: "bf16"}.get(r.case.dtype, str(r.case.dtype))
    return "×".join(map(str, r.case.shape)) + " " + dtype


def meets_target(r: Row) -> str:
    return "yes" if r.ms["ours"] <= TARGET * r.ms["ref"] else "**NO**"


LABEL: Column = ("call", lambda r: f"`{r.case.label}`")
TENSOR: Column = ("tensor", tensor_desc)
OURS: Column = ("torchinit (ms)", ms("ours"))
FLOOR: Column = ("zero_ floor (ms)", ms("zero_"))
TWIN_COLUMNS: list[Column] = [
    LABEL, TENSOR, OURS, ("torch (ms)", ms("theirs")), ("torchinit / torch", ratio("ours", "theirs")), FLOOR,
    ("reference", lambda r: f"`{r.case.ref}`"), ("reference (ms)", ms("ref")),
    ("torchinit / reference", ratio("ours", "ref")),
    ("torchinit peak (MiB)", mib("ours")), ("torch peak (MiB)", mib("theirs")),
]  # fmt: skip
TRUNC_COLUMNS: list[Column] = [
    LABEL, TENSOR, OURS, ("torch (ms)", ms("theirs")), ("normal_ (ms)", ms("ref")), FLOOR,
    ("torchinit / normal_", ratio("ours", "ref")), (f"≤ {TARGET}× normal_", meets_target),
    ("torch / normal_", ratio("theirs", "ref")), ("torchinit / torch", ratio("ours", "theirs")),
    ("torchinit peak (MiB)", mib("ours")), ("torch peak (MiB)", mib("theirs")),
]  # fmt: skip
NO_TWIN_COLUMNS: list[Column] = [
    LABEL, TENSOR, OURS, FLOOR, ("reference", lambda r: f"`{r.case.ref}`"), ("reference (ms)", ms("ref")),
    ("torchinit / reference", ratio("ours", "ref")),
    ("torchinit peak (MiB)", mib("ours")), ("reference peak (MiB)", mib("ref")),
]  # fmt: skip

GROUPS = [
    Group(
        "Elementwise fills",
        "Deterministic fills use `zero_` itself as the reference.",
        [
            twin("uniform_", SQ, "uniform_", -0.1, 0.1),
            twin("normal_", SQ, "normal_", 0.0, 0.02),
            twin("constant_", SQ, "zero_", 0.5),
            twin("ones_", SQ, "zero_"),
            twin("zeros_", SQ, "zero_"),
            twin("eye_", SQ, "zero_"),
            twin("dirac_", CONV, "zero_"),
        ],
        TWIN_COLUMNS,
    ),
    Group(
        "Variance scaling (torch.nn.init defaults: gain 1, leaky_relu a=0, fan_in)",
        "",
        [
            twin("xavier_uniform_", SQ, "uniform_"),
            twin("xavier_normal_", SQ, "normal_"),
            twin("kaiming_uniform_", SQ, "uniform_"),
            twin("kaiming_normal_", SQ, "normal_"),
        ],
        TWIN_COLUMNS,
    ),
    Group(
        "Structured",
        "`orthogonal_` is dominated by the QR of a Gaussian matrix; the 4096² and 32000×512 rows are timed "
        f"{SLOW_REPEATS} times (after one warm-up) for both implementations. `orthogonal_(blocks=4)` makes four "
        "independent 1024×1024 orthogonal blocks (an LSTM's gates); its torch column is one orthogonal_ of the "
        "whole 4096×1024 tensor, the best torch can do. `identity_` is timed against torch's `eye_`. `sparse_` "
        "uses sparsity 0.1, std 0.01.",
        [
            twin("orthogonal_", (1024, 1024), "normal_"),
            twin("orthogonal_", (2048, 2048), "normal_"),
            slow(twin("orthogonal_", (4096, 4096), "normal_")),
            slow(twin("orthogonal_", (32000, 512), "normal_")),
            Case("orthogonal_(blocks=4)", (4096, 1024), lambda t, g: ti.orthogonal_(t, generator=g, blocks=4),
                 lambda t, g: tinit.orthogonal_(t, generator=g)),
            Case("identity_", SQ, lambda t, g: ti.identity_(t), lambda t, g: tinit.eye_(t), "zero_"),
            twin("sparse_", (1024, 1024), "normal_", 0.1),
        ],
        TWIN_COLUMNS,
    ),
    Group(
        "trunc_normal_ on 32M values (32 × 1024 × 1024)",
        f"The project's target is torchinit ≤ {TARGET}× `normal_` on the same tensor. torch's `trunc_normal_` "
        f"takes seconds here, so it is timed {SLOW_REPEATS} times (after one warm-up) instead of {REPEATS}. "
        "For `trunc_normal_std_(std=0.02)` the torch column is the same distribution in torch's terms: "
        f"`trunc_normal_(std=σ_u, a=-2σ_u, b=2σ_u)` with σ_u = 0.02 / 0.8796 = {SIGMA_U:.6f}.",
        [
            trunc("trunc_normal_(std=1, a=-2, b=2)", std=1.0, a=-2.0, b=2.0),
            trunc("trunc_normal_(std=1, a=-1, b=1)", std=1.0, a=-1.0, b=1.0),
            trunc("trunc_normal_(std=1, a=-0.5, b=0.5)", std=1.0, a=-0.5, b=0.5),
            trunc("trunc_normal_(std=0.02, a=-0.04, b=0.04)", std=0.02, a=-0.04, b=0.04),
            Case("trunc_normal_std_(std=0.02)", N32M, lambda t, g: ti.trunc_normal_std_(t, std=0.02, generator=g),
                 lambda t, g: tinit.trunc_normal_(t, std=SIGMA_U, a=-2 * SIGMA_U, b=2 * SIGMA_U, generator=g),
                 theirs_repeats=SLOW_REPEATS),
            trunc("trunc_normal_(std=0.02, a=-0.04, b=0.04)", torch.bfloat16, std=0.02, a=-0.04, b=0.04),
        ],
        TRUNC_COLUMNS,
    ),
    Group(
        "Without a torch.nn.init twin",
        "Timed against the plain RNG fill of the same distribution family on the same tensor.",
        [
            Case("lecun_uniform_", SQ, lambda t, g: ti.lecun_uniform_(t, generator=g), ref="uniform_"),
            Case("lecun_normal_", SQ, lambda t, g: ti.lecun_normal_(t, generator=g)),
            Case("delta_orthogonal_", (512, 512, 3, 3), lambda t, g: ti.delta_orthogonal_(t, generator=g)),
            Case("hadamard_", (8192, 2048), lambda t, g: ti.hadamard_(t), ref="zero_"),
            Case("sparse_ (conv weight, sparsity 0.1)", (256, 128, 3, 3), lambda t, g: ti.sparse_(t, 0.1, generator=g)),
            *(
                Case(f'variance_scaling_(distribution="{d}")', SQ,
                     lambda t, g, d=d: ti.variance_scaling_(t, 1.0, "fan_in", d, generator=g),
                     ref="uniform_" if d == "uniform" else "normal_")
                for d in ("truncated_normal", "normal", "uniform")
            ),
        ],
        NO_TWIN_COLUMNS,
    ),
]
GLASS_TARGET_SPEEDUP = 10.0  # the goal: at least 10x faster than the reference ...
GLASS_TARGET_MEMORY = 0.5  # ... with extra peak memory under half the weight's bytes


def glass(label: str, shape: tuple[int, ...], ours_kw: dict, ref_kw: dict | None) -> Case:
    """A glass_ row; ``ref_kw`` None means no glassinit twin (the isometric variant)."""
    theirs = None if ref_kw is None else (lambda t, g: glass_ref.glassInit_(t, **ref_kw))
    return Case(label, shape, lambda t, g: ti.glass_(t, generator=g, **ours_kw), theirs, "zero_",
                theirs_repeats=SLOW_REPEATS)


def weight_mib(r: Row) -> float:
    return math.prod(r.case.shape) * torch.empty((), dtype=r.case.dtype).element_size() / 2**20


def glass_targets(r: Row) -> str:
    if "theirs" not in r.ms:
        return "—"
    fast = r.ms["theirs"] / r.ms["ours"] >= GLASS_TARGET_SPEEDUP
    lean = r.mib["ours"] < GLASS_TARGET_MEMORY * weight_mib(r)
    return "yes" if fast and lean else "**NO**"


GLASS_COLUMNS: list[Column] = [
    LABEL, TENSOR, OURS, ("glassinit 0.0.6 (ms)", ms("theirs")), ("glassinit / torchinit", ratio("theirs", "ours")),
    FLOOR, ("torchinit / zero_", ratio("ours", "zero_")),
    ("torchinit peak (MiB)", mib("ours")), ("glassinit peak (MiB)", mib("theirs")),
    ("weight (MiB)", lambda r: f"{weight_mib(r):.0f}"),
    (f"≥ {GLASS_TARGET_SPEEDUP:g}× faster, peak < {GLASS_TARGET_MEMORY:g}× weight", glass_targets),
]  # fmt: skip

if glass_ref is not None:
    WIDE, TALL = (4096, 16384), (16384, 4096)
    GROUPS.append(Group(
        "Glass init against the published glassinit 0.0.6",
        f"The target: at least {GLASS_TARGET_SPEEDUP:g}× faster than the reference on 4096×16384, with "
        f"extra peak memory under {GLASS_TARGET_MEMORY:g}× the weight's bytes. glassinit takes seconds here, so it "
        f"is timed {SLOW_REPEATS} times (after one warm-up) instead of {REPEATS}. torchinit draws its signs from "
        "the benchmark's generator, glassinit from the global RNG. The isometric variant has no reference.",
        [
            glass("glass_()", WIDE, {}, {}),
            glass("glass_()", TALL, {}, {}),
            glass("glass_(zero_mean=False)", WIDE, {"zero_mean": False}, {"zeroMean": False}),
            glass("glass_(sparse=True)", TALL, {"sparse": True}, {"sparse": True}),
            glass("glass_()", (8192, 8192), {}, {}),
            glass("glass_(isometric=True)", WIDE, {"isometric": True}, None),
        ],
        GLASS_COLUMNS,
    ))

CASES = [case for group in GROUPS for case in group.cases]


# ---------------------------------------------------------------- measuring


def median_ms(calls: dict[str, Fill], tensor: Tensor, repeats: dict[str, int]) -> dict[str, float]:
    """Median wall time (ms) of each call on ``tensor``.

    One warm-up call each, then the calls interleaved round-robin; the generator
    is reseeded with SEED (untimed) before every call of every implementation.
    """
    gen = torch.Generator()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for i in range(-1, max(repeats.values())):  # i == -1 is the warm-up
        for name, fill in calls.items():
            if i < repeats[name]:
                gen.manual_seed(SEED)
                start = time.perf_counter()
                fill(tensor, gen)
                elapsed = (time.perf_counter() - start) * 1e3
                if i >= 0:
                    samples[name].append(elapsed)
    return {name: statistics.median(s) for name, s in samples.items()}


# On Linux a child inherits ru_maxrss from the process it was forked from (across exec), which would
# hide the call's peak below this big process's; a small intermediate Python gives the probe a clean one.
LAUNCH = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"


def peak_mib(index: int, impl: str) -> float:
    """Extra peak RSS (MiB) of one call of ``CASES[index].impl(impl)``, measured in a fresh subprocess."""
    cmd = [sys.executable, "-c", LAUNCH, sys.executable, __file__, "--mem", str(index), impl]
    return float(subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout.split()[-1])


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)


def probe(index: int, impl: str) -> None:
    """Subprocess side of peak_mib: print ru_maxrss after one call minus ru_maxrss before it."""
    case = CASES[index]
    fill, gen = case.impl(impl), torch.Generator()
    fill(torch.empty([min(s, 4) for s in case.shape], dtype=case.dtype), gen.manual_seed(SEED))  # load lazy code
    tensor = torch.empty(case.shape, dtype=case.dtype).fill_(1)  # allocate and touch every page
    before = maxrss_mib()
    if os.path.exists("/proc/self/statm"):  # the baseline must be the current RSS, or a peak could hide below it
        with open("/proc/self/statm") as statm:
            rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        if before - rss > 1.0:
            raise RuntimeError(f"ru_maxrss {before:.1f} MiB exceeds the current RSS {rss:.1f} MiB before the call")
    fill(tensor, gen.manual_seed(SEED))
    print(f"{maxrss_mib() - before:.3f}")


@functools.cache
def preallocated(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    return torch.empty(shape, dtype=dtype)


def run_case(index: int) -> Row:
    case = CASES[index]
    calls: dict[str, Fill] = {"ours": case.ours, "zero_": REFS["zero_"]}
    repeats = {"ours": case.ours_repeats, "zero_": REPEATS}
    if case.theirs:
        calls["theirs"], repeats["theirs"] = case.theirs, case.theirs_repeats
    if case.ref != "zero_":
        calls["ref"], repeats["ref"] = REFS[case.ref], REPEATS
    row = Row(case, median_ms(calls, preallocated(case.shape, case.dtype), repeats))
    row.ms.setdefault("ref", row.ms["zero_"])
    row.mib = {impl: peak_mib(index, impl) for impl in case.memory_impls}
    return row


# ---------------------------------------------------------------- report


def machine_info() -> list[tuple[str, str]]:
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as cpuinfo:
            names = [ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    return [
        ("date (UTC)", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")),
        ("torch", torch.__version__),
        ("torchinit", ti.__version__),
        ("python", platform.python_version()),
        ("platform", platform.platform()),
        ("CPU", cpu),
        ("torch threads (machine default)", str(torch.get_num_threads())),
        ("logical CPUs (os.cpu_count)", str(os.cpu_count())),
    ]


def table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def report(rows: list[Row], seconds: float) -> str:
    out = [
        "# torchinit vs torch.nn.init: CPU benchmarks",
        "",
        "Written by `make bench` (`benchmarks/run.py`).",
        "",
        table(["machine", ""], [list(kv) for kv in machine_info()]),
        "",
        "**How it was measured.** Each row runs its calls on one preallocated tensor (same shape and dtype, "
        "the same tensor object for torchinit, torch, the floor and the reference). Every call runs once as a "
        f"warm-up and then {REPEATS} times ({SLOW_REPEATS} for the slow calls each group's note names), the "
        "implementations interleaved round-robin; the tables show the **median** wall time "
        "(`time.perf_counter`) in ms. A `torch.Generator` is reseeded with the same seed before every call of "
        "either implementation. **zero_ floor** is `tensor.zero_()` on the same tensor: the memset floor, the "
        "least any fill of that tensor can cost. **reference** is the plain RNG fill (`tensor.normal_()` or "
        "`tensor.uniform_()`) on the same tensor. Ratios are of medians.",
        "",
        "**Peak memory.** For each function and implementation a fresh subprocess "
        "(`run.py --mem INDEX IMPL`) imports torch, makes one call on a tiny tensor of the same rank to load "
        "lazily initialized code, allocates the benchmark tensor and touches every page (`fill_(1)`), records "
        "`resource.getrusage(RUSAGE_SELF).ru_maxrss`, runs the call once, and records `ru_maxrss` again. "
        "The probe is started through a small intermediate process (on Linux a child inherits its parent's "
        "`ru_maxrss` across fork and exec) and checks that `ru_maxrss` before the call equals its current RSS "
        "within 1 MiB, so the call's peak cannot hide below an earlier one. "
        "The column is the difference in MiB: the extra peak resident memory one call needs beyond the "
        "tensor itself (0 means in place; the resolution is 1 KiB).",
        "",
    ]
    remaining = iter(rows)  # rows are in CASES order, i.e. group by group
    for group in GROUPS:
        group_rows = [next(remaining) for _ in group.cases]
        out += [f"## {group.title}", ""] + ([group.note, ""] if group.note else [])
        out += [table([h for h, _ in group.columns], [[f(r) for _, f in group.columns] for r in group_rows]), ""]
    out.append(f"Total benchmark time: {seconds / 60:.1f} min.")
    return "\n".join(out) + "\n"


def main() -> None:
    torch.set_num_threads(THREADS)
    if sys.argv[1:2] == ["--mem"]:
        probe(int(sys.argv[2]), sys.argv[3])
        return
    print(f"torch {torch.__version__}, torch threads: {torch.get_num_threads()}", file=sys.stderr)
    start, rows = time.perf_counter(), []
    for i, case in enumerate(CASES):
        row = run_case(i)
        rows.append(row)
        times = ", ".join(f"{k} {fmt_ms(v)} ms" for k, v in row.ms.items())
        peaks = ", ".join(f"{k} {v:.1f} MiB" for k, v in row.mib.items())
        print(f"[{i + 1}/{len(CASES)}] {case.label} {tensor_desc(row)}: {times}; peak {peaks}", file=sys.stderr)
    markdown = report(rows, time.perf_counter() - start)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(markdown)
    print(markdown, end="")
    print(f"wrote {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
