"""The coordinate check: does any layer's activation size move with width after a few training steps?

Under muP every activation coordinate stays of order one as width grows, at initialization and after training
steps; under the standard parametrization (SP) with a width-independent learning rate, the updates of hidden and
output weights add terms that grow with width (Yang et al., "Tensor Programs V", section 7 and appendix D.1).
:func:`coord_check` trains a model family for a few steps at several widths, records every leaf module's mean
``|output|`` at each step, and fits the slope of ``log(size)`` against ``log(width)``: a layer whose slope at any
step after the first update exceeds ``tol`` in magnitude grows or shrinks with width, and is flagged.

Each width is built under :func:`torchinit.deferred` and materialized with ``seed=``, its forward passes draw from
private generators (:class:`torchinit.rng.private.private_random`), and the data are fixed: the check is
reproducible and never touches the global RNG.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchinit._util.progress import Progress
from torchinit.diagnostics.plots import colors, figure
from torchinit.model.materialize import deferred, materialize_
from torchinit.mup.forward import forward_changes
from torchinit.mup.rules import OPTIMIZERS, checked_init, param_groups, policy
from torchinit.rng.private import private_random

__all__ = ["coord_check", "CoordCheck", "Family", "FAMILIES", "PARAMETRIZATIONS", "DEFAULT_TOL", "regression_loss"]

#: The parametrizations a coordinate check compares: torch's default init with one learning rate, and muP.
PARAMETRIZATIONS = ("sp", "mup")
#: A layer whose fitted slope of log(size) against log(width) exceeds this (after the first update) is flagged.
DEFAULT_TOL = 0.25


@dataclass(frozen=True)
class Family:
    """A model family for the coordinate check: ``build(width)`` makes a model, ``loss(model)`` runs it on fixed
    data and returns the loss, ``std`` is the init std muP scales (None: the model's own init, zero readout)."""

    build: Callable[..., nn.Module]  # called as build(width=...)
    loss: Callable[[nn.Module], Tensor]
    std: float | None = None
    description: str = ""


# ---------------------------------------------------------------- the embedded families


class MLP(nn.Module):
    """``depth`` ReLU layers of ``width`` between a 32-dim input and 10 classes."""

    def __init__(self, width: int, depth: int = 3) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(32 if i == 0 else width, width) for i in range(depth)])
        self.readout = nn.Linear(width, 10)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = F.relu(layer(x))
        return self.readout(x)


