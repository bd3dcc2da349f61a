"""LSUV: layer-sequential unit-variance initialization (Mishkin & Matas, "All you need is a good init", ICLR 2016).

Data-dependent: after an (optional) orthogonal init, every Linear and conv layer, in
the order the forward pass runs them, has its weight rescaled until the std of its
output on a batch is within ``tol`` of the target.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from torchinit._util.checks import finite, positive_int
from torchinit._util.progress import Progress
from torchinit._util.tensors import keeps_thread_modes
from torchinit._util.text import text_table
from torchinit._util.warn import warn
from torchinit.diagnostics.probing import copy_inputs, first_tensor, private_random, warn_global_draws
from torchinit.model.snapshot import Snapshot
from torchinit.rng.sampling import make_sampler
from torchinit.rng.seeds import derive_seed, stream_generator
from torchinit.schemes.structured import orthogonal_

__all__ = ["lsuv_", "LSUVReport", "LSUVRow"]

#: Layers LSUV rescales.
LSUV_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)
#: One of them.
Layer = nn.Linear | nn.modules.conv._ConvNd
#: With progress=None, a progress bar is shown on a terminal for models with at least this many layers.
PROGRESS_MIN_LAYERS = 32


@dataclass
class LSUVRow:
    """One layer: how many forward measurements it took, the final output std, whether it met the tolerance."""

    name: str
    iterations: int
    std: float
    converged: bool


class LSUVReport:
    """What :func:`lsuv_` did, one row per layer in execution order; ``str()`` is a table."""

    def __init__(self, rows: list[LSUVRow], target_std: float, tol: float) -> None:
        self.rows, self.target_std, self.tol = rows, target_std, tol

    @property
    def not_converged(self) -> list[str]:
        return [r.name for r in self.rows if not r.converged]

    def __str__(self) -> str:
        header = ("layer", "iterations", "output std", "converged")
        body = [(r.name, str(r.iterations), f"{r.std:.4f}", "yes" if r.converged else "NO") for r in self.rows]
        footer = f"target std {self.target_std} ± {self.tol}; {len(self.not_converged)} layer(s) not converged"
        return text_table(header, body, numeric={1, 2}) + "\n" + footer


class _Stop(Exception):
    """Raised by the measuring hook to end the forward pass once the layer's output is known."""


def _run(model: nn.Module, data: Any) -> None:
    data = copy_inputs(data)  # a forward pass writing into its input spares the caller's batch and the next pass
    with torch.no_grad():
        model(*data) if isinstance(data, (tuple, list)) else model(data)


_M = TypeVar("_M", bound=nn.Module)


def _execution_order(model: nn.Module, layers: Sequence[tuple[str, _M]], data: Any) -> list[tuple[str, _M]]:
    """The layers in the order of their first call in one forward pass (layers never called are dropped)."""
    order: list[tuple[str, _M]] = []
    seen: set[int] = set()
    handles = []
    for name, layer in layers:
        def hook(module: nn.Module, *_: Any, name: str = name, layer: _M = layer) -> None:
            if id(module) not in seen:
                seen.add(id(module))
                order.append((name, layer))

        handles.append(layer.register_forward_hook(hook))
    try:
        _run(model, data)
    finally:
        for h in handles:
            h.remove()
    return order


def _output_std(model: nn.Module, layer: nn.Module, data: Any) -> float:
    """The std of ``layer``'s output at its first call, stopping the forward pass there."""
    found: list[float] = []

    def hook(module: nn.Module, _inputs: Any, output: Any) -> None:
        out = first_tensor(output)
        found.append(float(out.detach().float().std()) if out is not None and out.numel() > 1 else math.nan)
        raise _Stop

    handle = layer.register_forward_hook(hook)
    try:
        _run(model, data)
    except _Stop:
        pass
    finally:
        handle.remove()
    return found[0] if found else math.nan


