"""See the signal: per-layer forward and backward statistics, and the input-output Jacobian spectrum.

:func:`probe` runs one forward and one backward pass and records, for every module
that owns parameters, in execution order: the output's mean and std, the std of the
gradient of the loss with respect to that output, the weight's std and its fans.
:func:`jacobian_spectrum` gives the singular values of a small model's input-output
Jacobian, the quantity dynamical isometry asks to be all ones (Saxe et al., 2014;
Pennington et al., 2017).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn

from torchinit._util.tensors import keeps_thread_modes
from torchinit._util.text import text_table
from torchinit._util.warn import warn
from torchinit.diagnostics.plots import PLOT_HINT, colors, figure
from torchinit.model.snapshot import Snapshot
from torchinit.rng.private import private_random
from torchinit.schemes.layout import fans

__all__ = [
    "probe", "SignalReport", "jacobian_spectrum", "first_tensor", "copy_inputs", "private_random", "PLOT_HINT",
]  # fmt: skip

#: A loss: the model's output -> a scalar tensor.
Loss = Callable[[Any], Tensor]


def first_tensor(output: Any) -> Tensor | None:
    """The first floating-point tensor of a module's output (a tensor, or a tuple/list/dict holding tensors)."""
    if isinstance(output, Tensor):
        return output if output.dtype.is_floating_point else None
    items = output.values() if isinstance(output, dict) else output if isinstance(output, (tuple, list)) else ()
    for item in items:
        found = first_tensor(item)
        if found is not None:
            return found
    return None


def _replace_first(output: Any, new: Tensor) -> Any:
    """``output`` with its first floating-point tensor replaced by ``new`` (same container type)."""
    if isinstance(output, Tensor):
        return new
    if isinstance(output, (tuple, list)):
        items, done = [], False
        for item in output:
            if not done and first_tensor(item) is not None:
                item, done = _replace_first(item, new), True
            items.append(item)
        return type(output)(items) if not hasattr(output, "_fields") else type(output)(*items)
    return output


