"""The ``torchinit`` command line.

Subcommands:

``compare``
    Initialize one deep residual MLP (no normalization, see
    :mod:`torchinit._demo_model`) with several schemes and report, for each,
    the std of the model's output and the norm of the gradient at the input
    after one forward and one backward pass on the same random batch, with
    flags for signals that exploded or vanished.

Run ``torchinit compare --help`` (or ``python -m torchinit compare --help``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import NamedTuple, TextIO

import torch
from torch import Tensor, nn

import torchinit
from torchinit._demo_model import DEFAULT_DEPTH, DEFAULT_WIDTHS, ResidualMLP, build_default_model

__all__ = [
    "EXPLODE_STD",
    "VANISH_STD",
    "VANISH_GRAD",
    "SCHEMES",
    "Scheme",
    "CompareResult",
    "init_model",
    "compare",
    "format_table",
    "main",
]

#: A scheme "exploded" when the output or the input gradient is not finite, or the output std exceeds this.
EXPLODE_STD = 1e3
#: A scheme "vanished" when the output std is below this ...
VANISH_STD = 1e-3
#: ... or the norm of the gradient at the input is below this.
VANISH_GRAD = 1e-6

DEFAULT_SEED = 0
DEFAULT_BATCH = 256


class Scheme(NamedTuple):
    """An initialization scheme: a one-line description and its weight initializers.

    ``init_weight`` fills every Linear weight (and the biases are zeroed); None
    keeps torch's. ``init_shortcut``, when given, fills the projection shortcuts
    instead (the layers that change the width).
    """

    description: str
    init_weight: Callable[[Tensor, torch.Generator], object] | None
    init_shortcut: Callable[[Tensor, torch.Generator], object] | None = None


_RELU_GAIN = torchinit.calculate_gain("relu")

#: The schemes ``compare`` knows, in report order.
SCHEMES: dict[str, Scheme] = {
    "default": Scheme("torch's reset_parameters: W, b ~ U(+-1/sqrt(fan_in))", None),
    "kaiming": Scheme(
        "kaiming_normal_(nonlinearity='relu')",
        lambda w, g: torchinit.kaiming_normal_(w, nonlinearity="relu", generator=g),
    ),
    "xavier": Scheme("xavier_uniform_()", lambda w, g: torchinit.xavier_uniform_(w, generator=g)),
    "lecun": Scheme("lecun_normal_()", lambda w, g: torchinit.lecun_normal_(w, generator=g)),
    "orthogonal": Scheme(
        "orthogonal_(gain=calculate_gain('relu'))",
        lambda w, g: torchinit.orthogonal_(w, gain=_RELU_GAIN, generator=g),
    ),
    "glass": Scheme(
        "shortcuts glass_(); the rest as 'default'", None, lambda w, g: torchinit.glass_(w, generator=g)
    ),
    "glass-isometric": Scheme(
        "shortcuts glass_(isometric=True, zero_mean=False); the rest as 'default'",
        None,
        lambda w, g: torchinit.glass_(w, zero_mean=False, isometric=True),
    ),
}


@dataclass(frozen=True)
class CompareResult:
    """One row of ``torchinit compare``. Non-finite values are kept as float nan/inf here."""

    scheme: str
    init: str
    output_std: float
    input_grad_norm: float
    exploded: bool
    vanished: bool

    def to_json(self) -> dict[str, object]:
        """A JSON-safe dict: non-finite floats become ``None``."""
        d = asdict(self)
        for key in ("output_std", "input_grad_norm"):
            if not math.isfinite(d[key]):
                d[key] = None
        return d


def init_model(model: nn.Module, scheme: str, generator: torch.Generator) -> nn.Module:
    """Apply ``scheme`` to the ``nn.Linear`` layers of ``model`` (in module order).

    ``'default'`` leaves the model as PyTorch constructed it (weights and biases).
    Schemes with ``init_weight`` draw every weight from ``generator`` and set the
    biases to 0; schemes with ``init_shortcut`` (glass) re-initialize only the
    projection shortcuts and keep torch's init elsewhere.

    Example:
        >>> model = build_default_model(depth=1, seed=0)
        >>> _ = init_model(model, "kaiming", torch.Generator().manual_seed(1))
        >>> int(model.head.bias.count_nonzero())
        0
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(map(repr, SCHEMES))}; got {scheme!r}")
    init_weight, init_shortcut = SCHEMES[scheme].init_weight, SCHEMES[scheme].init_shortcut
    for name, layer in model.named_modules():
        if not isinstance(layer, nn.Linear):
            continue
        if init_shortcut is not None and name.rsplit(".", 1)[-1] == "shortcut":
            init_shortcut(layer.weight, generator)
        elif init_weight is not None:
            init_weight(layer.weight, generator)
            if layer.bias is not None:
                torchinit.zeros_(layer.bias)
    return model


