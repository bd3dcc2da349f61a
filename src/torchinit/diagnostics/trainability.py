r"""Does the init decide whether a network trains? Train fresh copies under each scheme on a real dataset.

The engine behind ``torchinit train``. :func:`train` builds one model per
(scheme, seed), initializes it with the scheme (the names of ``torchinit compare``; a
``name:gain=g`` form overrides a scheme's gain), trains it with Adam on a fixed split of a
real dataset, and reports per seed: the test accuracy, the final training loss, the number
of steps until the training loss first fell to half its first value, and the loss curve.

Data: ``digits`` is scikit-learn's bundled handwritten digits (1,797 8x8 images, 10
classes; no download), split 75/25 stratified with a fixed ``random_state``, features
standardized with the training split's mean and std. scikit-learn comes with the
``train`` extra (``pip install 'torchinit[train]'``).

Models (``depth`` hidden layers or blocks, ``width`` 64 by default):

* ``mlp-tanh`` / ``mlp-relu``: ``depth`` Linear(width, width) layers with tanh / ReLU after
  a Linear(64, width) input layer, then a Linear(width, 10) head;
* ``resmlp``: the embedded residual MLP (:class:`torchinit.diagnostics.models.ResidualMLP`, widths
  64 -> 128 -> 64 -> 32 with projection shortcuts where they change, no normalization),
  ``depth`` blocks per width;
* ``cnn``: a plain CNN on the 1x8x8 images: ``depth`` 3x3 convs (``width`` channels,
  padding 1) with ReLU, global average pooling and a Linear head.

Determinism: every model is built from a private generator seeded with ``seed``
(:class:`~torchinit.rng.private.private_random`: the numbers ``torch.manual_seed(seed)`` would give, with the global
RNG left alone), the scheme draws from ``torch.Generator().manual_seed(seed)`` and the batches from another
generator of that seed, so the same arguments give the same numbers.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from torchinit._util.checks import is_real, positive_int
from torchinit._util.progress import Progress
from torchinit.diagnostics.compare import SCHEMES, Scheme, every_weight
from torchinit.diagnostics.models import ResidualMLP
from torchinit.diagnostics.plots import figure
from torchinit.rng.private import private_random
from torchinit.schemes.initializers import Hadamard, Orthogonal, XavierNormal, XavierUniform

__all__ = ["DATASETS", "MODELS", "train", "check", "parse_init", "load_data", "build_model", "summarize",
           "plot_training"]

DATASETS = ("digits",)
MODELS = ("mlp-tanh", "mlp-relu", "resmlp", "cnn")
#: Learning rates above this are refused (Adam's steps would overflow float32 parameters at once).
MAX_LR = 1e6
#: Gains above this are refused: float32 weights (and Adam's first steps) would overflow.
MAX_GAIN = 1e6
#: The most hidden layers or blocks a model may have.
MAX_DEPTH = 10_000
#: Schemes whose gain ``name:gain=g`` overrides, and the initializer each then uses on every weight.
GAINS = {"orthogonal": Orthogonal, "xavier_uniform": XavierUniform, "xavier_normal": XavierNormal,
         "hadamard": Hadamard}  # fmt: skip


def parse_init(spec: str) -> tuple[str, Scheme]:
    """``"orthogonal"`` or ``"orthogonal:gain=1.667"`` -> (label, scheme); a ValueError lists the valid forms.

    Example:
        >>> parse_init("orthogonal:gain=1.667")[0]
        'orthogonal:gain=1.667'
    """
    if not isinstance(spec, str):
        raise TypeError(f"init must be a str; got {type(spec).__name__}")
    name, _, option = spec.partition(":")
    if name not in SCHEMES:
        raise ValueError(f"unknown init {name!r}; choose from {', '.join(SCHEMES)} (a gain: NAME:gain=G for "
                         f"{', '.join(GAINS)})")
    if not option:
        return spec, SCHEMES[name]
    key, _, value = option.partition("=")
    if key != "gain" or name not in GAINS:
        raise ValueError(f"init {spec!r}: only a gain can be set, as NAME:gain=G, for {', '.join(GAINS)}")
    try:
        gain = float(value)
    except ValueError:
        raise ValueError(f"init {spec!r}: gain must be a number; got {value!r}") from None
    if not math.isfinite(gain) or not 0 < gain <= MAX_GAIN:
        raise ValueError(f"init {spec!r}: gain must be a positive number up to {MAX_GAIN:g}; got {value!r}")
    return spec, Scheme(f"{GAINS[name].__name__}(gain={gain:g}) on every weight, biases 0",
                        every_weight(GAINS[name](gain=gain)))


def load_data(data: str = "digits") -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x_train, y_train, x_test, y_test)`` of ``data``: float32 features (standardized on the training split)."""
    if data not in DATASETS:
        raise ValueError(f"data must be one of {', '.join(DATASETS)}; got {data!r}")
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise ImportError("--data digits needs scikit-learn: pip install 'torchinit[train]'") from None
    digits = load_digits()
    x_tr, x_te, y_tr, y_te = train_test_split(digits.data, digits.target, test_size=0.25, stratify=digits.target,
                                              random_state=0)
    x_tr, x_te = torch.tensor(x_tr, dtype=torch.float32), torch.tensor(x_te, dtype=torch.float32)
    mean, std = x_tr.mean(0), x_tr.std(0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return (x_tr - mean) / std, torch.tensor(y_tr), (x_te - mean) / std, torch.tensor(y_te)


class _Images(nn.Module):
    """Reshape 64 features to a 1x8x8 image, then ``body``."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x.view(-1, 1, 8, 8))


def build_model(model: str = "mlp-tanh", depth: int = 16, width: int = 64, classes: int = 10) -> nn.Module:
    """A fresh model of kind ``model`` (see the module docstring) for 64 input features.

    Example:
        >>> build_model("cnn", depth=2)(torch.zeros(3, 64)).shape
        torch.Size([3, 10])
    """
    depth, width = positive_int("depth", depth), positive_int("width", width)
    if depth > MAX_DEPTH:
        raise ValueError(f"depth must be at most {MAX_DEPTH}; got {depth}")
    if model == "resmlp" and width != 64:
        raise ValueError(f"width: resmlp has fixed widths 64 -> 128 -> 64 -> 32 (width applies to mlp-tanh, mlp-relu "
                         f"and cnn); got {width}")
    if model in ("mlp-tanh", "mlp-relu"):
        act = nn.Tanh if model == "mlp-tanh" else nn.ReLU
        layers: list[nn.Module] = [nn.Linear(64, width), act()]
        for _ in range(depth):
            layers += [nn.Linear(width, width), act()]
        return nn.Sequential(*layers, nn.Linear(width, classes))
    if model == "resmlp":
        return ResidualMLP(widths=(64, 128, 64, 32), depth=depth, out_features=classes)
    if model == "cnn":
        convs: list[nn.Module] = [nn.Conv2d(1, width, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 1):
            convs += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        return _Images(nn.Sequential(*convs, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes)))
    raise ValueError(f"model must be one of {', '.join(MODELS)}; got {model!r}")


def check(model: str, depth: int, inits: Sequence[str], width: int = 64) -> dict[str, Scheme]:
    """Validate a run before any training: the model, and every scheme applied once to a fresh model of that kind.

    Returns the schemes by label (duplicates once). A scheme that does not apply to the model
    (``fixup`` without residual blocks) or whose setting cannot be used (a gain that
    overflows float32) is a ValueError naming it.
    """
    if model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}; got {model!r}")
    if isinstance(inits, str) or not isinstance(inits, Sequence) or not inits:
        raise ValueError("inits must be a non-empty list of scheme names")
    schemes = dict(parse_init(spec) for spec in inits)
    with private_random():  # the models' construction draws from a private copy of the global generator
        for label, scheme in schemes.items():
            net = build_model(model, depth, width)
            try:
                scheme.apply(net, torch.zeros(8, 64), torch.Generator().manual_seed(0))
            except (ValueError, TypeError) as err:
                raise ValueError(f"init {label!r} on {model}: {err}") from None
    return schemes


def _run(scheme: Scheme, model: str, depth: int, width: int, seed: int, steps: int, lr: float, batch: int,
         data: tuple[Tensor, Tensor, Tensor, Tensor], bar: Progress) -> dict[str, Any]:
    x_tr, y_tr, x_te, y_te = data
    with private_random(seed=seed):  # the numbers torch.manual_seed(seed) gives, without touching the global RNG
        net = build_model(model, depth, width)
        scheme.apply(net, x_tr[:256], torch.Generator().manual_seed(seed))
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    batches = torch.Generator().manual_seed(seed)
    curve: list[float] = []
    order = torch.randperm(len(x_tr), generator=batches)
    position = 0
    for _ in range(steps):
        if position + batch > len(order):
            order, position = torch.randperm(len(x_tr), generator=batches), 0
        idx = order[position:position + batch]
        position += batch
        loss = nn.functional.cross_entropy(net(x_tr[idx]), y_tr[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        curve.append(float(loss.detach()))
        bar.step(f"seed {seed}")
    with torch.no_grad():
        logits = net(x_te)
        # a diverged network has no accuracy (argmax of NaNs would say class 0: "chance")
        accuracy = float((logits.argmax(1) == y_te).float().mean()) if bool(torch.isfinite(logits).all()) else None
    first = curve[0] if curve else math.nan
    halved = next((i + 1 for i, v in enumerate(curve) if math.isfinite(v) and v <= first / 2), None) \
        if math.isfinite(first) else None  # fmt: skip
    final = curve[-1] if curve else math.nan
    return {"test_acc": accuracy, "final_loss": final if math.isfinite(final) else None, "steps_to_half": halved,
            "loss_curve": [v if math.isfinite(v) else None for v in curve]}


def train(
    model: str = "mlp-tanh",
    depth: int = 16,
    inits: Sequence[str] = ("default", "orthogonal"),
    *,
    data: str = "digits",
    seeds: int = 3,
    steps: int = 300,
    lr: float = 1e-3,
    batch: int = 128,
    width: int = 64,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train ``model`` under each scheme in ``inits`` for ``seeds`` seeds; the numbers ``torchinit train`` prints.

    Returns ``{"data", "model", "depth", "width", "steps", "lr", "batch", "seeds", "schemes": {label:
    {"description", "test_acc": [one per seed], "final_loss": [...], "steps_to_half": [...],
    "loss_curve": [[one per step] per seed]}}}``; a loss that is not finite is None, and
    ``steps_to_half`` is None when the loss never halved. Defaults: ``mlp-tanh``, depth
    16, default and orthogonal, 3 seeds, 300 steps of Adam (lr 1e-3, batch 128), width 64.
    ``progress``: progress on stderr (None: a bar redrawn per step on a terminal, a line per tenth of the work
    elsewhere; False: none).

    Example:
        >>> r = train("mlp-relu", 1, ["default"], seeds=1, steps=2, progress=False)
        >>> sorted(r["schemes"]["default"])
        ['description', 'final_loss', 'loss_curve', 'steps_to_half', 'test_acc']
    """
    if model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}; got {model!r}")
    depth, seeds, steps = positive_int("depth", depth), positive_int("seeds", seeds), positive_int("steps", steps)
    batch, width = positive_int("batch", batch), positive_int("width", width)
    lr = _checked_lr(lr)
    if progress is not None and not isinstance(progress, bool):
        raise TypeError(f"progress must be a bool or None; got {type(progress).__name__}")
    schemes = check(model, depth, inits, width)
    return run_checked(schemes, model, depth, data=data, seeds=seeds, steps=steps, lr=lr, batch=batch, width=width,
                       progress=progress)