class ResMLP(nn.Module):
    """Pre-norm residual blocks ``x + W2 relu(W1 norm(x))`` of ``width`` between a 32-dim input and 10 classes."""

    def __init__(self, width: int, depth: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(32, width)
        self.norms = nn.ModuleList([nn.LayerNorm(width) for _ in range(depth)])
        self.ups = nn.ModuleList([nn.Linear(width, width) for _ in range(depth)])
        self.downs = nn.ModuleList([nn.Linear(width, width) for _ in range(depth)])
        self.readout = nn.Linear(width, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.embed(x)
        for norm, up, down in zip(self.norms, self.ups, self.downs):
            x = x + down(F.relu(up(norm(x))))
        return self.readout(x)


def _classification(model: nn.Module) -> Tensor:
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(64, 32, generator=g)
    y = torch.randint(0, 10, (64,), generator=g)
    return F.cross_entropy(model(x), y)


def gpt2(width: int) -> nn.Module:
    """A 2-layer transformers GPT-2 with head dim 16 (heads grow with width, so the attention scale stays right),
    no dropout, untied embeddings (a tied readout needs muP's 1/width in the forward pass)."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError as err:
        raise ImportError(f"the gpt2 family needs transformers, which cannot be imported here ({err})") from err
    config = GPT2Config(vocab_size=96, n_positions=32, n_embd=width, n_layer=2, n_head=max(width // 16, 1),
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=False, bos_token_id=0,
                        eos_token_id=0)  # fmt: skip
    return GPT2LMHeadModel(config)


def _language_model(model: nn.Module) -> Tensor:
    tokens = torch.randint(0, 96, (8, 32), generator=torch.Generator().manual_seed(1234))
    return model(input_ids=tokens, labels=tokens).loss


def regression_loss(inputs: Tensor, seed: int = 0) -> Callable[[nn.Module], Tensor]:
    """A loss for any model that maps ``inputs`` to a float tensor whose shape does not depend on width: the mean
    squared distance to fixed ``N(0, 1)`` targets of the output's shape (drawn from ``seed``, the same at every
    width)."""

    def loss(model: nn.Module) -> Tensor:
        out = model(inputs)
        if not isinstance(out, Tensor) or not out.dtype.is_floating_point:
            raise TypeError(f"the model returned {type(out).__name__}; a coordinate check needs a float tensor")
        target = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
        return F.mse_loss(out, target.to(out.device))

    return loss


FAMILIES: dict[str, Family] = {
    "mlp": Family(MLP, _classification, None, "3 ReLU layers, input 32, 10 classes"),
    "resmlp": Family(ResMLP, _classification, None, "3 pre-norm residual blocks, input 32, 10 classes"),
    "gpt2": Family(gpt2, _language_model, 0.02, "transformers GPT-2, 2 layers, head dim 16, untied"),
}


# ---------------------------------------------------------------- the check


@dataclass
class CoordCheck:
    """The result of :func:`coord_check`.

    ``sizes[param][width][step][layer]`` is the layer's mean ``|output|``; ``slopes[param][layer]`` the fitted slope
    of ``log(size)`` against ``log(width)`` at each step; ``flagged[param]`` the layers whose slope exceeds ``tol``
    at some step after the first update.
    """

    widths: list[int]
    steps: int
    tol: float
    sizes: dict[str, dict[int, list[dict[str, float]]]] = field(default_factory=dict)
    slopes: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    flagged: dict[str, list[str]] = field(default_factory=dict)

    def table(self) -> str:
        """Per parametrization and layer: the size at the smallest and the largest width at the last step, the
        largest slope after the first update, and whether it is flagged."""
        from torchinit._util.text import text_table

        lines = []
        for param, layers in self.slopes.items():
            first, last = self.sizes[param][self.widths[0]][-1], self.sizes[param][self.widths[-1]][-1]
            rows = [[layer, _fmt(first.get(layer)), _fmt(last.get(layer)), f"{_worst(slopes):.2f}",
                     "yes" if layer in self.flagged[param] else ""] for layer, slopes in layers.items()]  # fmt: skip
            lines.append(f"{param}: {len(self.flagged[param])} of {len(layers)} layer(s) move with width")
            lines.append(text_table(["layer", f"width {self.widths[0]}", f"width {self.widths[-1]}",
                                     "|slope|", "flagged"], rows, numeric={1, 2, 3}))  # fmt: skip
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for JSON): widths, steps, tol, sizes, slopes and flagged layers."""
        return _finite({"widths": self.widths, "steps": self.steps, "tol": self.tol,
                        "sizes": {p: {str(w): v for w, v in by_width.items()} for p, by_width in self.sizes.items()},
                        "slopes": self.slopes, "flagged": self.flagged})  # fmt: skip

    def plot(self, path: str) -> None:
        """Log-log plots of size against width, one panel per parametrization (rows) and step (columns), one line
        per layer; flagged layers are drawn solid, the others faint."""
        params = list(self.sizes)
        fig = figure(figsize=(3.2 * self.steps, 2.8 * len(params)), layout="constrained")
        axes = fig.subplots(len(params), self.steps, squeeze=False, sharey="row")
        palette = colors()
        for row, param in enumerate(params):
            for step in range(self.steps):
                ax = axes[row][step]
                for i, layer in enumerate(self.slopes[param]):
                    ys = [self.sizes[param][w][step].get(layer, math.nan) for w in self.widths]
                    flagged = layer in self.flagged[param]
                    ax.plot(self.widths, ys, marker="o", ms=3, color=palette[i % len(palette)],
                            alpha=1.0 if flagged else 0.35, label=layer if flagged else None)  # fmt: skip
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set_title(f"{param}, step {step}: {len(self.flagged[param])} flagged", fontsize=9)
                ax.set_xlabel("width")
            axes[row][0].set_ylabel("mean |activation|")
            if self.flagged[param]:
                axes[row][-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.02, 0.5))
        fig.savefig(path)


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (strict JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def coord_check(
    family: str | Family | Callable[[int], nn.Module],
    widths: Sequence[int] = (64, 128, 256, 512),
    *,
    params: Sequence[str] = PARAMETRIZATIONS,
    steps: int = 4,
    lr: float = 1e-2,
    optimizer: str = "adamw",
    loss: Callable[[nn.Module], Tensor] | None = None,
    std: float | None = None,
    base_width: int | None = None,
    tol: float = DEFAULT_TOL,
    seed: int = 0,
    progress: bool | None = None,
) -> CoordCheck:
    """Train ``family`` for ``steps`` steps at each of ``widths`` under each parametrization and record every leaf
    module's mean ``|output|`` at each step; flag the layers whose size moves with width.

    ``"sp"`` is the model's own init with one learning rate ``lr`` for every parameter; ``"mup"`` is
    :func:`~torchinit.mup.policy` (``std``), :func:`~torchinit.mup.param_groups` and
    :func:`~torchinit.mup.forward_changes` against the model at ``base_width`` (default: the smallest width). Step
    0 is recorded before any update. A layer's slope is the least-squares slope of ``log(size)`` against
    ``log(width)`` at one step; a layer is flagged when the magnitude of its slope exceeds ``tol`` at a step after
    the first update (at step 0 a muP readout is small by design).

    Args:
        family: ``"mlp"``, ``"resmlp"``, ``"gpt2"`` (:data:`FAMILIES`), a :class:`Family`, or a callable
            ``build(width=...) -> nn.Module`` (then ``loss`` is needed: :func:`regression_loss` fits any model).
        widths: at least 3 distinct widths; the defaults span 8x.
        params: which of ``"sp"``, ``"mup"`` to run.
        steps: steps of training (at least 2: step 0 is the init).
        lr: the learning rate (under muP: at the base width).
        optimizer: ``"adamw"`` or ``"sgd"``.
        loss: ``loss(model) -> Tensor`` on fixed data (a family brings its own).
        std: the init std muP scales (a family brings its own; None: the model's own init, zero readout).
        base_width: muP's base width.
        tol: the slope beyond which a layer is flagged.
        seed: the init's seed and the forward passes' private random seed.
        progress: progress on stderr (None: a bar on a terminal, a line per tenth of the work elsewhere; False:
            none).

    Example:
        >>> import torchinit.mup as mup
        >>> check = mup.coord_check("mlp", widths=(32, 64, 128), steps=3)
        >>> check.flagged["mup"], len(check.flagged["sp"]) > 0
        ([], True)
    """
    spec = _family(family, loss, std)
    widths, steps, params = _checked(widths, steps, params, optimizer, lr, tol)
    base_width = _checked_base_width(widths[0] if base_width is None else base_width, widths[0])
    checked_init(spec.std, None)  # before any run: a bad std would fail only after the sp runs
    result = CoordCheck(list(widths), steps, tol)
    with Progress(len(params) * len(widths) * steps, "coord_check", enabled=progress, periodic=True) as bar:
        for param in params:
            result.sizes[param] = {w: _train(spec, w, base_width, param, steps, lr, optimizer, seed, bar)
                                   for w in widths}  # fmt: skip
            result.slopes[param] = _slopes(result.sizes[param], widths, steps)
            result.flagged[param] = [layer for layer, s in result.slopes[param].items() if _worst(s) > tol]
    return result


def _family(family: Any, loss: Callable[[nn.Module], Tensor] | None, std: float | None) -> Family:
    if isinstance(family, str):
        if family not in FAMILIES:
            raise ValueError(f"family must be one of {', '.join(map(repr, FAMILIES))} or a callable; got {family!r}")
        spec = FAMILIES[family]
    elif isinstance(family, Family):
        spec = family
    elif callable(family):
        if loss is None:
            raise ValueError("loss is needed with a builder: loss(model) -> Tensor on fixed data")
        spec = Family(family, loss, std)
    else:
        raise TypeError(f"family must be a name, a Family or a callable; got {type(family).__name__}")
    return Family(spec.build, loss or spec.loss, std if std is not None else spec.std, spec.description)


def _checked(widths: Any, steps: int, params: Any, optimizer: str, lr: float,
             tol: float) -> tuple[list[int], int, list[str]]:  # fmt: skip
    params = list(params) if isinstance(params, Iterable) and not isinstance(params, str) else params
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be an integer of at least 2 (step 0 is the init); got {steps!r}")
    unknown = [p for p in params if p not in PARAMETRIZATIONS]
    if isinstance(params, str) or not params or unknown:
        raise ValueError(f"params must name some of {', '.join(map(repr, PARAMETRIZATIONS))}; got {params!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(map(repr, OPTIMIZERS))}; got {optimizer!r}")
    _positive("lr", lr)
    _positive("tol", tol)
    return _checked_widths(widths), steps, list(dict.fromkeys(params))


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number; got {value!r}")


def _checked_widths(widths: Any) -> list[int]:
    if not isinstance(widths, Iterable) or isinstance(widths, (str, bytes)):
        raise TypeError(f"widths must be a sequence of positive integers; got {type(widths).__name__}")
    widths = list(widths)
    if not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths):
        raise ValueError(f"widths must be positive integers; got {widths!r}")
    distinct = sorted(set(widths))
    if len(distinct) < 3:
        raise ValueError(f"widths must hold at least 3 distinct widths to fit a slope; got {distinct}")
    return distinct