def _flags(output_std: float, grad_norm: float) -> tuple[bool, bool]:
    if not (math.isfinite(output_std) and math.isfinite(grad_norm)):
        return True, False
    exploded = output_std > EXPLODE_STD
    vanished = output_std < VANISH_STD or grad_norm < VANISH_GRAD
    return exploded, vanished


def compare(
    schemes: Sequence[str] | None = None,
    *,
    seed: int = DEFAULT_SEED,
    batch: int = DEFAULT_BATCH,
    depth: int = DEFAULT_DEPTH,
) -> list[CompareResult]:
    """Initialize the demo model with each scheme; one forward and backward pass each.

    For every scheme a fresh :func:`~torchinit._demo_model.build_default_model`
    is built (torch's init under ``torch.manual_seed(seed + 1)``), then every
    Linear weight is re-initialized from a ``torch.Generator`` seeded with
    ``seed + 1`` (biases zeroed), except for ``'default'``. All schemes see the
    same input ``x ~ N(0, 1)`` of shape ``(batch, 64)``, drawn from a generator
    seeded with ``seed``, with ``requires_grad=True``. The loss is
    ``output.pow(2).mean()`` (mean over batch and output features); reported
    are ``output.std()`` over all entries and ``x.grad.norm()`` (Frobenius norm
    over the whole batch).

    Example:
        >>> rows = compare(["default", "kaiming"], seed=0, batch=32, depth=1)
        >>> [r.scheme for r in rows]
        ['default', 'kaiming']
    """
    names = list(SCHEMES) if schemes is None else list(schemes)
    for name in names:
        if name not in SCHEMES:
            raise ValueError(f"unknown scheme {name!r}; choose from {', '.join(SCHEMES)}")
    if batch < 1 or depth < 1:
        raise ValueError(f"batch and depth must be >= 1; got batch={batch}, depth={depth}")
    init_seed = seed + 1
    x0 = torch.randn(batch, DEFAULT_WIDTHS[0], generator=torch.Generator().manual_seed(seed))
    results = []
    for name in names:
        model = build_default_model(depth, seed=init_seed)
        init_model(model, name, torch.Generator().manual_seed(init_seed))
        x = x0.clone().requires_grad_(True)
        out = model(x)
        loss = out.pow(2).mean()
        loss.backward()
        assert x.grad is not None
        output_std = float(out.detach().std())
        grad_norm = float(x.grad.norm())
        exploded, vanished = _flags(output_std, grad_norm)
        results.append(CompareResult(name, SCHEMES[name].description, output_std, grad_norm, exploded, vanished))
    return results


def _fmt(v: float) -> str:
    return f"{v:.3e}" if math.isfinite(v) else str(v)


