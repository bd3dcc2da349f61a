"""Make the figures of docs/: `python docs/plots.py` (needs matplotlib: pip install -e '.[docs]').

* docs/img/trunc_normal_bf16.png: torchinit.trunc_normal_ in bfloat16 (std=0.02, bounds +-2 std)
  next to the inverse-CDF-then-clamp recipe, which piles values onto the bounds.
* docs/img/gains.png: the variance-preserving gain of each activation, with torch's value where torch has one.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

import torchinit as ti
from torchinit.schemes.gains import ACTIVATIONS

OUT = Path(__file__).parent / "img"


def trunc_normal_figure() -> None:
    std, n = 0.02, 1 << 22
    a, b = -2 * std, 2 * std
    g = torch.Generator().manual_seed(0)
    ours = ti.trunc_normal_(torch.empty(n, dtype=torch.bfloat16), 0.0, std, a, b, generator=g).float()
    # the classic recipe: inverse CDF in float32, clamp to [a, b], then round to bf16
    mass = math.erf(2 / math.sqrt(2))
    u = torch.empty(n).uniform_(-mass, mass, generator=g)
    naive = (torch.erfinv(u) * math.sqrt(2) * std).clamp_(a, b).bfloat16().float()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    panels = ((axes[0], ours, "torchinit.trunc_normal_"), (axes[1], naive, "inverse CDF + clamp, then bf16"))
    for ax, x, title in panels:
        values, counts = torch.unique(x, return_counts=True)
        ax.vlines(values.numpy(), 0, counts.numpy(), lw=0.6)
        outside = int(((x < a) | (x > b)).sum())
        ax.set_title(f"{title}\n{outside} values outside [a, b]", fontsize=10)
        ax.axvline(a, color="r", ls=":", lw=1)
        ax.axvline(b, color="r", ls=":", lw=1)
        ax.set_xlabel("value (bfloat16)")
    axes[0].set_ylabel("count per bf16 value")
    fig.suptitle(f"N(0, {std}^2) truncated to +-2 std, {n:,} draws, bfloat16", fontsize=11)
    fig.tight_layout()
    fig.savefig(OUT / "trunc_normal_bf16.png", dpi=110)


def gains_figure() -> None:
    names = ["relu", "leaky_relu", "tanh", "sigmoid", "selu"]
    names += [n for n in ACTIVATIONS if n not in ("identity", "swish")]
    torch_fn = {"relu": torch.relu, "leaky_relu": lambda x: torch.nn.functional.leaky_relu(x, 0.01),
                "tanh": torch.tanh, "sigmoid": torch.sigmoid, "selu": torch.selu}
    computed = [ti.variance_gain(torch_fn[n]) if n in torch_fn else ti.calculate_gain(n) for n in names]
    torch_values = [ti.calculate_gain(n) if n in torch_fn else math.nan for n in names]
    fig, ax = plt.subplots(figsize=(10, 3.8))
    x = range(len(names))
    ax.bar(x, computed, label=r"$1/\sqrt{E[f(z)^2]}$ (torchinit)")
    ax.scatter(x, torch_values, color="k", marker="_", s=300, zorder=3, label="torch.nn.init.calculate_gain")
    ax.set_xticks(list(x), names, rotation=45, ha="right")
    ax.set_ylabel("gain")
    ax.legend()
    ax.set_title("Variance-preserving gains, z ~ N(0, 1)")
    fig.tight_layout()
    fig.savefig(OUT / "gains.png", dpi=110)


if __name__ == "__main__":
    OUT.mkdir(exist_ok=True)
    trunc_normal_figure()
    gains_figure()
    print("wrote", *sorted(p.name for p in OUT.glob("*.png")))
