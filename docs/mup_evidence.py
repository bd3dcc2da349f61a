"""The learning-rate sweeps of docs/mup.md: ``python docs/mup_evidence.py`` (``make mup``, about 11 minutes on 2 cores).

Does the learning rate tuned at the smallest width stay the best at larger widths? Each task trains fresh models at
4 widths and 7 log-spaced AdamW learning rates, 3 seeds each, under torch's standard parametrization (``sp``: one
learning rate, the model's own init) and under muP (``mup.policy``, ``mup.param_groups`` and
``mup.forward_changes`` against the smallest width, with ``delta`` at twice it), and records the training loss
(the mean of the last 10 steps). A third sweep changes depth instead of width (2, 4 and 8 blocks at width 64) with
and without ``depth_alpha=1`` (CompleteP). The tasks:

- **digits**: scikit-learn's 8x8 digits (1347 training images), an MLP of two ReLU layers of the width, 150 steps
  of batch 128;
- **text**: a character-level decoder-only transformer (2 pre-norm blocks, head dim 16, so the heads grow with
  width) on a corpus every machine with Python has: the standard library files in :data:`TRAIN_FILES`, read from
  this interpreter's ``Lib`` directory (their text depends on the Python version, which the page records with a
  hash of the corpus); 150 steps of 16 windows of 32 bytes, drawn from the seed.

Everything is seeded (init with ``seed=``, batches from a generator of the seed); the workers are processes with
one intra-op thread each. The script writes every number to ``docs/mup_results.json``, the figures to
``docs/img/mup_*.png`` and the tables into docs/mup.md between the ``<!-- mup evidence -->`` markers (the prose
around them is written by hand from these numbers). ``--quick`` runs a tiny version (for the tests), writing
nothing unless ``--out`` names a directory.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import os
import re
import statistics
import sys
import sysconfig
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import torchinit as ti
import torchinit.mup as mup

DOCS = Path(__file__).resolve().parent
PAGE, RESULTS = DOCS / "mup.md", DOCS / "mup_results.json"
START, END = "<!-- mup evidence:start (docs/mup_evidence.py) -->", "<!-- mup evidence:end -->"

#: The text corpus: these files of the standard library, concatenated in this order as bytes; the last 10% of the
#: bytes are held out (not used for training; the sweep reports the training loss).
TRAIN_FILES = ("textwrap.py", "string.py", "fnmatch.py", "glob.py", "shlex.py", "csv.py", "heapq.py", "bisect.py",
               "colorsys.py", "graphlib.py", "queue.py", "sched.py", "calendar.py", "difflib.py", "ast.py")  # fmt: skip

LRS = tuple(2.0**k for k in range(-14, -0, 2))  # 2^-14 ... 2^-2: 7 rates, a factor of 4 apart
SEEDS = (0, 1, 2)
STEPS = 150
FULL = {
    "digits": {"widths": (64, 128, 256, 512), "depth": 2},
    "text": {"widths": (32, 64, 128, 256), "depth": 2},
    "depth": {"widths": (64,), "depths": (2, 4, 8)},
}
QUICK = {"lrs": (2.0**-10, 2.0**-6, 2.0**-2), "seeds": (0,), "steps": 4,
         "digits": {"widths": (16, 32), "depth": 2}, "text": {"widths": (16, 32), "depth": 2},
         "depth": {"widths": (16,), "depths": (1, 2)}}  # fmt: skip


# ---------------------------------------------------------------- models


class MLP(nn.Module):
    def __init__(self, width: int, depth: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(64 if i == 0 else width, width) for i in range(depth)])
        self.readout = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = F.relu(layer(x))
        return self.readout(x)


class Attention(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.heads = max(width // 16, 1)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d))


class Feedforward(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.ln1, self.attn, self.ln2, self.mlp = nn.LayerNorm(width), Attention(width), nn.LayerNorm(width), \
            Feedforward(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class CharGPT(nn.Module):
    """A decoder-only transformer on bytes: token and position embeddings, pre-norm blocks, an untied readout."""

    def __init__(self, width: int, depth: int = 2, context: int = 32) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(256, width), nn.Embedding(context, width)
        self.blocks = nn.ModuleList([Block(width) for _ in range(depth)])
        self.ln_f, self.head = nn.LayerNorm(width), nn.Linear(width, 256, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


#: The standard parametrization's init: GPT-2's (every weight N(0, 0.02), biases 0, norms 1) for the transformer,
#: torch's own for the MLP.
SP_TEXT = ti.Policy([(nn.Linear, {"weight": ti.Normal(std=0.02), "bias": ti.Zeros()}),
                     (nn.Embedding, {"weight": ti.Normal(std=0.02)})])  # fmt: skip


# ---------------------------------------------------------------- data


def corpus() -> tuple[torch.Tensor, str]:
    """The training bytes of the text task and a description (Python version, sizes, SHA-256 of the corpus)."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    data = b"".join((lib / name).read_bytes() for name in TRAIN_FILES)
    digest = hashlib.sha256(data).hexdigest()[:16]
    train = data[: int(len(data) * 0.9)]
    tokens = torch.frombuffer(bytearray(train), dtype=torch.uint8).long()
    about = (f"Python {sys.version.split()[0]}'s {', '.join(TRAIN_FILES)} ({len(data):,} bytes, SHA-256 "
             f"{digest}...), the first 90% for training ({len(train):,} bytes)")  # fmt: skip
    return tokens, about


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    from torchinit.diagnostics.trainability import load_data

    x, y, _, _ = load_data("digits")
    return x, y


