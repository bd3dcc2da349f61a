"""The experiments of docs/trainability.md: ``python docs/trainability.py`` (``make trainability``, ~15 min on 2 cores).

Each experiment trains fresh models under several init schemes on scikit-learn's digits
with :func:`torchinit.trainability.train` (3 seeds, 300 Adam steps, lr 1e-3, batch 128), the
same engine as ``torchinit train``. The script writes every number to
``docs/trainability_results.json``, one figure per run to ``docs/img/trainability_*.png``,
and the tables into docs/trainability.md between the ``<!-- run: NAME -->`` and
``<!-- end run -->`` markers (the prose around them is written by hand from these numbers).
``--only NAME`` reruns one run.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from torchinit._text import text_table
from torchinit.trainability import plot_training, summarize, train

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
        page = pattern.sub(lambda m: m.group(1) + block(name, result) + m.group(2), page)
    PAGE.write_text(page)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=list(RUNS), action="append", help="rerun these runs only")
    args = parser.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for name in args.only or list(RUNS):
        settings = dict(RUNS[name])
        start = time.perf_counter()
        result = train(settings.pop("model"), settings.pop("depth"), settings.pop("inits"), seeds=SEEDS, steps=STEPS,
                       **settings)
        result["seconds"] = round(time.perf_counter() - start, 1)
        results[name] = result
        plot_training(result, str(DOCS / "img" / f"trainability_{name}.png"))
        print(f"{name}: {result['seconds']} s")
        print(text_table(["scheme", "test accuracy", "final train loss", "steps until halved"], summarize(result)))
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    write_page({name: results[name] for name in RUNS if name in results})


if __name__ == "__main__":
    main()
