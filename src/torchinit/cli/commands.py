"""The ``torchinit`` command line.

``torchinit compare``
    Initialize one model with several schemes and show, for each, how the signal flows:
    a per-layer table (activation std and gradient std by depth), a summary row (output
    std, gradient norm at the input, exploded/vanished flags) and one comparison plot.
    The model is an embedded one (``--model mlp``: a deep residual MLP whose widths
    change, ``--model cnn``: a small residual CNN) or your own (``--model pkg.mod:make``).

``torchinit probe``
    The full per-layer table of one scheme.

``torchinit train``
    Train fresh copies of a model (``mlp-tanh``, ``mlp-relu``, ``resmlp``, ``cnn``) under each
    scheme on scikit-learn's digits and report, over ``--seeds`` seeds, the test accuracy,
    the final training loss and the steps until the loss halved (:mod:`torchinit.diagnostics.trainability`;
    scikit-learn comes with ``pip install 'torchinit[train]'``).

``torchinit coordcheck``
    muP's coordinate check (:func:`torchinit.mup.coord_check`): train a model family for a few steps at several
    widths under the standard parametrization and muP, and flag every layer whose activation size moves with
    width (``--model mlp|resmlp|gpt2`` or your ``pkg.mod:build`` taking ``width=``, with ``--input-shape``).

Your own model: ``pkg.mod`` is imported from the current directory when its top-level
package (``pkg.py`` or ``pkg/``) is there, else as installed. Only that package is taken
from the current directory: while it is imported the directory is *last* on ``sys.path``,
so its own imports of sibling files work but a local ``matplotlib.py`` never shadows the
installed one, and ``sys.path`` is restored exactly afterwards (see :func:`load_model`).

``--out PATH`` writes the plot; the suffix (.png, .pdf or .svg) picks the format, and an
existing directory gets ``compare.png`` (``probe.png``) inside it. It is checked to be
writable before the run starts.

Before running, the memory the run needs is estimated (:func:`estimate_bytes`:
``3 * (P + B*I + S + J)`` bytes, from the parameters, the input batch and every layer's
output, found on the ``meta`` device without allocating anything); a run over
``--max-memory`` (default: half the physical memory) is refused.

Exit status: 0 on success; 2 for your error (bad arguments; a ``--model`` that fails to
import, build or run, ``sys.exit()`` in it included: with your own model any error of the
run counts as yours, with an embedded one what a wrong ``--input-shape`` raises; an
``--out`` that cannot be written; a run over ``--max-memory``); 1 for a bug in torchinit,
or a stdout closed early (``| head``); 130 when interrupted. Every failure prints exactly
one line to stderr; ``--debug`` (before or after the command) prints the traceback above it.
Run ``torchinit compare --help``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.machinery
import importlib.util
import itertools
import json
import math
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType
from typing import Any, NoReturn, TextIO

import torch
from torch import nn

from torchinit._util.text import text_table
from torchinit._util.version import __version__
from torchinit.diagnostics.compare import (
    DEFAULT_SCHEMES,
    EXPLODE_STD,
    SCHEMES,
    VANISH_GRAD,
    VANISH_STD,
    SchemeResult,
    compare,
)
from torchinit.diagnostics.models import ResidualMLP, SmallCNN
from torchinit.diagnostics.plots import PLOT_HINT
from torchinit.diagnostics.probing import first_tensor, plot_reports
from torchinit.diagnostics.trainability import (
    DATASETS,
    build_model,
    check,
    parse_init,
    plot_training,
    run_checked,
    summarize,
)
from torchinit.diagnostics.trainability import MODELS as TRAIN_MODELS
from torchinit.mup.coord import DEFAULT_TOL, FAMILIES, PARAMETRIZATIONS, Family, coord_check, regression_loss
from torchinit.mup.rules import OPTIMIZERS
from torchinit.rng import keyed

__all__ = ["main", "build_parser", "MODELS", "load_model", "parse_shape", "estimate_bytes", "UsageError"]

DEFAULT_SEED = 0
DEFAULT_BATCH = 256
#: Rows of each scheme's per-layer table in ``compare`` (evenly spaced; ``probe`` shows all).
TABLE_ROWS = 12
#: What ``--no-progress`` turns off.
PROGRESS_HELP = ("no progress on stderr (default: a bar redrawn per step on a terminal, a line per tenth of the "
                 "work elsewhere)")
#: The plot formats ``--out`` accepts, by suffix.
PLOT_SUFFIXES = (".png", ".pdf", ".svg")

#: The embedded models: a builder and the input shape (without the batch).
MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], str]] = {
    "mlp": (ResidualMLP, (64,), "a deep residual MLP without normalization, widths 64-128-256-128-64-32, "
                                "projection shortcuts where the width changes"),
    "cnn": (SmallCNN, (3, 32, 32), "a small residual CNN without normalization, 16-32-64 channels, "
                                   "1x1 projection shortcuts"),
}  # fmt: skip


class UsageError(Exception):
    """Bad command-line input: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors raise :class:`UsageError` (one line) instead of printing and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