def run_checked(schemes: dict[str, Scheme], model: str, depth: int, *, data: str, seeds: int, steps: int, lr: float,
                batch: int, width: int, progress: bool | None) -> dict[str, Any]:
    """:func:`train` after :func:`check` (the command line checks first, and once)."""
    tensors = load_data(data)
    result: dict[str, Any] = {"data": data, "model": model, "depth": depth, "width": width, "steps": steps,
                              "lr": lr, "batch": batch, "seeds": seeds, "schemes": {}}
    runs = [(label, seed) for label in schemes for seed in range(seeds)]
    # per step on a terminal, a line per tenth of the work elsewhere (a log, CI)
    with Progress(len(runs) * steps, f"torchinit train {model} depth {depth}", enabled=progress,
                  periodic=True) as bar:  # fmt: skip
        for label, seed in runs:
            one = _run(schemes[label], model, depth, width, seed, steps, lr, batch, tensors, bar)
            entry = result["schemes"].setdefault(label, {"description": schemes[label].description, "test_acc": [],
                                                         "final_loss": [], "steps_to_half": [], "loss_curve": []})
            for key in ("test_acc", "final_loss", "steps_to_half", "loss_curve"):
                entry[key].append(one[key])
    return result


def _checked_lr(lr: float) -> float:
    """``lr`` as a float, once it is known to be a positive real number up to :data:`MAX_LR`."""
    if not (is_real(lr) and math.isfinite(lr) and 0 < lr <= MAX_LR):
        raise ValueError(f"lr must be a positive number up to {MAX_LR:g}; got {lr!r}")
    return float(lr)