def format_table(results: Sequence[CompareResult], model: ResidualMLP, *, seed: int, batch: int) -> str:
    """The plain-text report of :func:`compare`: header, aligned rows, footer.

    Example:
        >>> rows = compare(["lecun"], batch=8, depth=1)
        >>> print(format_table(rows, build_default_model(1), seed=0, batch=8))  # doctest: +ELLIPSIS
        model: residual MLP (no norm) ...
    """
    header = ("scheme", "weight init", "output std", "input grad norm", "exploded", "vanished")
    rows = [
        (r.scheme, r.init, _fmt(r.output_std), _fmt(r.input_grad_norm), "yes" if r.exploded else "no",
         "yes" if r.vanished else "no")
        for r in results
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    numeric = {2, 3}

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(parts).rstrip()

    out = [
        f"model: {model.describe()}",
        f"input: x ~ N(0, 1), batch {batch} x {model.in_features}, seed {seed} (same x for every scheme); "
        f"weights seed {seed + 1} (a torch.Generator; torch.manual_seed for 'default')",
        f"pass:  one forward, loss = mean(output**2) over {batch} x {model.out_features} entries, one backward",
        "",
        line(header),
        line(["-" * w for w in widths]),
        *(line(r) for r in rows),
        "",
        "output std: std of all output entries; input grad norm: ||d loss / d x||, Frobenius over the batch. "
        "Biases are 0 except for 'default' and the glass schemes, which keep torch's init outside the shortcuts.",
        f"exploded: non-finite output or gradient, or output std > {EXPLODE_STD:.0e}; "
        f"vanished: output std < {VANISH_STD:.0e} or input grad norm < {VANISH_GRAD:.0e}",
    ]
    return "\n".join(out)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text!r}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer; got {text!r}") from None
    if not 0 <= value < 2**63 - 1:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer below 2**63 - 1; got {text!r}")
    return value


def _scheme_list(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"needs at least one scheme; choose from {','.join(SCHEMES)}")
    unknown = [n for n in names if n not in SCHEMES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown scheme{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"choose from {','.join(SCHEMES)}"
        )
    return list(dict.fromkeys(names))  # drop repeats, keep order


def build_parser() -> argparse.ArgumentParser:
    """The ``torchinit`` argument parser (subcommand ``compare``).

    Example:
        >>> build_parser().parse_args(["compare", "--seed", "3"]).seed
        3
    """
    parser = argparse.ArgumentParser(
        prog="torchinit",
        description="Weight initialization for PyTorch: command-line tools.",
    )
    parser.add_argument("--version", action="version", version=f"torchinit {torchinit.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    cmp = sub.add_parser(
        "compare",
        help="compare init schemes on a deep residual MLP (output std, input gradient norm)",
        description=(
            "Initialize a deep residual MLP without normalization (widths 64-128-256-128-64-32, "
            "projection shortcuts where the width changes, a Linear head to 10) with each scheme, "
            "run one forward and one backward pass on the same N(0, 1) batch with "
            "loss = mean(output**2), and report the output std, the gradient norm at the input "
            "and whether the signal exploded or vanished."
        ),
    )
    cmp.add_argument("--seed", type=_seed, default=DEFAULT_SEED,
                     help=f"seed of the input batch; weights use seed+1 (default: {DEFAULT_SEED})")
    cmp.add_argument("--batch", type=_positive_int, default=DEFAULT_BATCH,
                     help=f"batch size (default: {DEFAULT_BATCH})")
    cmp.add_argument("--depth", type=_positive_int, default=DEFAULT_DEPTH,
                     help=f"residual blocks per stage, 6 stages (default: {DEFAULT_DEPTH})")
    cmp.add_argument("--schemes", type=_scheme_list, default=list(SCHEMES), metavar="LIST",
                     help=f"comma-separated schemes (default: all: {','.join(SCHEMES)})")
    cmp.add_argument("--format", choices=("table", "json"), default="table",
                     help="table: aligned text; json: a list of dicts, one per scheme (default: table)")
    return parser  # fmt: skip


def _run_compare(args: argparse.Namespace, stdout: TextIO) -> int:
    results = compare(args.schemes, seed=args.seed, batch=args.batch, depth=args.depth)
    if args.format == "json":
        json.dump([r.to_json() for r in results], stdout, indent=2, allow_nan=False)
        stdout.write("\n")
    else:
        model = build_default_model(args.depth)  # for its description only
        stdout.write(format_table(results, model, seed=args.seed, batch=args.batch) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``torchinit`` command; returns the exit status.

    ``argv`` defaults to ``sys.argv[1:]``. Usage errors print argparse's message
    to stderr and return 2, as does a call without a subcommand (after printing
    the help); ``--help`` and ``--version`` return 0.

    Example:
        >>> main(["compare", "--schemes", "kaiming,lecun", "--format", "json"])  # doctest: +SKIP
        0
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return _run_compare(args, sys.stdout)  # the only subcommand so far: "compare"