@contextmanager
def _user_code(what: str, errors: tuple[type[BaseException], ...] = (Exception, SystemExit)) -> Iterator[None]:
    """Report ``errors`` raised inside (the user's code; ``sys.exit()`` included) as one UsageError naming ``what``."""
    try:
        yield
    except UsageError:
        raise
    except errors as err:
        if isinstance(err, SystemExit):
            raise UsageError(f"{what} called sys.exit({err.code!r})") from err
        raise UsageError(f"{what} failed ({type(err).__name__}: {err})") from err


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


def _import_user_module(name: str) -> ModuleType:
    """Import ``name``, its top-level package from the current directory when it is there.

    Only that package is taken from the current directory ahead of installed ones: while it
    runs, the directory is last on ``sys.path`` (its imports of sibling files work, a local
    ``matplotlib.py`` never shadows the installed one), and ``sys.path`` is restored exactly.
    """
    if not all(part.isidentifier() for part in name.split(".")):
        raise ValueError(f"{name!r} is not a module name")
    top, cwd, saved = name.partition(".")[0], os.getcwd(), list(sys.path)
    importlib.invalidate_caches()  # files written since the last import are seen
    try:
        sys.path.append(cwd)
        local = importlib.machinery.PathFinder.find_spec(top, [cwd]) if top not in sys.modules else None
        if local is not None and local.loader is not None:
            module = sys.modules[top] = importlib.util.module_from_spec(local)
            try:
                local.loader.exec_module(module)
            except BaseException:
                del sys.modules[top]
                raise
        return importlib.import_module(name)
    finally:
        sys.path[:] = saved


def load_model(spec: str) -> Callable[[], nn.Module]:
    """The builder named by ``spec``: an embedded model name, or ``module:callable``.

    The module is imported from the current directory when its top-level package is there,
    else as installed; ``sys.path`` is left as it was. Any failure, ``sys.exit()`` in the
    module included, is a :class:`UsageError`.

    Example:
        >>> load_model("mlp") is MODELS["mlp"][0]
        True
    """
    if spec in MODELS:
        return MODELS[spec][0]
    _check_model_name(spec)
    module_name, _, attr = spec.partition(":")
    with _user_code(f"--model {spec!r}: importing {module_name!r}"):
        module = _import_user_module(module_name)
        builder = getattr(module, attr, None) if attr else None
    if not callable(builder):
        raise UsageError(f"--model {spec!r}: {module_name!r} has no callable {attr!r}")
    return builder


def _check_model_name(spec: str) -> None:
    """An embedded model's name, or ``module:callable``; else a UsageError naming the valid values."""
    if spec not in MODELS and ":" not in spec:
        raise UsageError(f"--model {spec!r} is unknown; use {', '.join(MODELS)} or module:callable")