class _Tap(torch.autograd.Function):
    """Identity on the way forward (a copy, so later in-place ops are safe); records the gradient's std."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, sink: list[float]) -> Tensor:
        ctx.sink = sink
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        ctx.sink.append(_std(grad))
        return grad, None


def _std(t: Tensor) -> float:
    t = t.detach()
    return float(t.float().std()) if t.numel() > 1 else math.nan


def _mean(t: Tensor) -> float:
    return float(t.detach().float().mean()) if t.numel() else math.nan


def _fans(module: nn.Module) -> tuple[int | None, int | None]:
    try:
        f = fans(module)
    except (TypeError, ValueError):
        weight = getattr(module, "weight", None)
        if not isinstance(weight, Tensor) or weight.dim() < 2:
            return None, None
        f = fans(weight)
    return f.fan_in, f.fan_out


class SignalReport:
    """Per-layer statistics of one forward and one backward pass (see :func:`probe`).

    ``rows`` is a list of dicts, one per call of a module that owns parameters, in
    execution order, with the keys ``name`` (from ``model.named_modules()``), ``call``
    (1 for the first call of that module, 2 for the second, ...), ``type``,
    ``output_shape``, ``act_mean``, ``act_std``, ``grad_std`` (of the loss's gradient
    with respect to the output), ``weight_std``, ``fan_in`` and ``fan_out``.
    ``output_std``, ``input_grad_std`` and ``input_grad_norm`` describe the model's
    output and the gradient at its (first floating-point) input. ``str(report)`` is a table; ``report.plot(path)``
    draws the activation and gradient std by depth.
    """

    def __init__(self, rows: list[dict[str, Any]], output_std: float, input_grad: Tensor | None, loss: float) -> None:
        self.rows = rows
        self.output_std = output_std
        self.input_grad_std = _std(input_grad) if input_grad is not None else math.nan
        self.input_grad_norm = float(input_grad.norm()) if input_grad is not None else math.nan
        self.loss = loss

    def __len__(self) -> int:
        return len(self.rows)

    def table(self, rows: Sequence[int] | None = None) -> str:
        """The table; ``rows`` selects row indices (all by default)."""
        header = ("#", "layer", "type", "output shape", "act mean", "act std", "grad std", "weight std",
                  "fan_in", "fan_out")  # fmt: skip
        chosen = range(len(self.rows)) if rows is None else rows
        body = []
        for i in chosen:
            r = self.rows[i]
            name = r["name"] + (f" (call {r['call']})" if r["call"] > 1 else "")
            body.append((str(i), name, r["type"], "×".join(map(str, r["output_shape"])), _fmt(r["act_mean"]),
                         _fmt(r["act_std"]), _fmt(r["grad_std"]), _fmt(r["weight_std"]),
                         "—" if r["fan_in"] is None else str(r["fan_in"]),
                         "—" if r["fan_out"] is None else str(r["fan_out"])))  # fmt: skip
        return text_table(header, body, numeric={0, *range(4, 10)})

    def __str__(self) -> str:
        return (
            self.table()
            + f"\noutput std {_fmt(self.output_std)}; gradient std at the input {_fmt(self.input_grad_std)}; "
            f"loss {_fmt(self.loss)}"
        )

    def plot(self, path: str, *, title: str | None = None) -> None:
        """Write a PNG: activation std and gradient std by depth, on log axes (needs matplotlib)."""
        plot_reports({"": self}, path, title=title)


def _fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:.3e}" if v != 0 and (abs(v) >= 1e4 or abs(v) < 1e-3) else f"{v:.4f}"


def plot_reports(reports: dict[str, SignalReport], path: str, *, title: str | None = None) -> None:
    """One figure, two panels (activation std, gradient std by depth, log y), one line per report."""
    fig = figure(figsize=(12.5 if len(reports) > 1 else 11, 4.2))
    axes = fig.subplots(1, 2)
    palette = colors("tab20")  # 20 distinct colors, the strong ones first
    for i, (label, report) in enumerate(reports.items()):
        depth = range(len(report.rows))
        style = {"color": palette[i % 20], "ls": "-" if i % 2 == 0 else "--"}
        for ax, key in zip(axes, ("act_std", "grad_std")):
            values = [r[key] if r[key] and r[key] > 0 else math.nan for r in report.rows]
            ax.plot(depth, values, label=label or None, lw=1.5, marker="." if len(values) < 40 else None, **style)
    for ax, what in zip(axes, ("activation std (layer output)", "gradient std (d loss / d output)")):
        ax.set_yscale("log")
        ax.set_xlabel("layer, in execution order")
        ax.set_title(what, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    if any(reports):
        axes[1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _as_args(inputs: Any) -> tuple[Any, ...]:
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


def copy_inputs(inputs: Any) -> Any:
    """``inputs`` with every tensor (also inside tuples, lists and dicts) replaced by a detached copy.

    So a forward pass that writes into its input (``x.relu_()``) leaves the caller's
    batch alone, and a backward pass does not fill the caller's ``.grad``.
    """
    if isinstance(inputs, Tensor):
        return inputs.detach().clone()
    if isinstance(inputs, (tuple, list)):
        items = [copy_inputs(item) for item in inputs]
        return type(inputs)(*items) if hasattr(inputs, "_fields") else type(inputs)(items)
    if type(inputs) in (dict, OrderedDict):
        return type(inputs)((k, copy_inputs(v)) for k, v in inputs.items())
    return inputs


# ---- the forward pass's own random draws ------------------------------------------------------------------------

def warn_global_draws(caller: str, rng: private_random) -> None:
    """Warn, naming them, if operations of ``caller``'s forward passes drew from a global generator."""
    if rng.global_draws:
        warn(f"{caller}: {', '.join(sorted(rng.global_draws))} took no private generator, so the model's draws "
             "there came from the global RNG, which they advanced (as a plain forward pass would); its other "
             "random operations drew from a private copy", UserWarning)  # fmt: skip


