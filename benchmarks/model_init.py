"""Whole-model initialization benchmark (``make bench``): deferred construction + materialize_ vs eager + apply.

The model is transformer-shaped: vocabulary 32000, width 1024, 8 layers with a 4096-wide
MLP, the output head tied to the embedding (~135M parameters, ~513 MiB in fp32). The
initialization is GPT-style: Linear weights truncated normal with std 0.02 cut at ±2σ,
biases 0, the embedding N(0, 0.02), LayerNorms 1 and 0. Three ways to get there, each run
in a fresh process (so time and peak memory are its own), ``RUNS`` times, median shown:

* eager + torch: construct (every constructor runs its own init), then ``model.apply`` with
  ``torch.nn.init`` (``trunc_normal_`` with the same distribution in torch's absolute terms);
* eager + torchinit: the same, with torchinit's functions in ``model.apply``;
* deferred + materialize_: ``with torchinit.deferred()`` construction, then
  ``materialize_(model, policy)`` with the same rules as a Policy.

Peak memory is the process's extra peak resident memory (``ru_maxrss``) over its state
just before construction. Results go to ``benchmarks/results/model_init.md``.

    python benchmarks/model_init.py              # the benchmark
    python benchmarks/model_init.py --run WAY    # internal: one measured run, prints "seconds peak_mib"
"""

from __future__ import annotations

import datetime
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.init as tinit
from torch import nn

import torchinit as ti

RESULTS = Path(__file__).resolve().parent / "results" / "model_init.md"
VOCAB, WIDTH, LAYERS, FF = 32000, 1024, 8, 4096
STD = 0.02
SIGMA_U = STD / ti.truncated_std_factor(2.0)  # the untruncated std whose ±2σ truncation has std 0.02
RUNS = 3
SPEEDUP_TARGET, MEMORY_TARGET = 2.5, 1.3  # issue 5: >= 2.5x faster than eager + apply, peak <= 1.3x the parameters


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
        self.qkv, self.proj = nn.Linear(WIDTH, 3 * WIDTH), nn.Linear(WIDTH, WIDTH)
        self.fc1, self.fc2 = nn.Linear(WIDTH, FF), nn.Linear(FF, WIDTH)


class TransformerLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.wte = nn.Embedding(VOCAB, WIDTH)
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.ln_f = nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, VOCAB, bias=False)
        self.head.weight = self.wte.weight


POLICY = ti.Policy([
    (nn.Linear, {"weight": ti.TruncNormalStd(std=STD), "bias": ti.Zeros()}),
    (nn.Embedding, {"weight": ti.Normal(std=STD)}),
    (nn.LayerNorm, {"weight": ti.Ones(), "bias": ti.Zeros()}),
])  # fmt: skip


def gpt_style(lib, trunc_normal) -> Callable[[nn.Module], None]:
    """The ``model.apply`` function of the eager ways, with ``lib``'s functions (torch.nn.init or torchinit)."""

    def init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal(m.weight)
            if m.bias is not None:
                lib.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            lib.normal_(m.weight, std=STD)
        elif isinstance(m, nn.LayerNorm):
            lib.ones_(m.weight)
            lib.zeros_(m.bias)

    return init


# the same distribution: torch's trunc_normal_ takes absolute bounds around the untruncated std
torch_apply = gpt_style(tinit, lambda w: tinit.trunc_normal_(w, std=SIGMA_U, a=-2 * SIGMA_U, b=2 * SIGMA_U))
torchinit_apply = gpt_style(ti, lambda w: ti.trunc_normal_std_(w, std=STD))


def build(way: str) -> nn.Module:
    if way == "eager + torch.nn.init apply":
        model = TransformerLM()
        model.apply(torch_apply)
    elif way == "eager + torchinit apply":
        model = TransformerLM()
        model.apply(torchinit_apply)
    else:
        with ti.deferred():
            model = TransformerLM()
        ti.materialize_(model, POLICY, strict=True)
    return model


WAYS = ["eager + torch.nn.init apply", "eager + torchinit apply", "deferred + materialize_"]


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)


def one_run(way: str) -> None:
    """Subprocess side: build once, print seconds and extra peak MiB."""
    torch.manual_seed(0)
    before = maxrss_mib()
    start = time.perf_counter()
    model = build(way)
    seconds = time.perf_counter() - start
    peak = maxrss_mib() - before
    assert not any(p.is_meta for p in model.parameters())
    print(f"{seconds:.4f} {peak:.1f}")


# On Linux a child inherits ru_maxrss from its parent across fork and exec; an intermediate small
# Python process gives each run a clean one (as benchmarks/run.py does).
LAUNCH = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"


def measure(way: str) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", LAUNCH, sys.executable, __file__, "--run", way],
                         check=True, stdout=subprocess.PIPE, text=True).stdout.split()  # fmt: skip
    return float(out[-2]), float(out[-1])


def main() -> None:
    if sys.argv[1:2] == ["--run"]:
        one_run(sys.argv[2])
        return
    with ti.deferred():
        probe = TransformerLM()
    numel = sum(p.numel() for p in probe.parameters())
    param_mib = numel * 4 / 2**20
    results: dict[str, tuple[float, float]] = {}
    start = time.perf_counter()
    for way in WAYS:
        runs = [measure(way) for _ in range(RUNS)]
        results[way] = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
        print(f"{way}: {results[way][0]:.2f} s, peak +{results[way][1]:.0f} MiB", file=sys.stderr)
    ours_s, ours_mib = results["deferred + materialize_"]
    rows = []
    for way in WAYS:
        s, mib = results[way]
        rows.append(f"| {way} | {s:.2f} | {s / ours_s:.2f}× | {mib:.0f} | {mib / param_mib:.2f}× |")
    speedup = results["eager + torch.nn.init apply"][0] / ours_s
    lines = [
        "# Whole-model initialization: deferred + materialize_ vs eager + apply",
        "",
        "Written by `make bench` (`benchmarks/model_init.py`).",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {platform.platform()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC.",
        "",
        f"Model: transformer-shaped, vocabulary {VOCAB}, width {WIDTH}, {LAYERS} layers, MLP {FF}, tied head: "
        f"{numel / 1e6:.1f}M parameters, {param_mib:.0f} MiB in fp32. Init: Linear weights truncated normal "
        f"std {STD} at ±2σ, biases 0, embedding N(0, {STD}), LayerNorm 1/0. Each way runs {RUNS} times in a fresh "
        "process; the medians of wall time (construction and initialization) and of the extra peak resident "
        "memory (`ru_maxrss` after minus before) are shown.",
        "",
        "| way | time (s) | time / materialize_ | peak (MiB) | peak / parameter bytes |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"Targets (issue 5): deferred + materialize_ at least {SPEEDUP_TARGET}× faster than eager construction with "
        f"a `model.apply` re-init ({speedup:.2f}×: {'met' if speedup >= SPEEDUP_TARGET else '**not met**'}), and "
        f"peak memory at most {MEMORY_TARGET}× the parameter bytes ({ours_mib / param_mib:.2f}×: "
        f"{'met' if ours_mib <= MEMORY_TARGET * param_mib else '**not met**'}).",
        "",
        f"Total benchmark time: {(time.perf_counter() - start) / 60:.1f} min.",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