def _checked_builder(spec: str, builder: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        with _user_code(f"--model {spec!r}: building the model"):
            model = builder()
        if not isinstance(model, nn.Module):
            raise UsageError(f"--model {spec!r} returned {type(model).__name__}, not an nn.Module")
        return model

    return build


def estimate_bytes(build: Callable[[], nn.Module], batch: int, shape: tuple[int, ...], *,
                   spectrum: bool = False) -> int:
    """A rough estimate of the memory a run needs, in bytes: ``3 * (P + B*I + S + J)``.

    ``P``: the bytes of the model's parameters and buffers; ``B*I``: the input batch
    (``batch`` samples of ``shape``, float32); ``S``: the bytes of every leaf module's output
    on that batch; ``J`` (with ``spectrum``): the Jacobian at one sample, float32,
    ``numel(output) * numel(input)`` entries. The factor 3 covers the gradients, the
    activations autograd saves and the probe's copies. ``P``, ``S`` and the output size come
    from building the model and running it on the ``meta`` device, which allocates nothing;
    where that fails, ``S = B*I * (number of leaf modules)`` and the output is as large as
    the input (and, if the model cannot even be built there, ``P = 0``). Default: no spectrum.

    Example:
        >>> estimate_bytes(lambda: nn.Linear(64, 10), 256, (64,))  # 3 * (650*4 + 256*64*4 + 256*10*4)
        235128
    """
    numel = math.prod(shape)
    params, leaves, outputs, out_numel = 0, 1, None, numel
    try:
        with torch.device("meta"):
            model = build()
            params = sum(t.numel() * t.element_size() for t in itertools.chain(model.parameters(), model.buffers()))
            leaf_modules = [m for m in model.modules() if next(m.children(), None) is None]
            leaves, sizes = max(1, len(leaf_modules)), []
            for module in leaf_modules:
                module.register_forward_hook(lambda m, i, out: sizes.append(_nbytes(first_tensor(out))))
            with torch.no_grad():
                out = first_tensor(model(torch.empty(batch, *shape)))
            outputs, out_numel = sum(sizes), (out.numel() // batch if out is not None else numel)
    except (Exception, SystemExit):  # not meta-friendly: the fallbacks above; the run itself reports errors
        pass
    inputs = 4 * batch * numel
    jacobian = 4 * out_numel * numel if spectrum else 0
    return 3 * (params + inputs + (inputs * leaves if outputs is None else outputs) + jacobian)


def _nbytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def _human(n: int) -> str:
    """``n`` bytes in binary units, e.g. ``1.5 GiB``."""
    if n >= 2**60:
        return "over 1 EiB"
    k = max(0, (n.bit_length() - 1) // 10)
    return f"{n / 1024**k:.3g} {('B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB')[k]}"


def _default_memory_limit() -> int:
    """Half the physical memory (8 GiB where the system does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (AttributeError, ValueError, OSError):
        return 8 * 2**30


def _memory_size(text: str) -> int:
    """``"4G"``, ``"512M"``, ``"1.5GiB"`` or ``"100000"`` (bytes) as bytes; K, M, G, T are powers of 1024."""
    number = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = 1024 ** (" KMGT".index(number[-1]) if number and number[-1] in "KMGT" else 0)
    try:
        value = float(number.rstrip("KMGT")) * scale
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 1):
        raise argparse.ArgumentTypeError(f"must be a size like 4G, 512M or 100000 (bytes); got {text!r}")
    return int(value)


def _plot_path(out: str, command: str) -> str:
    """Where ``--out`` writes the plot (``<out>/<command>.png`` for a directory), checked to be writable now, and
    that matplotlib, which draws it, is importable: both before the work starts."""
    if not _has_matplotlib():
        raise UsageError(f"--out {out!r}: {PLOT_HINT}")
    path = os.path.join(out, f"{command}.png") if os.path.isdir(out) else out
    if os.path.splitext(path)[1].lower() not in PLOT_SUFFIXES:
        raise UsageError(f"--out {out!r}: name a {', '.join(PLOT_SUFFIXES)} file or an existing directory")
    existed = os.path.lexists(path)
    if existed and not os.path.isfile(path):
        raise UsageError(f"--out {out!r}: {path!r} exists and is not a regular file")
    try:
        with open(path, "ab"):  # creates nothing new when the file is there; changes nothing in it
            pass
        if not existed:
            os.remove(path)
    except OSError as err:
        raise UsageError(f"--out {out!r} is not writable ({err.strerror or err})") from err
    return path


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _scheme_list(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [n for n in names if n not in SCHEMES]
    if not names or unknown:
        what = f"unknown scheme {', '.join(map(repr, unknown))}" if unknown else "no scheme given"
        raise argparse.ArgumentTypeError(f"{what}; choose from {', '.join(SCHEMES)}")
    return list(dict.fromkeys(names))


def _integer(text: str, what: str) -> int:
    """``text`` as an int; else a usage error: it "must be ``what``"."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}; got {text!r}") from None


def _positive_int(text: str) -> int:
    value = _integer(text, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text!r}")
    return value


def _seed(text: str) -> int:
    value = _integer(text, "a non-negative integer")
    if not 0 <= value < 2**63 - 1:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer below 2**63 - 1; got {text!r}")
    return value


class _Version(argparse.Action):
    """``--version``: the line as it is (argparse's own action rewraps it at the terminal's width)."""

    def __init__(self, option_strings: list[str], version: str, dest: str = argparse.SUPPRESS) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0,
                         help="print the version, torch's, and whether the keyed kernel is in use, then exit")
        self.version = version

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option_string: Any = None) -> None:
        print(self.version)
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The ``torchinit`` argument parser (subcommands ``compare`` and ``probe``); its usage errors raise UsageError.

    Example:
        >>> build_parser().parse_args(["compare", "--seed", "3"]).seed
        3
    """
    parser = _Parser(prog="torchinit", description="Weight initialization for PyTorch: see the signal.")
    # the kernel's status: pip shows nothing of the build unless asked (-v), so this is where a user sees it
    version = f"torchinit {__version__} (torch {torch.__version__}; keyed kernel: {keyed.KERNEL_STATUS})"
    parser.add_argument("--version", action=_Version, version=version)
    debug_help = "on failure, print the traceback above the one-line message"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    models = "; ".join(f"{k}: {v[2]}" for k, v in MODELS.items())
    for name, help_text in (("compare", "compare init schemes on one model: signal by depth, table and plot"),
                            ("probe", "the per-layer signal table of one scheme")):  # fmt: skip
        cmd = sub.add_parser(name, help=help_text, description=help_text + ". Embedded models: " + models + ".")
        cmd.add_argument("--model", default="mlp", metavar="MODEL",
                         help=f"{', '.join(MODELS)}, or module:callable returning an nn.Module (default: mlp)")
        cmd.add_argument("--input-shape", "--shape", dest="input_shape", metavar="SHAPE",
                         help="input size without the batch, e.g. 64 or 3,32,32 (required for your own model)")
        cmd.add_argument("--batch", type=_positive_int, default=DEFAULT_BATCH,
                         help=f"batch size of the random N(0, 1) input (default: {DEFAULT_BATCH})")
        cmd.add_argument("--seed", type=_seed, default=DEFAULT_SEED,
                         help=f"seed of the input; models and schemes use seed+1 (default: {DEFAULT_SEED})")
        cmd.add_argument("--out", metavar="PATH", help="write the plot of activation and gradient std by depth here "
                                                        f"({', '.join(PLOT_SUFFIXES)}; a directory gets {name}.png)")
        cmd.add_argument("--format", choices=("table", "json"), default="table", help="output format (default: table)")
        cmd.add_argument("--max-memory", type=_memory_size, metavar="SIZE",
                         help="refuse a run estimated to need more memory, e.g. 4G (default: half the physical "
                              f"memory, {_human(_default_memory_limit())})")
        cmd.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
        if name == "compare":
            cmd.add_argument("--init", type=_scheme_list, default=list(DEFAULT_SCHEMES), metavar="LIST",
                             help=f"comma-separated schemes of {', '.join(SCHEMES)} (default: "
                                  f"{','.join(DEFAULT_SCHEMES)})")
            cmd.add_argument("--spectrum", action="store_true",
                             help="also the singular values of the input-output Jacobian at one sample")
        else:
            cmd.add_argument("--init", choices=list(SCHEMES), default="default", metavar="SCHEME",
                             help=f"one of {', '.join(SCHEMES)} (default: default)")
    help_text = "train fresh copies of a model under each init scheme on a real dataset: does it train?"
    cmd = sub.add_parser("train", help=help_text, description=help_text + " (scikit-learn: pip install "
                         "'torchinit[train]').")
    cmd.add_argument("--data", choices=DATASETS, default="digits", help="the dataset (default: digits)")
    cmd.add_argument("--model", choices=TRAIN_MODELS, default="mlp-tanh", help="the model (default: mlp-tanh)")
    cmd.add_argument("--depth", type=_positive_int, default=16, help="hidden layers or blocks (default: 16)")
    cmd.add_argument("--width", type=_positive_int, default=64, help="hidden width or channels (default: 64)")
    cmd.add_argument("--init", type=_train_inits, default=["default", "orthogonal"], metavar="LIST",
                     help=f"comma-separated schemes of compare ({', '.join(SCHEMES)}); NAME:gain=G sets the gain "
                          "of orthogonal, xavier_*, hadamard (default: default,orthogonal)")
    cmd.add_argument("--seeds", type=_positive_int, default=3, help="seeds per scheme (default: 3)")
    cmd.add_argument("--steps", type=_positive_int, default=300, help="Adam steps, lr 1e-3, batch 128 (default: 300)")
    cmd.add_argument("--out", metavar="PATH", help="write the loss curves and the accuracies as a figure "
                                                    f"({', '.join(PLOT_SUFFIXES)}; a directory gets train.png)")
    cmd.add_argument("--format", choices=("table", "json"), default="table", help="output format (default: table)")
    cmd.add_argument("--max-memory", type=_memory_size, metavar="SIZE",
                     help="refuse a run estimated to need more memory, e.g. 4G (default: half the physical memory, "
                          f"{_human(_default_memory_limit())})")
    cmd.add_argument("--no-progress", dest="progress", action="store_false", help=PROGRESS_HELP)
    cmd.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    _add_coordcheck(sub, debug_help)
    return parser  # fmt: skip


def _add_coordcheck(sub: argparse._SubParsersAction, debug_help: str) -> None:
    help_text = "muP's coordinate check: does any layer's activation size move with width after a few steps?"
    families = "; ".join(f"{k}: {v.description}" for k, v in FAMILIES.items())
    cmd = sub.add_parser("coordcheck", help=help_text, description=f"{help_text} Embedded families: {families}.")
    cmd.add_argument("--model", default="mlp", metavar="MODEL",
                     help=f"{', '.join(FAMILIES)}, or module:callable taking width= (default: mlp)")
    cmd.add_argument("--input-shape", "--shape", dest="input_shape", metavar="SHAPE",
                     help="input size without the batch for your own model (a batch of 64 N(0, 1) inputs, "
                          "mean squared error to fixed N(0, 1) targets)")
    cmd.add_argument("--widths", type=_width_list, default=[64, 128, 256, 512], metavar="LIST",
                     help="comma-separated widths, at least 3 (default: 64,128,256,512)")
    cmd.add_argument("--param", type=_param_list, default=list(PARAMETRIZATIONS), metavar="LIST",
                     help=f"comma-separated parametrizations of {','.join(PARAMETRIZATIONS)} (default: sp,mup)")
    cmd.add_argument("--steps", type=_steps, default=4, help="training steps, at least 2 (default: 4)")
    cmd.add_argument("--lr", type=_positive_float, default=1e-2, help="learning rate (default: 0.01)")
    cmd.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw", help="the optimizer (default: adamw)")
    cmd.add_argument("--tol", type=_positive_float, default=DEFAULT_TOL,
                     help=f"flag a layer whose |slope| of log size against log width exceeds this (default: "
                          f"{DEFAULT_TOL})")
    cmd.add_argument("--seed", type=_seed, default=DEFAULT_SEED, help=f"init and data seed (default: {DEFAULT_SEED})")
    cmd.add_argument("--out", metavar="PATH", help="write the log-log plot of activation size against width here "
                                                    f"({', '.join(PLOT_SUFFIXES)}; a directory gets coordcheck.png)")
    cmd.add_argument("--format", choices=("table", "json"), default="table", help="output format (default: table)")
    cmd.add_argument("--max-memory", type=_memory_size, metavar="SIZE",
                     help="refuse a run estimated to need more memory, e.g. 4G (default: half the physical memory, "
                          f"{_human(_default_memory_limit())})")
    cmd.add_argument("--no-progress", dest="progress", action="store_false", help=PROGRESS_HELP)
    cmd.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)


def _steps(text: str) -> int:
    value = _integer(text, "an integer of at least 2")
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be an integer of at least 2 (step 0 is the init); got {text!r}")
    return value


def _width_list(text: str) -> list[int]:
    widths = [_positive_int(part.strip()) for part in text.split(",") if part.strip()]
    if len(set(widths)) < 3:
        raise argparse.ArgumentTypeError(f"needs at least 3 distinct widths; got {text!r}")
    return sorted(set(widths))


def _param_list(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [n for n in names if n not in PARAMETRIZATIONS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"choose from {','.join(PARAMETRIZATIONS)}; got {text!r}")
    return list(dict.fromkeys(names))


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number; got {text!r}")
    return value


def _coord_family(args: argparse.Namespace) -> Family:
    """The family ``--model`` names: an embedded one, or the user's builder with a regression loss on random
    inputs of ``--input-shape``."""
    if args.model in FAMILIES:
        if args.input_shape is not None:
            raise UsageError(f"--input-shape is for your own model; --model {args.model!r} brings its data")
        return FAMILIES[args.model]
    if ":" not in args.model:
        raise UsageError(f"--model {args.model!r} is unknown; use {', '.join(FAMILIES)} or module:callable")
    builder = load_model(args.model)
    if args.input_shape is None:
        raise UsageError(f"--input-shape is required with --model {args.model!r}")
    inputs = torch.randn(64, *parse_shape(args.input_shape), generator=torch.Generator().manual_seed(args.seed))
    return Family(builder, regression_loss(inputs, args.seed), None, args.model)


def _check_coord_memory(args: argparse.Namespace, family: Family, errors: tuple[type[BaseException], ...]) -> None:
    """Refuse a run whose widest model's parameters, gradients and AdamW state (16 bytes a parameter in float32,
    counted on the meta device) would not fit ``--max-memory``."""
    widest = max(args.widths)
    with _user_code(f"--model {args.model!r}: building width {widest} on meta", errors), torch.device("meta"):
        model = family.build(width=widest)
    if not isinstance(model, nn.Module):
        raise UsageError(f"--model {args.model!r} returned {type(model).__name__}, not an nn.Module")
    need = 16 * sum(p.numel() for p in model.parameters())
    limit = _default_memory_limit() if args.max_memory is None else args.max_memory
    if need > limit:
        raise UsageError(f"width {widest} would need about {_human(need)} for its parameters, gradients and AdamW "
                         f"state, over the --max-memory limit of {_human(limit)}; lower --widths")


def _run_coordcheck(args: argparse.Namespace, stdout: TextIO) -> int:
    if args.model not in FAMILIES and ":" not in args.model:  # an unknown name before anything else
        raise UsageError(f"--model {args.model!r} is unknown; use {', '.join(FAMILIES)} or module:callable")
    out = _plot_path(args.out, "coordcheck") if args.out is not None else None
    family = _coord_family(args)
    errors = (Exception, SystemExit) if args.model not in FAMILIES else (ImportError,)
    _check_coord_memory(args, family, errors)
    with _user_code(f"--model {args.model!r}", errors):
        result = coord_check(family, args.widths, params=args.param, steps=args.steps, lr=args.lr,
                             optimizer=args.optimizer, tol=args.tol, seed=args.seed,
                             progress=None if args.progress else False)  # fmt: skip
    if args.format == "json":
        json.dump(result.to_dict(), stdout, indent=2)
        stdout.write("\n")
    else:
        stdout.write(f"{args.model}: widths {','.join(map(str, result.widths))}, {result.steps} {args.optimizer} "
                     f"steps at lr {args.lr:g}; mean |activation| at the last step, and the largest |slope| of log "
                     "size against log width after the first update\n")
        stdout.write(result.table() + "\n")
    if out:
        try:
            result.plot(out)
            print(f"wrote {out}", file=sys.stderr)
        except OSError as err:
            raise UsageError(f"--out {args.out!r}: writing {out!r} failed ({err.strerror or err})") from err
    return 0


def build_model_on_meta(model: str, depth: int, width: int) -> nn.Module:
    """``build_model`` on the meta device: the parameter count without memory."""
    with torch.device("meta"):
        return build_model(model, depth, width)


def _train_inits(text: str) -> list[str]:
    specs = [part.strip() for part in text.split(",") if part.strip()]
    if not specs:
        raise argparse.ArgumentTypeError("needs at least one scheme")
    for spec in specs:
        try:
            parse_init(spec)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return specs


def _run_train(args: argparse.Namespace, stdout: TextIO) -> int:
    out = _plot_path(args.out, "train") if args.out is not None else None
    try:
        meta = build_model_on_meta(args.model, args.depth, args.width)
    except ValueError as err:
        raise UsageError(str(err)) from None
    # parameters, gradients and Adam's two moments (4 P), and the activations of a batch of 128 kept for backward
    need = estimate_bytes(lambda: build_model(args.model, args.depth, args.width), 128, (64,)) + 2 * 4 * sum(
        p.numel() for p in meta.parameters())  # fmt: skip
    limit = _default_memory_limit() if args.max_memory is None else args.max_memory
    if need > limit:
        raise UsageError(f"training would need about {_human(need)} (depth {args.depth}, width {args.width}), over "
                         f"the --max-memory limit of {_human(limit)}; lower --depth or --width")
    try:
        schemes = check(args.model, args.depth, args.init, args.width)  # every scheme on the model, once, first
    except ValueError as err:
        raise UsageError(str(err)) from None
    try:
        result = run_checked(schemes, args.model, args.depth, data=args.data, seeds=args.seeds, steps=args.steps,
                             lr=1e-3, batch=128, width=args.width,
                             progress=None if args.progress else False)  # fmt: skip
    except ImportError as err:
        raise UsageError(str(err)) from None
    if args.format == "json":
        json.dump(result, stdout, indent=2)
        stdout.write("\n")
    else:
        stdout.write(f"{args.model}, depth {args.depth}, on {args.data}: {args.seeds} seed(s), {args.steps} Adam "
                     "steps (lr 1e-3, batch 128); mean ± std over the seeds\n")
        stdout.write(text_table(["scheme", "test accuracy", "final train loss", "steps until the loss halved"],
                                summarize(result), numeric={1, 2, 3}) + "\n")
    if out:
        plot_training(result, out)
    return 0


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


def _input_shape(args: argparse.Namespace) -> tuple[int, ...]:
    if args.input_shape is not None:
        return parse_shape(args.input_shape)
    if args.model in MODELS:
        return MODELS[args.model][1]
    raise UsageError(f"--input-shape is required with --model {args.model!r}")


def _run(args: argparse.Namespace, stdout: TextIO) -> int:
    if args.command == "train":
        return _run_train(args, stdout)
    if args.command == "coordcheck":
        return _run_coordcheck(args, stdout)
    _check_model_name(args.model)  # the arguments first (the name, --out, the shape); then the module is imported
    out = _plot_path(args.out, args.command) if args.out else None
    shape = _input_shape(args)
    builder = _checked_builder(args.model, load_model(args.model))
    spectrum = getattr(args, "spectrum", False)
    need = estimate_bytes(builder, args.batch, shape, spectrum=spectrum)
    limit = _default_memory_limit() if args.max_memory is None else args.max_memory
    if need > limit:
        raise UsageError(f"the run would need about {_human(need)} (batch {args.batch}, input {shape}), over the "
                         f"--max-memory limit of {_human(limit)}; lower --batch or the input shape")
    schemes = args.init if args.command == "compare" else [args.init]
    # Any error running your own model is yours; with an embedded one, only what a wrong input shape raises.
    errors = (Exception, SystemExit) if args.model not in MODELS else (RuntimeError, ValueError, MemoryError)
    with _user_code(f"running --model {args.model!r} on input {(args.batch, *shape)}", errors):
        inputs = torch.randn(args.batch, *shape, generator=torch.Generator().manual_seed(args.seed))
        results = compare(builder, inputs, schemes, seed=args.seed, spectrum=spectrum)
    if args.format == "json":
        data = [{**r.summary(), "layers": r.report.rows} for r in results]
        json.dump(data, stdout, indent=2, default=_json_default)
        stdout.write("\n")
    else:
        stdout.write(_text(args, results, tuple(inputs.shape)))
    if out:
        try:
            plot_reports({r.scheme: r.report for r in results}, out,
                         title=f"{args.model}: signal by depth, batch {args.batch}, seed {args.seed}")
            print(f"wrote {out}", file=sys.stderr)
        except OSError as err:
            raise UsageError(f"--out {args.out!r}: writing {out!r} failed ({err.strerror or err})") from err
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
           f"input: x ~ N(0, 1), shape {tuple(shape)}, seed {args.seed}; "
           f"models and schemes seeded with {args.seed + 1}",
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


@contextmanager
def _one_line_warnings(prog: str) -> Iterator[None]:
    """Within, warnings print as one line on stderr, ``prog: warning: message``, as the command's errors do (no
    source line). The command owns its process; the previous display is restored on the way out."""
    import warnings

    def one_line(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> str:
        return f"{prog}: warning: {' '.join(str(message).split())}\n"

    previous = warnings.formatwarning  # catch_warnings does not restore formatwarning: put it back here
    warnings.formatwarning = one_line  # the display only: a caller recording warnings still records them
    try:
        yield
    finally:
        warnings.formatwarning = previous


def _report(err: BaseException, args: argparse.Namespace | None) -> int:
    """Print ``err`` as one line on stderr (the traceback above it with ``--debug``); return the exit status."""
    if isinstance(err, UsageError):
        status, what = 2, f"error: {err}"
    elif isinstance(err, BrokenPipeError):  # stdout closed early (| head): nothing more goes there
        with contextlib.suppress(OSError, ValueError, AttributeError):  # not a real file (captured output)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status, what = 1, "stdout was closed before all the output was written"
    elif isinstance(err, KeyboardInterrupt):
        status, what = 130, "interrupted"
    else:
        status, what = 1, (f"internal error ({type(err).__name__}: {err}); this is a bug in torchinit, "
                           "please report it with the output of --debug")
    if args is not None and args.debug:
        traceback.print_exception(err)
    prog = "torchinit" + (f" {args.command}" if args is not None and args.command else "")
    print(f"{prog}: {' '.join(what.split())}", file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``torchinit`` command; returns the exit status.

    Every failure prints one line to stderr and returns 2 (the user's error, a call without
    a subcommand included), 1 (a bug in torchinit) or 130 (interrupted); ``--help`` and
    ``--version`` return 0.

    Example:
        >>> main(["compare", "--init", "default,glass", "--format", "json"])  # doctest: +SKIP
        0
    """
    parser, args = build_parser(), None
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help and --version (usage errors raise UsageError)
            return exc.code if isinstance(exc.code, int) else 0
        if args.command is None:
            raise UsageError("a command is required: compare, probe, train or coordcheck (see torchinit --help)")
        with _one_line_warnings(f"torchinit {args.command}"):
            return _run(args, sys.stdout)
    except (Exception, KeyboardInterrupt) as err:
        return _report(err, args)