@keeps_thread_modes
def probe(model: nn.Module, inputs: Any, *, loss: Loss | None = None) -> SignalReport:
    """One forward and one backward pass with hooks on every module that owns parameters.

    ``inputs`` is a tensor or a tuple of positional arguments; its tensors are copied
    (the caller's are never written, nor their ``.grad``) and the floating-point ones
    among the positional arguments are made to require gradients, so the gradient at
    the input is known. ``loss`` maps the model's output to a scalar (default:
    ``mean(output ** 2)`` over the first floating-point tensor of the output).

    Each call of a hooked module adds a row (modules called twice appear twice), in
    execution order. Outputs are tapped through an identity copy, so in-place ops that
    follow (``ReLU(inplace=True)``) are safe, and tuple outputs (LSTM, attention) are
    read from their first floating-point tensor.

    The model is left exactly as it was found, also when the pass raises or is
    interrupted (the exception propagates): hooks removed, every parameter's ``.grad``
    restored (None stays None), train/eval modes, parameters and buffers bit for bit
    (BatchNorm running statistics, an ``Embedding(max_norm=...)`` weight renormalized
    in place), buffers and attributes the forward pass reassigns (``self.steps += 1``)
    and ``torch.Generator`` attributes of the modules. The price is one copy of the
    model's parameters and buffers (and of ``inputs``) held during the call.

    Random numbers: probe draws none itself, and never sets a global generator, so a
    thread drawing at the same time is never rewound. The forward and backward passes run
    under :class:`private_random`: torch's random operations on CPU and CUDA tensors
    (dropout in train mode, ``torch.rand``, ``randn_like``, ...) draw from a private copy
    of the global generator's state at the call, so the masks are those a plain forward
    pass would draw now, and the global torch generators do not advance. Draws that
    cannot be redirected advance the stream they come from, as a plain forward pass
    would: Python's ``random`` and NumPy's, and torch operations that take no generator
    (fused CUDA attention or cuDNN RNNs with dropout; a warning names them).

    Out of reach, hence not restored: state outside the module tree (globals, objects
    the forward pass closes over, a stateful ``loss``) and the inner state of non-tensor
    objects held in attributes. Refused up front: TorchScript modules (``TypeError``) and
    uninitialized (lazy) parameters (``ValueError``), both naming ``model``.

    Example:
        >>> model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(32, 4))
        >>> x = torch.randn(64, 16)
        >>> rng = torch.get_rng_state()
        >>> report = probe(model, x)  # in train mode: dropout draws, from a private copy of the global stream
        >>> [r["name"] for r in report.rows], model[0].weight.grad is None, torch.equal(torch.get_rng_state(), rng)
        (['0', '3'], True, True)
    """
    if loss is not None and not callable(loss):
        raise TypeError(f"loss must be a callable (output -> scalar tensor) or None; got {type(loss).__name__}")
    loss = loss if loss is not None else _mean_square
    recorder = _Recorder()
    # refuses what it could not restore, before anything runs; .grad is set aside (None inside), and everything
    # is put back on the way out; the passes' random draws come from private generators
    with Snapshot.everything(model), private_random() as rng:
        args = tuple(a.requires_grad_(True) if isinstance(a, Tensor) and a.dtype.is_floating_point else a
                     for a in _as_args(copy_inputs(inputs)))  # fmt: skip
        with recorder.hooked(model):
            output = model(*args)
            out = first_tensor(output)
            if out is None:
                raise TypeError("model output has no floating-point tensor to probe")
            value = loss(output)
            if not isinstance(value, Tensor) or value.numel() != 1:
                raise TypeError("loss must return a scalar tensor")
            if value.requires_grad:
                value.backward()
    warn_global_draws("probe", rng)
    first_input = next((a for a in args if isinstance(a, Tensor) and a.grad is not None), None)
    input_grad = first_input.grad if first_input is not None else None
    return SignalReport(recorder.finished_rows(), _std(out), input_grad, float(value.detach()))


def _mean_square(output: Any) -> Tensor:
    """The default loss of :func:`probe`: ``mean(out ** 2)`` over the output's first floating-point tensor."""
    return cast(Tensor, first_tensor(output)).float().pow(2).mean()  # probe made sure there is one