# ---------------------------------------------------------------- one run


def run(task: str, param: str, width: int, depth: int, lr: float, seed: int, steps: int,
        alpha: float | None = None) -> float:  # fmt: skip
    """Train one model; the mean training loss of the last 10 steps (NaN if it diverged)."""
    torch.set_num_threads(1)
    build = (lambda w, d=depth: MLP(w, d)) if task == "digits" else (lambda w, d=depth: CharGPT(w, d))
    cfg = FULL_OR_QUICK["depth" if task == "text-depth" else task]
    base_width, base_depth = cfg["widths"][0], cfg.get("depths", (depth,))[0]
    with ti.deferred():
        model = build(width)
    if param == "sp":
        ti.materialize_(model, SP_TEXT if task != "digits" else None, seed=seed)
        groups: list[dict] = [{"params": list(model.parameters()), "lr": lr}]
    else:
        with torch.device("meta"):
            base, delta = build(base_width, base_depth), build(2 * base_width, base_depth)
        ti.materialize_(model, mup.policy(model, base, std=None if task == "digits" else 0.02, delta=delta),
                        seed=seed)  # fmt: skip
        mup.forward_changes(model, base, delta=delta, depth_alpha=alpha)
        groups = mup.param_groups(model, base, lr=lr, delta=delta, depth_alpha=alpha)
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=0.0)
    batches = _batches(task, seed)
    losses = []
    for _ in range(steps):
        x, y = next(batches)
        out = model(x)
        loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            return math.nan
    return statistics.fmean(losses[-10:])


def _batches(task: str, seed: int):
    g = torch.Generator().manual_seed(seed)
    if task == "digits":
        x, y = DATA["digits"]
        while True:
            idx = torch.randint(0, len(x), (128,), generator=g)
            yield x[idx], y[idx]
    tokens = DATA["text"]
    while True:
        start = torch.randint(0, len(tokens) - 33, (16,), generator=g)
        windows = torch.stack([tokens[s: s + 33] for s in start.tolist()])
        yield windows[:, :-1], windows[:, 1:]


DATA: dict[str, object] = {}
FULL_OR_QUICK: dict = FULL


def _init_worker(quick: bool) -> None:
    global FULL_OR_QUICK
    FULL_OR_QUICK = QUICK if quick else FULL
    DATA["digits"] = digits()
    DATA["text"] = corpus()[0]