def _checked_base_width(base_width: Any, smallest: int) -> int:
    if isinstance(base_width, bool) or not isinstance(base_width, int) or not 1 <= base_width <= smallest:
        raise ValueError(f"base_width must be a positive integer up to the smallest width, {smallest}; got "
                         f"{base_width!r}")  # fmt: skip
    return base_width


def _build(spec: Family, width: int, base_width: int, param: str, seed: int,
           optimizer: str) -> tuple[nn.Module, list[dict]]:
    """The model at ``width``, initialized for ``param``, and its optimizer groups."""
    with deferred():
        model = spec.build(width=width)
    if not isinstance(model, nn.Module):
        raise TypeError(f"build(width={width}) returned {type(model).__name__}, not an nn.Module")
    if param == "sp":
        materialize_(model, seed=seed)
        return model, [{"params": list(model.parameters())}]
    with torch.device("meta"):  # shapes only: the base, and another width that tells the width dims at the base
        base, delta = spec.build(width=base_width), spec.build(width=2 * base_width)
    materialize_(model, policy(model, base, std=spec.std, delta=delta), seed=seed)
    forward_changes(model, base, delta=delta)  # a tied readout's 1/m, attention by 1/d (the model is discarded)
    return model, param_groups(model, base, lr=1.0, optimizer=optimizer, delta=delta)


