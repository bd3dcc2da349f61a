"""Regenerate the measured tables of docs/glass.md and the figure docs/img/glass_spectra.png.

    pip install -e '.[docs]'        # matplotlib, for the figure
    python docs/glass_evidence.py   # rewrites the part of docs/glass.md between the evidence markers

Everything is computed in float64 from fixed seeds. Compared, on the same shapes:
glass (published construction, random signs), glass isometric, orthogonal_, kaiming_normal_
(torch's defaults: gain sqrt(2), fan_in), torch's default Linear/Conv init (kaiming_uniform_ with
a=sqrt(5)), and eye_ (dirac_ for convolutions).
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import torchinit as ti

DOCS = Path(__file__).resolve().parent
PAGE = DOCS / "glass.md"
FIGURE = DOCS / "img" / "glass_spectra.png"
START, END = "<!-- evidence:start (docs/glass_evidence.py) -->", "<!-- evidence:end -->"
SEED = 0

Init = Callable[[torch.Tensor, torch.Generator], object]

#: The initializers compared, applied to a float64 (out, in) matrix.
MATRIX_INITS: dict[str, Init] = {
    "glass": lambda w, g: ti.glass_(w, generator=g),
    "glass isometric": lambda w, g: ti.glass_(w, zero_mean=False, isometric=True),
    "orthogonal_": lambda w, g: ti.orthogonal_(w, generator=g),
    "kaiming_normal_": lambda w, g: ti.kaiming_normal_(w, generator=g),
    "torch default": lambda w, g: ti.kaiming_uniform_(w, a=math.sqrt(5), generator=g),
    "eye_": lambda w, g: ti.eye_(w),
}

#: The same, applied to a conv layer (float64 weight).
CONV_INITS: dict[str, Callable[[nn.Module, torch.Generator], object]] = {
    "glass": lambda m, g: ti.glass_(m, generator=g),
    "glass isometric": lambda m, g: ti.glass_(m, zero_mean=False, isometric=True),
    "orthogonal_": lambda m, g: ti.orthogonal_(m.weight, generator=g),
    "kaiming_normal_": lambda m, g: ti.kaiming_normal_(m.weight, generator=g),
    "torch default": lambda m, g: ti.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=g),
    "dirac_ (eye_)": lambda m, g: ti.dirac_(m.weight),
}

SHAPES = [(64, 256), (256, 64), (256, 576), (2048, 512), (511, 512), (1000, 1001)]
CHAIN = [64, 128, 256, 512, 256, 64]  # widths of the residual chain (same-width blocks add identities)
CONVS = [(64, 128), (128, 64)]  # Conv2d(in, out, 3, padding=1)
CONV_SIZE = 16  # circular inputs of 16 x 16 pixels


def matrix(name: str, O: int, I: int) -> torch.Tensor:
    w = torch.empty(O, I, dtype=torch.float64)
    MATRIX_INITS[name](w, torch.Generator().manual_seed(SEED))
    return w


def singular_values(w: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(w)


def condition(sv: torch.Tensor) -> float:
    return float(sv.max() / sv.min()) if float(sv.min()) > 0 else math.inf


def norm_ratios(w: torch.Tensor, samples: int = 4096) -> tuple[float, float]:
    """Mean ||W x|| / ||x|| over x ~ N(0, I) (forward) and mean ||W^T y|| / ||y|| over y ~ N(0, I) (backward)."""
    g = torch.Generator().manual_seed(SEED + 1)
    x = torch.randn(w.shape[1], samples, generator=g, dtype=torch.float64)
    y = torch.randn(w.shape[0], samples, generator=g, dtype=torch.float64)
    forward = (w @ x).norm(dim=0) / x.norm(dim=0)
    backward = (w.T @ y).norm(dim=0) / y.norm(dim=0)
    return float(forward.mean()), float(backward.mean())


class ZeroBranchChain(nn.Module):
    """Residual blocks ``y = shortcut(x) + fc2(relu(fc1(x)))`` through the widths of CHAIN, fc2 zero-initialized.

    Where the width changes the shortcut is a Linear projection initialized by the scheme; elsewhere it is the
    identity (omitted here: it contributes an identity to the Jacobian). With the branches at zero, the
    end-to-end Jacobian is the product of the projections.
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        self.shortcuts, self.fc1, self.fc2 = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for i, (a, b) in enumerate(itertools.pairwise(CHAIN)):
            shortcut = nn.Linear(a, b, bias=False, dtype=torch.float64)
            MATRIX_INITS[name](shortcut.weight.data, torch.Generator().manual_seed(SEED + i))
            self.shortcuts.append(shortcut)
            self.fc1.append(nn.Linear(a, b, dtype=torch.float64))
            self.fc2.append(_zero_linear(b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for shortcut, fc1, fc2 in zip(self.shortcuts, self.fc1, self.fc2):
            x = shortcut(x) + fc2(torch.relu(fc1(x)))
        return x


def _zero_linear(width: int) -> nn.Linear:
    layer = nn.Linear(width, width, dtype=torch.float64)
    ti.zeros_(layer.weight)
    ti.zeros_(layer.bias)
    return layer


def chain_jacobian_spectrum(name: str) -> torch.Tensor:
    """Singular values of the chain's input-output Jacobian at one input (torchinit.jacobian_spectrum)."""
    x = torch.randn(1, CHAIN[0], dtype=torch.float64, generator=torch.Generator().manual_seed(SEED))
    return ti.jacobian_spectrum(ZeroBranchChain(name), x)


def conv_operator_singular_values(conv: nn.Module) -> torch.Tensor:
    """Singular values of a stride-1 conv as a circular operator on CONV_SIZE^2 images (one block per frequency)."""
    w = conv.weight.detach()
    spectrum = torch.fft.fft2(w, s=(CONV_SIZE, CONV_SIZE))  # (out, in, f, f)
    blocks = spectrum.permute(2, 3, 0, 1).reshape(-1, w.shape[0], w.shape[1])
    return torch.linalg.svdvals(blocks).reshape(-1)


def fmt(x: float) -> str:
    if math.isinf(x):
        return "∞"
    if x == 0:
        return "0"
    return f"{x:.3g}" if 1e-3 <= abs(x) < 1e4 else f"{x:.2e}"


def table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def shape_table() -> str:
    rows = []
    for O, I in SHAPES:
        for name in MATRIX_INITS:
            w = matrix(name, O, I)
            sv = singular_values(w)
            fwd, bwd = norm_ratios(w)
            rows.append([f"{O}×{I}", name, fmt(float(sv.min())), fmt(float(sv.max())), fmt(condition(sv)),
                         fmt(fwd), fmt(bwd)])  # fmt: skip
    return table(["shape (out×in)", "init", "σ_min", "σ_max", "σ_max/σ_min", "forward ‖Wx‖/‖x‖",
                  "backward ‖Wᵀy‖/‖y‖"], rows)  # fmt: skip


def chain_table() -> tuple[str, dict[str, torch.Tensor]]:
    spectra, rows = {}, []
    for name in MATRIX_INITS:
        sv = chain_jacobian_spectrum(name)
        spectra[name] = sv
        rows.append([name, fmt(float(sv.min())), fmt(float(sv.max())), fmt(condition(sv))])
    return table(["init of the projections", "σ_min", "σ_max", "condition number"], rows), spectra


def conv_table() -> str:
    rows = []
    for cin, cout in CONVS:
        for name, init in CONV_INITS.items():
            conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False, dtype=torch.float64)
            init(conv, torch.Generator().manual_seed(SEED))
            sv = conv_operator_singular_values(conv)
            rows.append([f"Conv2d({cin}, {cout}, 3)", name, fmt(float(sv.min())), fmt(float(sv.max()))])
    return table(["layer", "init", "σ_min of the operator", "σ_max of the operator"], rows)


def figure(spectra: dict[str, torch.Tensor]) -> None:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is missing: the figure was not made (pip install -e '.[docs]')", file=sys.stderr)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # exact isometries overlap at 1: thick, dashed and dotted lines keep each of them visible
    style = {"glass isometric": dict(lw=4, alpha=0.6), "orthogonal_": dict(ls="--"), "eye_": dict(ls=":", lw=2)}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, sv in spectra.items():
        axes[0].plot(sv.clamp_min(1e-18).numpy(), label=name, **{"lw": 1.5, **style.get(name, {})})
    axes[0].set_yscale("log")
    axes[0].set_xlabel("index (sorted)")
    axes[0].set_ylabel("singular value")
    axes[0].set_title(f"End-to-end Jacobian, zero-branch chain {'→'.join(map(str, CHAIN))}", fontsize=10)
    axes[0].legend(fontsize=8)
    O, I = 511, 512
    for name in MATRIX_INITS:
        sv = singular_values(matrix(name, O, I)).clamp_min(1e-18).numpy()
        axes[1].plot(sv, label=name, **{"lw": 1.5, **style.get(name, {})})
    axes[1].set_yscale("log")
    axes[1].set_xlabel("index (sorted)")
    axes[1].set_title(f"Singular values of one {O}×{I} weight", fontsize=10)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    FIGURE.parent.mkdir(exist_ok=True)
    fig.savefig(FIGURE, dpi=110)
    print("wrote", FIGURE.relative_to(DOCS.parent), file=sys.stderr)


def render() -> tuple[str, dict[str, torch.Tensor]]:
    chain, spectra = chain_table()
    body = "\n\n".join([
        f"### One weight: singular values and norm ratios (seed {SEED})",
        shape_table(),
        f"### Residual chain {' → '.join(map(str, CHAIN))}, branches at zero: the end-to-end Jacobian",
        chain,
        f"### Convolutions: the operator on {CONV_SIZE}×{CONV_SIZE} circular images",
        conv_table(),
    ])  # fmt: skip
    return f"{START}\n\n{body}\n\n{END}", spectra


def main() -> None:
    evidence, spectra = render()
    page = PAGE.read_text()
    start, end = page.index(START), page.index(END) + len(END)
    PAGE.write_text(page[:start] + evidence + page[end:])
    print("wrote", PAGE.relative_to(DOCS.parent), file=sys.stderr)
    figure(spectra)


if __name__ == "__main__":
    main()
