"""The experiments of docs/trainability.md: ``python docs/trainability.py`` (``make trainability``, ~8 min on 2 cores).

Each experiment trains fresh models under several init schemes on scikit-learn's digits
with :func:`torchinit.diagnostics.trainability.train` (3 seeds, 300 Adam steps, lr 1e-3, batch 128), the
same engine as ``torchinit train``. The script writes every number to
``docs/trainability_results.json``, one figure per run to ``docs/img/trainability_*.png``,
and the tables into docs/trainability.md between the ``<!-- run: NAME -->`` and
``<!-- end run -->`` markers (the prose around them is written by hand from these numbers).
``--only NAME`` reruns one run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from torchinit._util.text import text_table
from torchinit.diagnostics.trainability import plot_training, summarize, train

DOCS = Path(__file__).resolve().parent
PAGE = DOCS / "trainability.md"
RESULTS = DOCS / "trainability_results.json"
SEEDS, STEPS = 3, 300

TANH = ["default", "xavier_normal", "kaiming_normal", "lecun_normal", "orthogonal:gain=1", "orthogonal:gain=1.667",
        "lsuv"]
RESIDUAL = ["default", "kaiming_normal", "orthogonal", "glass", "glass-isometric", "fixup", "hadamard", "lsuv"]

#: name -> train() arguments
RUNS = {
    "mlp-tanh-16": {"model": "mlp-tanh", "depth": 16, "inits": TANH},
    "mlp-tanh-64": {"model": "mlp-tanh", "depth": 64, "inits": TANH},
    "mlp-tanh-256": {"model": "mlp-tanh", "depth": 256, "inits": TANH},
    "resmlp-4": {"model": "resmlp", "depth": 4, "inits": RESIDUAL},
    "cnn-32": {"model": "cnn", "depth": 32, "width": 32, "inits": ["default", "delta_orthogonal"]},
}


def table(result: dict) -> str:
    """The markdown table of one run (what summarize() gives, as torchinit train prints it)."""
    header = ["scheme", "test accuracy", "final train loss", "steps until the loss halved"]
    rows = summarize(result)
    lines = ["| " + " | ".join(header) + " |", "|---|---|---|---|"]
    lines += ["| " + " | ".join(f"`{r[0]}`" if i == 0 else r[i] for i in range(len(r))) + " |" for r in rows]
    return "\n".join(lines)


def block(name: str, result: dict) -> str:
    args = RUNS[name]
    width = args.get("width", 64)
    return (f"{result['model']}, depth {result['depth']}, width {width}: {result['seeds']} seeds, {result['steps']} "
            f"Adam steps (lr {result['lr']:g}, batch {result['batch']}), test accuracy on 450 held-out digits.\n\n"
            f"{table(result)}\n\n![{name}](img/trainability_{name}.png)\n")


def write_page(results: dict) -> None:
    page = PAGE.read_text()
    for name, result in results.items():
        pattern = re.compile(rf"(<!-- run: {re.escape(name)} -->\n).*?(<!-- end run -->)", re.S)
        if not pattern.search(page):
            raise SystemExit(f"{PAGE}: no markers for run {name!r}")
        # called within this iteration only: the defaults just bind this iteration's name and result
        page = pattern.sub(lambda m, name=name, result=result: m.group(1) + block(name, result) + m.group(2), page)
    PAGE.write_text(page)


def _job(name: str, init: str) -> tuple[str, str, dict, float]:
    """One scheme of one run, in a worker process with one intra-op thread (these small nets are overhead-bound:
    one process per core is faster than two threads per op)."""
    import torch

    torch.set_num_threads(1)
    settings = dict(RUNS[name])
    start = time.perf_counter()
    result = train(settings.pop("model"), settings.pop("depth"), [init], seeds=SEEDS, steps=STEPS, progress=False,
                   **{k: v for k, v in settings.items() if k != "inits"})
    return name, init, result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=list(RUNS), action="append", help="rerun these runs only")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: the CPUs)")
    args = parser.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    names = args.only or list(RUNS)
    jobs = [(name, init) for name in names for init in RUNS[name]["inits"]]
    done: dict[str, dict[str, dict]] = {name: {} for name in names}
    seconds: dict[str, float] = dict.fromkeys(names, 0.0)
    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for future in as_completed([pool.submit(_job, name, init) for name, init in jobs]):
            name, init, result, took = future.result()
            done[name][init] = result
            seconds[name] += took
            print(f"{name} {init}: {took:.0f} s", flush=True)
    for name in names:
        first = done[name][RUNS[name]["inits"][0]]
        merged = {**first, "schemes": {init: done[name][init]["schemes"][init] for init in RUNS[name]["inits"]},
                  "process_seconds": round(seconds[name], 1)}
        results[name] = merged
        plot_training(merged, str(DOCS / "img" / f"trainability_{name}.png"))
        print(f"{name}:")
        print(text_table(["scheme", "test accuracy", "final train loss", "steps until halved"], summarize(merged)))
    print(f"wall time: {time.perf_counter() - start:.0f} s with {args.workers} worker(s)")
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    write_page({name: results[name] for name in RUNS if name in results})


if __name__ == "__main__":
    main()