def _train(spec: Family, width: int, base_width: int, param: str, steps: int, lr: float, optimizer: str, seed: int,
           bar: Progress) -> list[dict[str, float]]:  # fmt: skip
    """Train one model for ``steps`` steps; each step's mean |output| of every leaf module, recorded before the
    step's update. Everything it draws, construction included, comes from private generators seeded by ``seed``."""
    with private_random(seed=seed):
        model, groups = _build(spec, width, base_width, param, seed, optimizer)
    for group in groups:  # muP's groups hold multipliers of lr (built with lr=1); no weight decay in either
        group["lr"] = lr * group.get("lr", 1.0)
        group["weight_decay"] = 0.0
    opt = torch.optim.AdamW(groups, lr=lr) if optimizer == "adamw" else torch.optim.SGD(groups, lr=lr)
    model.train()
    sizes: list[dict[str, float]] = []
    with private_random(seed=seed):
        for step in range(steps):
            record: dict[str, float] = {}
            with _recording(model, record):
                value = spec.loss(model)
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            sizes.append(record)
            bar.step(f"{param} width {width} step {step}")
    return sizes


class _recording:
    """Forward hooks on every leaf module of ``model`` that store its output's mean ``|x|`` in ``record``."""

    def __init__(self, model: nn.Module, record: dict[str, float]) -> None:
        self.model, self.record = model, record
        self.handles: list[Any] = []

    def __enter__(self) -> _recording:
        for name, module in self.model.named_modules():
            if name and not any(True for _ in module.children()):
                self.handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            out = output[0] if isinstance(output, (tuple, list)) and output else output
            if isinstance(out, Tensor) and out.dtype.is_floating_point and out.numel() > 0:
                self.record[name] = float(out.detach().abs().mean())

        return hook

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()


def _slopes(sizes: dict[int, list[dict[str, float]]], widths: list[int], steps: int) -> dict[str, list[float]]:
    """Each layer's least-squares slope of log(size) against log(width), per step (NaN where fewer than 2 widths
    have a positive finite size: a zero readout at step 0)."""
    layers = list(dict.fromkeys(layer for w in widths for record in sizes[w] for layer in record))
    slopes: dict[str, list[float]] = {}
    for layer in layers:
        per_step = []
        for step in range(steps):
            points = [(math.log(w), math.log(v)) for w in widths
                      if (v := sizes[w][step].get(layer, math.nan)) > 0 and math.isfinite(v)]  # fmt: skip
            per_step.append(_fit(points))
        slopes[layer] = per_step
    return slopes


def _fit(points: list[tuple[float, float]]) -> float:
    if len(points) < 2:
        return math.nan
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx


def _worst(slopes: list[float]) -> float:
    """The largest slope magnitude after the first update (steps 1 onwards), 0 if none is finite."""
    after = [abs(s) for s in slopes[1:] if math.isfinite(s)]
    return max(after, default=0.0)


def _fmt(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.3e}"
