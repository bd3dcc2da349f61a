"""See the signal: per-layer forward and backward statistics, and the input-output Jacobian spectrum.

:func:`probe` runs one forward and one backward pass and records, for every module
that owns parameters, in execution order: the output's mean and std, the std of the
gradient of the loss with respect to that output, the weight's std and its fans.
:func:`jacobian_spectrum` gives the singular values of a small model's input-output
Jacobian, the quantity dynamical isometry asks to be all ones (Saxe et al., 2014;
Pennington et al., 2017).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from torchinit._text import text_table
from torchinit.fans import fans

__all__ = ["probe", "SignalReport", "jacobian_spectrum", "first_tensor", "PLOT_HINT"]

#: What to install for plots.
PLOT_HINT = "plots need matplotlib: pip install 'torchinit[plot]'"

Loss = Callable[[Any], Tensor]


def first_tensor(output: Any) -> Tensor | None:
    """The first floating-point tensor of a module's output (a tensor, or a tuple/list/dict holding tensors)."""
    if isinstance(output, Tensor):
        return output if output.is_floating_point() else None
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
    def forward(ctx: Any, x: Tensor, sink: list[float]) -> Tensor:  # type: ignore[override]
        ctx.sink = sink
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
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
    try:
        import matplotlib
    except ImportError:
        raise ModuleNotFoundError(PLOT_HINT) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12.5 if len(reports) > 1 else 11, 4.2))
    tab20 = plt.get_cmap("tab20").colors
    colors = tab20[::2] + tab20[1::2]  # 20 distinct colors, the strong ones first
    for i, (label, report) in enumerate(reports.items()):
        depth = range(len(report.rows))
        style = {"color": colors[i % 20], "ls": "-" if i % 2 == 0 else "--"}
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
    plt.close(fig)


def _as_args(inputs: Any) -> tuple[Any, ...]:
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


def probe(model: nn.Module, inputs: Any, *, loss: Loss | None = None) -> SignalReport:
    """One forward and one backward pass with hooks on every module that owns parameters.

    ``inputs`` is a tensor or a tuple of positional arguments; floating-point tensors
    are copied and made to require gradients, so the gradient at the input is known.
    ``loss`` maps the model's output to a scalar (default: ``mean(output ** 2)`` over the
    first floating-point tensor of the output).

    Each call of a hooked module adds a row (modules called twice appear twice), in
    execution order. Outputs are tapped through an identity copy, so in-place ops that
    follow (``ReLU(inplace=True)``) are safe, and tuple outputs (LSTM, attention) are
    read from their first floating-point tensor.

    The model is left exactly as it was found: hooks removed, every parameter's
    ``.grad`` restored (None stays None), train/eval mode untouched, parameters and
    buffers (BatchNorm running statistics) unchanged.

    Example:
        >>> model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(inplace=True), nn.Linear(32, 4))
        >>> report = probe(model, torch.randn(64, 16))
        >>> [r["name"] for r in report.rows], model[0].weight.grad is None
        (['0', '2'], True)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module; got {type(model).__name__}")
    args = tuple(a.detach().clone().requires_grad_(True) if isinstance(a, Tensor) and a.is_floating_point() else a
                 for a in _as_args(inputs))  # fmt: skip
    loss = loss if loss is not None else (lambda out: first_tensor(out).float().pow(2).mean())  # type: ignore[union-attr]
    owners = [(name, m) for name, m in model.named_modules() if next(m.parameters(recurse=False), None) is not None]
    grads = {id(p): p.grad for p in model.parameters()}  # set aside (not copied): backward writes fresh ones
    buffers = {id(b): b.detach().clone() for b in model.buffers()}
    rows: list[dict[str, Any]] = []
    sinks: list[list[float]] = []
    calls: dict[str, int] = {}
    handles = []

    def hook_for(name: str) -> Callable[..., Any]:
        def hook(module: nn.Module, _inputs: Any, output: Any) -> Any:
            out = first_tensor(output)
            if out is None:
                return None
            calls[name] = calls.get(name, 0) + 1
            weight = getattr(module, "weight", None)
            fan_in, fan_out = _fans(module)
            rows.append({
                "name": name, "call": calls[name], "type": type(module).__name__, "output_shape": tuple(out.shape),
                "act_mean": _mean(out), "act_std": _std(out), "grad_std": math.nan,
                "weight_std": _std(weight) if isinstance(weight, Tensor) else None,
                "fan_in": fan_in, "fan_out": fan_out,
            })  # fmt: skip
            sink: list[float] = []
            sinks.append(sink)
            if out.requires_grad:
                return _replace_first(output, _Tap.apply(out, sink))
            return None

        return hook

    try:
        for p in model.parameters():
            p.grad = None
        for name, module in owners:
            handles.append(module.register_forward_hook(hook_for(name)))
        output = model(*args)
        out = first_tensor(output)
        if out is None:
            raise TypeError("model output has no floating-point tensor to probe")
        value = loss(output)
        if not isinstance(value, Tensor) or value.numel() != 1:
            raise TypeError("loss must return a scalar tensor")
        if value.requires_grad:
            value.backward()
        for row, sink in zip(rows, sinks):
            row["grad_std"] = sink[0] if sink else math.nan
        first_input = next((a for a in args if isinstance(a, Tensor) and a.grad is not None), None)
        return SignalReport(rows, _std(out), first_input.grad if first_input is not None else None,
                            float(value.detach()))
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for p in model.parameters():
                p.grad = grads.get(id(p))
            for b in model.buffers():
                saved = buffers.get(id(b))
                if saved is not None:
                    b.copy_(saved)


def jacobian_spectrum(model: nn.Module, x: Tensor) -> Tensor:
    """Singular values (descending, float64) of the Jacobian of ``model`` at ``x``: d vec(model(x)) / d vec(x).

    Meant for small models and one sample (``x`` with a batch of 1): the Jacobian has
    ``numel(output) x numel(x)`` entries. All ones means the model is an isometry at
    ``x`` (dynamical isometry). The model's mode is not changed and nothing is written.

    Example:
        >>> jacobian_spectrum(nn.Linear(3, 3, bias=False).requires_grad_(False).eval(), torch.randn(1, 3)).shape
        torch.Size([3])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module; got {type(model).__name__}")
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError("x must be a floating-point tensor")
    grads = {id(p): p.grad for p in model.parameters()}
    try:
        for p in model.parameters():
            p.grad = None
        jac = torch.autograd.functional.jacobian(lambda inp: first_tensor(model(inp)).reshape(-1), x.detach())
    finally:
        for p in model.parameters():
            p.grad = grads.get(id(p))
    out_numel = jac.shape[0] if jac.dim() else 1
    return torch.linalg.svdvals(jac.reshape(out_numel, -1).double())