def _job(key: tuple) -> tuple[tuple, float, float]:
    start = time.perf_counter()
    task, param, width, depth, lr, seed, steps, alpha = key
    return key, run(task, param, width, depth, lr, seed, steps, alpha), time.perf_counter() - start


# ---------------------------------------------------------------- the sweeps and the page


def jobs(settings: dict, lrs: tuple, seeds: tuple, steps: int) -> list[tuple]:
    found = []
    for task in ("digits", "text"):
        for param in ("sp", "mup"):
            for width in settings[task]["widths"]:
                depth = settings[task]["depth"]
                found += [(task, param, width, depth, lr, s, steps, None) for lr in lrs for s in seeds]
    for alpha in (None, 1.0):
        for depth in settings["depth"]["depths"]:
            found += [("text-depth", "mup", settings["depth"]["widths"][0], depth, lr, s, steps, alpha)
                      for lr in lrs for s in seeds]  # fmt: skip
    return found


def summarize(results: dict[tuple, float], lrs: tuple) -> dict:
    """Per (task, param or alpha) and width or depth: mean and std of the loss at each lr, the best lr, the loss
    there, and the loss at the lr that was best at the smallest size."""
    table: dict = {}
    for (task, param, width, depth, lr, _, _, alpha), loss in results.items():
        series = "CompleteP" if alpha else param if task != "text-depth" else "mup, no depth scaling"
        size = depth if task == "text-depth" else width
        table.setdefault(task, {}).setdefault(series, {}).setdefault(size, {}).setdefault(lr, []).append(loss)
    out: dict = {}
    for task, by_series in table.items():
        for series, by_size in by_series.items():
            rows = {}
            for size, by_lr in sorted(by_size.items()):
                stats = {lr: _mean_std(by_lr[lr]) for lr in lrs if lr in by_lr}
                best = min(stats, key=lambda lr: stats[lr][0] if math.isfinite(stats[lr][0]) else math.inf)
                rows[size] = {"stats": stats, "best_lr": best}
            first = rows[min(rows)]["best_lr"]
            for row in rows.values():
                row["at_first_best"] = row["stats"][first]
            out.setdefault(task, {})[series] = rows
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < len(values):
        return math.nan, math.nan  # a seed diverged
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0


def _fmt(pair: tuple[float, float]) -> str:
    mean, std = pair
    return "diverged" if not math.isfinite(mean) else f"{mean:.3f} ± {std:.3f}"


def markdown(summary: dict, about: str, lrs: tuple, seeds: tuple, steps: int, seconds: float, cores: int) -> str:
    lines = [f"{len(lrs)} AdamW learning rates (2^-14 to 2^-2, a factor of 4 apart), {len(seeds)} seeds, {steps} "
             f"steps; training loss, mean ± std over the seeds. Text corpus: {about}. Wall time "
             f"{seconds / 60:.1f} min with {cores} worker processes.", ""]  # fmt: skip
    for task, by_series in summary.items():
        size_name = "depth" if task == "text-depth" else "width"
        for series, rows in by_series.items():
            first = rows[min(rows)]["best_lr"]
            lines += [f"**{task}, {series}**", "",
                      f"| {size_name} | best lr | loss at the best lr | loss at lr 2^{math.log2(first):.0f} "
                      f"(best at the smallest {size_name}) |", "|---|---|---|---|"]  # fmt: skip
            for size, row in rows.items():
                best = row["best_lr"]
                lines.append(f"| {size} | 2^{math.log2(best):.0f} | {_fmt(row['stats'][best])} | "
                             f"{_fmt(row['at_first_best'])} |")  # fmt: skip
            lines.append("")
    lines += ["![learning-rate sweeps](img/mup_sweeps.png)", ""]
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    from torchinit.diagnostics.plots import colors, figure

    panels = [(task, series) for task, by_series in summary.items() for series in by_series]
    fig = figure(figsize=(3.4 * 2, 2.8 * math.ceil(len(panels) / 2)), layout="constrained")
    axes = fig.subplots(math.ceil(len(panels) / 2), 2, squeeze=False)
    palette = colors()
    for ax, (task, series) in zip(axes.flat, panels):
        rows = summary[task][series]
        for i, (size, row) in enumerate(rows.items()):
            lrs = sorted(row["stats"])
            ax.plot([math.log2(lr) for lr in lrs], [row["stats"][lr][0] for lr in lrs], marker="o", ms=3,
                    color=palette[i % len(palette)], label=f"{'depth' if task == 'text-depth' else 'width'} {size}")
        ax.set_title(f"{task}: {series}", fontsize=9)
        ax.set_xlabel("log2 learning rate")
        ax.set_yscale("log")  # a diverging rate's loss would flatten the others
        ax.set_ylabel("training loss")
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.savefig(path)