class _Recorder:
    """The forward hooks of :func:`probe`: a row per call of a module that owns parameters, and its gradient's tap."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.sinks: list[list[float]] = []
        self.calls: dict[str, int] = {}

    @contextlib.contextmanager
    def hooked(self, model: nn.Module) -> Iterator[None]:
        """Hook every module of ``model`` that owns parameters for the block; the hooks are removed on the way out."""
        owners = [(name, m) for name, m in model.named_modules() if next(m.parameters(recurse=False), None) is not None]
        handles = []
        try:
            for name, module in owners:
                handles.append(module.register_forward_hook(functools.partial(self.record, name)))
            yield
        finally:
            for h in handles:
                h.remove()

    def record(self, name: str, module: nn.Module, _inputs: Any, output: Any) -> Any:
        """Add the row of this call of ``module``; tap its output, so the backward pass reports the gradient's std."""
        out = first_tensor(output)
        if out is None:
            return None
        self.calls[name] = self.calls.get(name, 0) + 1
        weight = getattr(module, "weight", None)
        fan_in, fan_out = _fans(module)
        self.rows.append({
            "name": name, "call": self.calls[name], "type": type(module).__name__, "output_shape": tuple(out.shape),
            "act_mean": _mean(out), "act_std": _std(out), "grad_std": math.nan,
            "weight_std": _std(weight) if isinstance(weight, Tensor) else None,
            "fan_in": fan_in, "fan_out": fan_out,
        })  # fmt: skip
        sink: list[float] = []
        self.sinks.append(sink)
        if out.requires_grad:
            return _replace_first(output, _Tap.apply(out, sink))
        return None

    def finished_rows(self) -> list[dict[str, Any]]:
        """The rows, with the gradient's std that the backward pass reported (NaN where none did)."""
        for row, sink in zip(self.rows, self.sinks):
            row["grad_std"] = sink[0] if sink else math.nan
        return self.rows


@keeps_thread_modes
def jacobian_spectrum(model: nn.Module, x: Tensor) -> Tensor:
    """Singular values (descending, float64) of the Jacobian of ``model`` at ``x``: d vec(model(x)) / d vec(x).

    Meant for small models and one sample (``x`` with a batch of 1): the Jacobian has
    ``numel(output) x numel(x)`` entries. All ones means the model is an isometry at
    ``x`` (dynamical isometry). The model's mode is not changed (in train mode, BatchNorm
    normalizes by the batch's own statistics and dropout draws a mask), and the model is
    left exactly as it was found, also on an exception, as :func:`probe` leaves it:
    parameters and buffers bit for bit (BatchNorm's running statistics and
    ``num_batches_tracked`` are not updated; an ``Embedding(max_norm=...)`` weight that
    the forward pass renormalizes in place comes back as it was), ``.grad``, reassigned
    attributes and generators held by modules; its random draws come from private copies
    of the global generators, never advancing nor setting them (as in :func:`probe`). The price is one copy of the
    parameters and buffers (and of ``x``) held during the call. TorchScript and
    uninitialized (lazy) models are refused (``model``: ``TypeError``/``ValueError``).

    Example:
        >>> jacobian_spectrum(nn.Linear(3, 3, bias=False).requires_grad_(False).eval(), torch.randn(1, 3)).shape
        torch.Size([3])
        >>> bn = nn.BatchNorm1d(3).train()
        >>> sv = jacobian_spectrum(bn, torch.randn(4, 3))  # a 12 x 12 Jacobian, in train mode
        >>> int(bn.num_batches_tracked), bool((bn.running_mean == 0).all()), bn.training
        (0, True, True)
    """
    if not isinstance(x, Tensor) or not x.dtype.is_floating_point:
        raise TypeError("x must be a floating-point tensor")

    def flat_output(inp: Tensor) -> Tensor:
        out = first_tensor(model(inp))
        if out is None:
            raise TypeError("model output has no floating-point tensor")
        return out.reshape(-1)

    # refuses what it could not restore; puts everything back on the way out; private random draws
    with Snapshot.everything(model), private_random() as rng:
        jac = torch.autograd.functional.jacobian(flat_output, x.detach().clone())
    warn_global_draws("jacobian_spectrum", rng)
    out_numel = jac.shape[0] if jac.dim() else 1
    return torch.linalg.svdvals(jac.reshape(out_numel, -1).double())
