"""The ``torchinit`` command line.

``torchinit compare``
    Initialize one model with several schemes and show, for each, how the signal flows:
    a per-layer table (activation std and gradient std by depth), a summary row (output
    std, gradient norm at the input, exploded/vanished flags) and one comparison plot.
    The model is an embedded one (``--model mlp``: a deep residual MLP whose widths
    change, ``--model cnn``: a small residual CNN) or your own (``--model pkg.mod:make``).

``torchinit probe``
    The full per-layer table of one scheme.

Bad input (an unknown model, callable or scheme, a malformed shape) ends with exit
status 2 and a one-line message naming it. Run ``torchinit compare --help``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

import torch
from torch import nn

import torchinit
from torchinit._demo_model import ResidualMLP, SmallCNN
from torchinit._text import text_table
from torchinit.compare import EXPLODE_STD, SCHEMES, VANISH_GRAD, VANISH_STD, SchemeResult, compare
from torchinit.probe import plot_reports

__all__ = ["main", "build_parser", "MODELS", "load_model", "parse_shape", "UsageError"]

DEFAULT_SEED = 0
DEFAULT_BATCH = 256
#: Rows of each scheme's per-layer table in ``compare`` (evenly spaced; ``probe`` shows all).
TABLE_ROWS = 12

#: The embedded models: a builder and the input shape (without the batch).
MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], str]] = {
    "mlp": (ResidualMLP, (64,), "a deep residual MLP without normalization, widths 64-128-256-128-64-32, "
                                "projection shortcuts where the width changes"),
    "cnn": (SmallCNN, (3, 32, 32), "a small residual CNN without normalization, 16-32-64 channels, "
                                   "1x1 projection shortcuts"),
}  # fmt: skip


class UsageError(Exception):
    """Bad command-line input: reported as one line, exit status 2."""


def parse_shape(text: str) -> tuple[int, ...]:
    """``"64"``, ``"3,32,32"`` or ``"3x32x32"`` as a tuple of positive ints (without the batch).

    Example:
        >>> parse_shape("3x32x32")
        (3, 32, 32)
    """
    parts = [p.strip() for p in text.replace("x", ",").split(",")]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise UsageError(f"--input-shape {text!r} is malformed; write sizes like 64 or 3,32,32") from None
    if not shape or min(shape) < 1:
        raise UsageError(f"--input-shape {text!r} is malformed; every size must be a positive int")
    return shape


def load_model(spec: str) -> Callable[[], nn.Module]:
    """The builder named by ``spec``: an embedded model name, or ``module:callable`` (imported from the cwd too)."""
    if spec in MODELS:
        return MODELS[spec][0]
    if ":" not in spec:
        raise UsageError(f"--model {spec!r} is unknown; use {', '.join(MODELS)} or module:callable")
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001  (any import failure is the user's module)
        raise UsageError(f"--model {spec!r}: cannot import {module_name!r} ({type(err).__name__}: {err})") from None
    builder = getattr(module, attr, None) if attr else None
    if not callable(builder):
        raise UsageError(f"--model {spec!r}: {module_name!r} has no callable {attr!r}")
    return builder


def _checked_builder(spec: str, builder: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        try:
            model = builder()
        except Exception as err:  # noqa: BLE001
            raise UsageError(f"--model {spec!r}: building the model failed ({type(err).__name__}: {err})") from None
        if not isinstance(model, nn.Module):
            raise UsageError(f"--model {spec!r} returned {type(model).__name__}, not an nn.Module")
        return model

    return build


def _scheme_list(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [n for n in names if n not in SCHEMES]
    if not names or unknown:
        what = f"unknown scheme {', '.join(map(repr, unknown))}" if unknown else "no scheme given"
        raise argparse.ArgumentTypeError(f"{what}; choose from {','.join(SCHEMES)}")
    return list(dict.fromkeys(names))


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


def build_parser() -> argparse.ArgumentParser:
    """The ``torchinit`` argument parser (subcommands ``compare`` and ``probe``).

    Example:
        >>> build_parser().parse_args(["compare", "--seed", "3"]).seed
        3
    """
    parser = argparse.ArgumentParser(prog="torchinit", description="Weight initialization for PyTorch: see the signal.")
    parser.add_argument("--version", action="version", version=f"torchinit {torchinit.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    models = "; ".join(f"{k}: {v[2]}" for k, v in MODELS.items())
    for name, help_text in (("compare", "compare init schemes on one model: signal by depth, table and plot"),
                            ("probe", "the per-layer signal table of one scheme")):  # fmt: skip
        cmd = sub.add_parser(name, help=help_text, description=help_text + ". Embedded models: " + models + ".")
        cmd.add_argument("--model", default="mlp", metavar="MODEL",
                         help=f"{', '.join(MODELS)}, or module:callable returning an nn.Module (default: mlp)")
        cmd.add_argument("--input-shape", metavar="SHAPE",
                         help="input size without the batch, e.g. 64 or 3,32,32 (required for your own model)")
        cmd.add_argument("--batch", type=_positive_int, default=DEFAULT_BATCH,
                         help=f"batch size of the random N(0, 1) input (default: {DEFAULT_BATCH})")
        cmd.add_argument("--seed", type=_seed, default=DEFAULT_SEED,
                         help=f"seed of the input; models and schemes use seed+1 (default: {DEFAULT_SEED})")
        cmd.add_argument("--out", metavar="PNG", help="write the plot of activation and gradient std by depth here")
        cmd.add_argument("--format", choices=("table", "json"), default="table", help="output format (default: table)")
        if name == "compare":
            cmd.add_argument("--init", type=_scheme_list, default=list(SCHEMES), metavar="LIST",
                             help=f"comma-separated schemes (default: all: {','.join(SCHEMES)})")
            cmd.add_argument("--spectrum", action="store_true",
                             help="also the singular values of the input-output Jacobian at one sample")
        else:
            cmd.add_argument("--init", choices=list(SCHEMES), default="default", metavar="SCHEME",
                             help=f"one of {','.join(SCHEMES)} (default: default)")
    return parser  # fmt: skip


def _fmt(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return str(v)
    return f"{v:.3e}"


def _summary_table(results: Sequence[SchemeResult]) -> str:
    spectrum = results[0].spectrum is not None
    header = ["scheme", "output std", "input grad norm", "exploded", "vanished"]
    if spectrum:
        header += ["Jacobian σ_min", "σ_max"]
    rows = []
    for r in results:
        row = [r.scheme, _fmt(r.output_std), _fmt(r.input_grad_norm), "yes" if r.exploded else "no",
               "yes" if r.vanished else "no"]  # fmt: skip
        if spectrum:
            row += [_fmt(float(r.spectrum.min())), _fmt(float(r.spectrum.max()))]  # type: ignore[union-attr]
        rows.append(row)
    return text_table(header, rows, numeric={1, 2, 5, 6})


def _evenly(n: int, k: int) -> list[int]:
    """``k`` indices spread over ``range(n)``, first and last included."""
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def _run(args: argparse.Namespace, stdout: TextIO) -> int:
    builder = _checked_builder(args.model, load_model(args.model))
    if args.input_shape is not None:
        shape = parse_shape(args.input_shape)
    elif args.model in MODELS:
        shape = MODELS[args.model][1]
    else:
        raise UsageError(f"--input-shape is required with --model {args.model!r}")
    inputs = torch.randn(args.batch, *shape, generator=torch.Generator().manual_seed(args.seed))
    schemes = args.init if args.command == "compare" else [args.init]
    try:
        results = compare(builder, inputs, schemes, seed=args.seed, spectrum=getattr(args, "spectrum", False))
    except UsageError:
        raise
    except (RuntimeError, ValueError) as err:  # e.g. the input shape does not fit the model
        raise UsageError(f"running --model {args.model!r} on input {tuple(inputs.shape)} failed: {err}") from None
    if args.format == "json":
        data = [{**r.summary(), "layers": r.report.rows} for r in results]
        json.dump(data, stdout, indent=2, default=_json_default)
        stdout.write("\n")
    else:
        stdout.write(_text(args, results, tuple(inputs.shape)))
    if args.out:
        try:
            plot_reports({r.scheme: r.report for r in results}, args.out,
                         title=f"{args.model}: signal by depth, batch {args.batch}, seed {args.seed}")
            print(f"wrote {args.out}", file=sys.stderr)
        except ModuleNotFoundError as err:
            print(f"torchinit: the plot was not written: {err}", file=sys.stderr)
    return 0


def _json_default(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON-serializable: {value!r}")


def _text(args: argparse.Namespace, results: Sequence[SchemeResult], shape: tuple[int, ...]) -> str:
    model = args.model + (f" ({MODELS[args.model][2]})" if args.model in MODELS else "")
    out = [f"model: {model}",
           f"input: x ~ N(0, 1), shape {tuple(shape)}, seed {args.seed}; models and schemes seeded with {args.seed + 1}",
           "pass:  one forward, loss = mean(output**2), one backward", ""]  # fmt: skip
    for r in results:
        n = len(r.report.rows)
        rows = None if args.command == "probe" else _evenly(n, TABLE_ROWS)
        note = "" if rows is None or len(rows) == n else f" ({len(rows)} of {n} layers; torchinit probe shows all)"
        out += [f"== {r.scheme}: {r.description}{note}", r.report.table(rows), ""]
    out += [_summary_table(results), "",
            "output std: std of the model's output; input grad norm: ||d loss / d x||, over the batch. "
            f"exploded: non-finite, or output std > {EXPLODE_STD:.0e}; vanished: output std < {VANISH_STD:.0e} "
            f"or input grad norm < {VANISH_GRAD:.0e}"]  # fmt: skip
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``torchinit`` command; returns the exit status.

    Usage errors print a one-line message to stderr and return 2, as does a call
    without a subcommand (after printing the help); ``--help`` and ``--version`` return 0.

    Example:
        >>> main(["compare", "--init", "default,glass", "--format", "json"])  # doctest: +SKIP
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
    try:
        return _run(args, sys.stdout)
    except UsageError as err:
        print(f"torchinit {args.command}: error: {err}", file=sys.stderr)
        return 2