def _mean_std(values: list[float | None]) -> str:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return "—"
    mean = statistics.fmean(finite)
    spread = statistics.stdev(finite) if len(finite) > 1 else 0.0
    text = f"{mean:.3f} ± {spread:.3f}" if abs(mean) < 1e4 else f"{mean:.3g} ± {spread:.3g}"
    return text + ("" if len(finite) == len(values) else f" ({len(finite)}/{len(values)})")


def summarize(result: dict[str, Any]) -> list[list[str]]:
    """Rows of the table ``torchinit train`` prints: scheme, test accuracy, final loss, steps until the loss halved
    (the median over the seeds where it halved; for an even count the lower of the two middle values, a step that
    happened)."""
    rows = []
    for label, entry in result["schemes"].items():
        halved = [v for v in entry["steps_to_half"] if v is not None]
        steps = str(statistics.median_low(halved)) if halved else "never"  # a step count: the lower middle one
        if halved and len(halved) < len(entry["steps_to_half"]):
            steps += f" ({len(halved)}/{len(entry['steps_to_half'])})"
        rows.append([label, _mean_std(entry["test_acc"]), _mean_std(entry["final_loss"]), steps])
    return rows


def plot_training(result: dict[str, Any], path: str) -> None:
    """The loss curves (mean over the seeds, log scale) and the test accuracies (mean and each seed) of a train run."""
    fig = figure(figsize=(11, 4))
    left, right = fig.subplots(1, 2)
    labels = list(result["schemes"])
    for label in labels:
        curves = result["schemes"][label]["loss_curve"]
        # the mean over the seeds whose loss is finite at that step (a diverged seed does not hide the others)
        mean = [sum(v for v in col if v is not None) / max(1, sum(v is not None for v in col)) if any(
            v is not None for v in col) else math.nan for col in zip(*curves)]  # fmt: skip
        left.plot(range(1, len(mean) + 1), mean, label=label)
    left.set_yscale("log")
    left.set_xlabel("Adam step")
    left.set_ylabel("training loss (mean over seeds)")
    left.legend(fontsize=8)
    for i, label in enumerate(labels):
        accs = [a for a in result["schemes"][label]["test_acc"] if a is not None]  # diverged seeds have none
        right.bar(i, sum(accs) / len(accs) if accs else 0.0, color=f"C{i}", alpha=0.6)
        right.scatter([i] * len(accs), accs, color="black", s=10, zorder=3)
    right.axhline(0.1, color="gray", linestyle=":", label="chance")
    right.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    right.set_ylabel("test accuracy")
    right.set_ylim(0, 1)
    right.legend(fontsize=8)
    fig.suptitle(f"{result['model']}, depth {result['depth']}, {result['data']}: {result['seeds']} seeds, "
                 f"{result['steps']} steps")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