@keeps_thread_modes
def lsuv_(
    model: nn.Module,
    data: Any,
    *,
    target_std: float = 1.0,
    tol: float = 0.02,
    max_iter: int = 10,
    orthogonal_first: bool = True,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    progress: bool | None = None,
) -> LSUVReport:
    r"""Layer-sequential unit-variance init (Mishkin & Matas, ICLR 2016), in place.

    1. With ``orthogonal_first`` (default), every Linear/conv weight gets :func:`orthogonal_`
       (from ``generator``, one stream per parameter name, as a :class:`~torchinit.Policy` does).
    2. In execution order (found by one forward pass, not registration order), each layer's
       weight is multiplied by :math:`\text{target\_std} / \sigma` where :math:`\sigma` is the std
       of the layer's output on ``data``, until :math:`|\sigma - \text{target\_std}| \le \text{tol}`
       or ``max_iter`` measurements were made. Each measurement is a forward pass that stops
       at that layer. A layer called several times (shared) is measured at its first call.

    The mean is not corrected: :math:`\sigma` is the std about the output's own mean, and
    biases are left alone (the paper rescales weights only). Because a bias is not scaled
    with the weight, a layer whose output is dominated by its bias may not converge; a
    warning names it. Forward passes run in eval mode (no dropout, BatchNorm uses its
    running statistics, which are not updated) on a copy of ``data`` each (the caller's
    batch is never written). Nothing is kept between calls.

    Only the Linear/conv weights change. Everything else the forward passes touch is put
    back bit for bit afterwards: every module's train/eval mode, the other parameters and
    the buffers (an ``Embedding(max_norm=...)`` weight renormalized in place, a counter
    buffer or attribute a forward pass reassigns), ``.grad``, hooks, and ``torch.Generator``
    attributes of the modules. Changes made by one forward pass are seen by the next (the
    restoring happens once, at the end). If anything raises or interrupts it (the exception
    propagates), the model is left exactly as it was found, weights included, and
    ``generator`` is rewound. The price is one copy of the
    model's parameters and buffers held during the call. Refused up front (``model``):
    TorchScript modules and uninitialized (lazy) parameters; not restored: state outside
    the module tree (globals, objects the forward pass closes over).

    Random numbers: the orthogonal start draws from ``generator`` (one number, the base of
    the per-name streams), from the keyed stream of ``seed``, or, when both are None, from
    the global RNG, which it advances as :func:`orthogonal_` would, and which stays advanced
    even if the call then fails (setting a global generator back would rewind other
    threads' draws). The forward passes run under
    :class:`~torchinit.diagnostics.probing.private_random`: their torch random operations
    draw from a private copy of the global state (in eval mode there are usually none), so
    they neither advance nor set torch's global generators; draws it cannot redirect (see
    there) advance their own stream, as a plain forward pass would, and torch operations
    among them are named in a warning. lsuv_ never sets a global generator.

    Args:
        model: the model, initialized in place.
        data: a batch: a tensor or a tuple of positional arguments.
        target_std: the output std to reach (default 1).
        tol: the allowed absolute deviation from ``target_std`` (default 0.02).
        max_iter: the most forward measurements per layer (default 10).
        orthogonal_first: start from orthogonal weights (default True).
        generator: the seed of the orthogonal pre-init.
        seed: the orthogonal pre-init from the keyed stream instead (not with ``generator``):
            layer ``n``'s weight gets ``orthogonal_(w, seed=seed, name="n.weight")``.
        progress: a progress bar on stderr; None (default): on a terminal, for models with
            at least 32 layers.

    Returns:
        An :class:`LSUVReport` (per layer: iterations, final std, converged).

    Example:
        >>> model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(inplace=True), nn.Linear(64, 8))
        >>> report = lsuv_(model, torch.randn(256, 32), generator=torch.Generator().manual_seed(0))
        >>> all(abs(r.std - 1.0) <= 0.02 for r in report.rows)
        True
    """
    target_std, tol, max_iter = _checked(model, target_std, tol, max_iter, generator, seed)
    layers: list[tuple[str, Layer]] = [(n, m) for n, m in model.named_modules()
                                       if isinstance(m, LSUV_LAYERS) and m.weight is not None]  # fmt: skip
    # refuses up front what it could not restore; on success, the weights LSUV writes stay written
    with Snapshot.everything(model, keep=[layer.weight for _, layer in layers],
                             generators=[generator] if generator is not None else []) as snapshot:  # fmt: skip
        if orthogonal_first:
            _orthogonal_start(layers, generator, seed)
        snapshot.mark_rng()  # generator's orthogonal draws stand on success; module generators come back
        model.eval()
        with private_random() as rng:  # the forward passes' own draws leave the global generators alone
            rows = _fit_in_order(model, layers, data, target_std, tol, max_iter, progress)
    warn_global_draws("lsuv_", rng)
    report = LSUVReport(rows, target_std, tol)
    if report.not_converged:
        warn(
            f"lsuv_: {len(report.not_converged)} layer(s) did not reach std {target_std} ± {tol} in {max_iter} "
            f"iterations: {', '.join(report.not_converged)}",
            UserWarning,
        )
    return report


def _checked(model: nn.Module, target_std: float, tol: float, max_iter: int, generator: torch.Generator | None,
             seed: int | None) -> tuple[float, float, int]:  # fmt: skip
    """``target_std``, ``tol`` and ``max_iter`` as numbers, once every argument of :func:`lsuv_` is known good."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module; got {type(model).__name__}")
    target_std = finite("target_std", target_std)
    tol = finite("tol", tol)
    if target_std <= 0 or tol <= 0:
        raise ValueError(f"target_std and tol must be > 0; got target_std={target_std}, tol={tol}")
    max_iter = positive_int("max_iter", max_iter)
    make_sampler(generator, seed)  # types; not both
    return target_std, tol, max_iter


def _orthogonal_start(layers: list[tuple[str, Layer]], generator: torch.Generator | None, seed: int | None) -> None:
    """Every weight from :func:`orthogonal_`: one stream of ``generator`` per parameter name, or the keyed ``seed``."""
    with torch.no_grad():
        base_seed = derive_seed(generator)
        for name, layer in layers:
            if seed is not None:
                orthogonal_(layer.weight, seed=seed, name=f"{name}.weight")
            else:
                orthogonal_(layer.weight, generator=stream_generator(base_seed, f"{name}.weight", layer.weight.device))


def _fit_in_order(model: nn.Module, layers: list[tuple[str, Layer]], data: Any, target: float, tol: float,
                  max_iter: int, progress: bool | None) -> list[LSUVRow]:  # fmt: skip
    """Fit every layer, in execution order; ``progress``: a progress bar (None: on a terminal, for many layers)."""
    order = _execution_order(model, layers, data)
    show = progress if progress is not None else (None if len(order) >= PROGRESS_MIN_LAYERS else False)
    rows = []
    with torch.no_grad(), Progress(len(order), "lsuv_", enabled=show) as bar:
        for name, layer in order:
            rows.append(_fit_layer(model, name, layer, data, target, tol, max_iter))
            bar.step(name)
    return rows


def _fit_layer(model: nn.Module, name: str, layer: Layer, data: Any, target: float, tol: float,
               max_iter: int) -> LSUVRow:  # fmt: skip
    std = math.nan
    for iteration in range(1, max_iter + 1):
        std = _output_std(model, layer, data)
        if abs(std - target) <= tol:
            return LSUVRow(name, iteration, std, True)
        if not math.isfinite(std) or std == 0:
            break  # nothing to rescale
        if iteration < max_iter:
            layer.weight.mul_(target / std)
    return LSUVRow(name, iteration, std, False)