def write_page(block: str) -> None:
    page = PAGE.read_text()
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if not pattern.search(page):
        raise SystemExit(f"{PAGE}: no evidence markers")
    PAGE.write_text(pattern.sub(lambda _: f"{START}\n{block}\n{END}", page))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny version, for the tests")
    parser.add_argument("--out", type=Path, help="with --quick: write the JSON and the figure here")
    parser.add_argument("--page-only", action="store_true", help="rewrite the page and the figure from the results")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: the CPUs)")
    args = parser.parse_args()
    if args.page_only:
        data = json.loads(RESULTS.read_text())
        _publish(data, DOCS, DOCS / "img" / "mup_sweeps.png", page=True)
        return
    settings = QUICK if args.quick else FULL
    lrs, seeds, steps = (QUICK["lrs"], QUICK["seeds"], QUICK["steps"]) if args.quick else (LRS, SEEDS, STEPS)
    results, seconds = _sweep(jobs(settings, lrs, seeds, steps), args.quick, args.workers)
    data = {"settings": {"lrs": lrs, "seeds": seeds, "steps": steps,
                         **{k: v for k, v in settings.items() if isinstance(v, dict)}},
            "corpus": corpus()[1], "seconds": round(seconds, 1), "workers": args.workers,
            "runs": [{"key": list(k), "loss": None if not math.isfinite(v) else v} for k, v in results.items()]}
    out = args.out if args.quick else DOCS
    if out is not None:
        (out / "mup_results.json").write_text(json.dumps(data, indent=1) + "\n")
    _publish(data, out, (out / "mup_sweeps.png" if args.quick else out / "img" / "mup_sweeps.png")
             if out is not None else None, page=not args.quick)


def _sweep(todo: list[tuple], quick: bool, workers: int) -> tuple[dict[tuple, float], float]:
    results: dict[tuple, float] = {}
    start = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(quick,)) as pool:
        for done, future in enumerate(as_completed([pool.submit(_job, key) for key in todo]), 1):
            key, loss, took = future.result()
            results[key] = loss
            print(f"\r{done}/{len(todo)} {key[0]} {key[1]} size {key[2] if key[0] != 'text-depth' else key[3]} "
                  f"lr 2^{math.log2(key[4]):.0f}: {loss:.3f} ({took:.1f} s)   ", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return results, time.perf_counter() - start


def _publish(data: dict, out: Path | None, figure_path: Path | None, *, page: bool) -> None:
    """Print the tables; draw the figure; with ``page``, write them into docs/mup.md."""
    settings = data["settings"]
    lrs = tuple(settings["lrs"])
    results = {tuple(r["key"]): (math.nan if r["loss"] is None else r["loss"]) for r in data["runs"]}
    summary = summarize(results, lrs)
    block = markdown(summary, data["corpus"], lrs, tuple(settings["seeds"]), settings["steps"], data["seconds"],
                     data["workers"])  # fmt: skip
    print(block)
    if figure_path is not None:
        plot(summary, figure_path)
    if page:
        write_page(block)


if __name__ == "__main__":
    main()
