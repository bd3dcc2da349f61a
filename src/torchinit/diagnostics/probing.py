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
import random
import sys
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parameter import is_lazy

from torchinit._util.text import text_table
from torchinit.diagnostics.plots import PLOT_HINT, colors, figure
from torchinit.schemes.layout import fans

__all__ = ["probe", "SignalReport", "jacobian_spectrum", "first_tensor", "PLOT_HINT"]

#: What to install for plots.

Loss = Callable[[Any], Tensor]


_CONTAINERS = (dict, OrderedDict, list, set)
#: Integer dtypes of each element size, to compare floating-point tensors bit for bit.
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_MISSING = object()


def _bits_equal(a: Tensor, b: Tensor) -> bool:
    """``a`` and ``b`` hold the same bits (so -0.0 differs from 0.0 and a NaN equals itself); False when unsure."""
    if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device or a.layout != torch.strided:
        return False
    try:
        if a.is_floating_point() or a.is_complex():
            as_int = _BITS.get(a.element_size())
            if as_int is None:
                return False
            a, b = a.view(as_int), b.view(as_int)
        return bool(torch.equal(a, b))
    except (RuntimeError, NotImplementedError):
        return False


def _same_place(t: Tensor, alias: Tensor) -> bool:
    """``t`` still views the memory, shape, strides and dtype that ``alias`` (taken at the snapshot) views."""
    try:
        return (t.dtype == alias.dtype and t.device == alias.device and t.shape == alias.shape
                and t.stride() == alias.stride() and t.storage_offset() == alias.storage_offset()
                and t.untyped_storage().data_ptr() == alias.untyped_storage().data_ptr())  # fmt: skip
    except (RuntimeError, NotImplementedError):
        return False


def _same_kind(t: Tensor, alias: Tensor) -> bool:
    return t.dtype == alias.dtype and t.device == alias.device and t.shape == alias.shape


def _rng_states(generators: Sequence[torch.Generator]) -> list[tuple[Callable[[], Any], Callable[[Any], Any]]]:
    """(get, set) pairs of every random number generator a forward pass may draw from."""
    pairs: list[tuple[Callable[[], Any], Callable[[Any], Any]]] = [
        (torch.get_rng_state, torch.set_rng_state), (random.getstate, random.setstate)]
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # never initializes CUDA itself
        pairs.append((torch.cuda.get_rng_state_all, torch.cuda.set_rng_state_all))
    np_random = getattr(sys.modules.get("numpy"), "random", None)  # NumPy's global RNG, if NumPy is imported
    if hasattr(np_random, "get_state") and hasattr(np_random, "set_state"):
        pairs.append((np_random.get_state, np_random.set_state))
    pairs += [(g.get_state, g.set_state) for g in generators]
    return pairs


class _Preserved:
    """Context manager: whatever runs inside may change ``model``; on exit the model is as it was found.

    On entry it records, for every module of ``model`` (``model.modules()``):

    - its ``__dict__`` bindings: parameters, buffers and submodules by name (the same
      tensor and module objects come back, so a buffer a forward pass *reassigns*, say
      ``self.count = self.count + 1``, or registers again, is put back), hooks,
      ``training`` and any plain attribute (a step counter); the contents of attributes
      that are lists, dicts or sets (shallow: the items come back, not the items' state);
    - the values of every parameter, buffer and tensor attribute (one copy each, on its
      own device: **this doubles the memory of the model's tensors for the duration**),
      their ``requires_grad`` and their ``.grad`` (set aside, not copied: ``.grad`` is
      None inside, so a backward pass writes fresh ones);
    - the states of the random number generators: the global CPU one, CUDA's (when CUDA
      is already initialized), Python's ``random``, NumPy's global one (when NumPy is
      imported), ``torch.Generator`` attributes of the modules and ``generators``.

    On exit, also by an exception or a KeyboardInterrupt (which then propagates), it
    puts all of that back: values are written back into the original tensors' memory,
    only where their bits differ (an untouched tensor is not written, its version
    counter does not move). On a successful exit, the values of ``keep`` (tensors the
    caller means to change, like :func:`~torchinit.lsuv_`'s weights) are left as they
    are (in their original memory, should a forward pass have swapped it), and the
    generators as they were at the last :meth:`mark_rng` (the caller's own, intended
    draws).

    Not restored, being out of reach: state outside the module tree (globals, objects
    a forward pass closes over, a ``loss`` callable's state), the inner state of
    non-tensor objects held in attributes (their binding comes back), tensors inside
    list/dict attributes (the container's contents come back, their values do not),
    generators of other devices, and CUDA's generators when CUDA was not initialized
    before. Refused up front, with a ``TypeError``/``ValueError`` naming ``model``:
    TorchScript modules (their attributes live in C++) and uninitialized (lazy)
    parameters or buffers (materializing them is the one change that cannot be undone
    by writing values back).

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
        >>> weight, rng = model[0].weight.detach().clone(), torch.get_rng_state()
        >>> with _Preserved(model):
        ...     _ = model[0].weight.data.mul_(0), model.eval(), torch.rand(3)
        >>> torch.equal(model[0].weight, weight), model.training, torch.equal(torch.get_rng_state(), rng)
        (True, True, True)
    """

    def __init__(self, model: nn.Module, *, keep: Sequence[Tensor] = (),
                 generators: Sequence[torch.Generator] = ()) -> None:  # fmt: skip
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module; got {type(model).__name__}")
        modules = list(model.modules())
        scripted = next((n for n, m in model.named_modules() if isinstance(m, torch.jit.ScriptModule)), None)
        if scripted is not None:
            raise TypeError(f"model{'.' + scripted if scripted else ''} is a TorchScript module: its attributes "
                            "live outside Python and could not be restored; pass the eager module")
        lazy = [f"{n}.{k}" if n else k for n, m in model.named_modules() for k, t in
                (*m._parameters.items(), *m._buffers.items()) if t is not None and is_lazy(t)]  # fmt: skip
        if lazy:
            raise ValueError(f"model has uninitialized (lazy) tensors ({', '.join(lazy[:5])}): materializing them "
                             "could not be undone; run one forward pass on a sample first")
        self.modules = modules
        self.keep = {id(t) for t in keep}
        self.extra_generators = list(generators)

    def __enter__(self) -> _Preserved:
        self.dicts: list[tuple[nn.Module, dict[str, Any], dict[str, Any]]] = []
        self.tensors: dict[int, tuple[Tensor, Tensor, Tensor, bool, Tensor | None]] = {}
        generators = list(self.extra_generators)
        for m in self.modules:
            saved = dict(m.__dict__)
            contents = {k: type(v)(v) for k, v in saved.items() if type(v) in _CONTAINERS}
            self.dicts.append((m, saved, contents))
            attrs = [v for v in saved.values() if isinstance(v, Tensor)]
            for t in (*m._parameters.values(), *m._buffers.values(), *attrs):
                if t is not None and id(t) not in self.tensors:
                    leaf = t.is_leaf  # .grad of a non-leaf is never filled (and reading it warns)
                    with torch.inference_mode(t.is_inference()):
                        copy = t.detach().clone()
                    self.tensors[id(t)] = (t, t.detach(), copy, t.requires_grad, t.grad if leaf else None)
            generators += [v for v in saved.values() if isinstance(v, torch.Generator)]
        self.rng = _rng_states(generators)
        self.rng_at_entry = self.rng_on_success = [get() for get, _ in self.rng]
        for t, *_, grad in self.tensors.values():
            if grad is not None:
                t.grad = None
        return self

    def mark_rng(self) -> None:
        """A successful exit leaves the generators as they are now (the caller's intended draws stand)."""
        self.rng_on_success = [get() for get, _ in self.rng]

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        failed = exc_type is not None
        errors = []
        for step in (self._restore_dicts, lambda: self._restore_tensors(failed), lambda: self._restore_rng(failed)):
            try:
                step()
            except Exception as error:  # every step runs; the first failure is reported
                errors.append(error)
        if errors and not failed:
            raise errors[0]
        if errors and exc is not None and hasattr(exc, "add_note"):
            exc.add_note(f"restoring the model failed too: {errors[0]!r}")

    def _restore_dicts(self) -> None:
        for m, saved, contents in self.dicts:
            now = m.__dict__
            for key in [k for k in now if k not in saved]:
                del now[key]
            for key, value in saved.items():
                if now.get(key, _MISSING) is not value:
                    now[key] = value
            for key, items in contents.items():
                container = saved[key]
                if type(container) is list:
                    container[:] = items
                else:
                    container.clear()
                    container.update(items)

    def _restore_tensors(self, failed: bool) -> None:
        for t, alias, copy, requires_grad, grad in self.tensors.values():
            with torch.no_grad(), torch.inference_mode(alias.is_inference()):
                if failed or id(t) not in self.keep:
                    if alias.layout != torch.strided:
                        t.data = copy
                    else:
                        if not _same_place(t, alias):
                            t.data = alias  # reassigned .data, a new dtype or device: back to the original memory
                        if not _bits_equal(alias, copy):
                            alias.copy_(copy)
                elif alias.layout == torch.strided and not _same_place(t, alias) and _same_kind(t, alias):
                    alias.copy_(t.detach())  # a kept tensor keeps its new values, in its original memory
                    t.data = alias
            if t.is_leaf:
                if t.requires_grad != requires_grad:
                    t.requires_grad_(requires_grad)
                if t.grad is not grad:
                    t.grad = grad

    def _restore_rng(self, failed: bool) -> None:
        for (_, set_state), state in zip(self.rng, self.rng_at_entry if failed else self.rng_on_success):
            set_state(state)


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


def _copy_inputs(inputs: Any) -> Any:
    """``inputs`` with every tensor (also inside tuples, lists and dicts) replaced by a detached copy.

    So a forward pass that writes into its input (``x.relu_()``) leaves the caller's
    batch alone, and a backward pass does not fill the caller's ``.grad``.
    """
    if isinstance(inputs, Tensor):
        return inputs.detach().clone()
    if isinstance(inputs, (tuple, list)):
        items = [_copy_inputs(item) for item in inputs]
        return type(inputs)(*items) if hasattr(inputs, "_fields") else type(inputs)(items)
    if type(inputs) in (dict, OrderedDict):
        return type(inputs)((k, _copy_inputs(v)) for k, v in inputs.items())
    return inputs


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
    and the random number generators (global CPU, CUDA once initialized, Python's and
    NumPy's, generators held by modules): dropout draws nothing from the caller's
    stream. The price is one copy of the model's parameters and buffers (and of
    ``inputs``) held during the call. Out of reach, hence not restored: state outside
    the module tree (globals, objects the forward pass closes over, a stateful ``loss``)
    and the inner state of non-tensor objects held in attributes. Refused up front:
    TorchScript modules (``TypeError``) and uninitialized (lazy) parameters
    (``ValueError``), both naming ``model``.

    Example:
        >>> model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(32, 4))
        >>> x = torch.randn(64, 16)
        >>> rng = torch.get_rng_state()
        >>> report = probe(model, x)  # in train mode: dropout draws, from a stream put back afterwards
        >>> [r["name"] for r in report.rows], model[0].weight.grad is None, torch.equal(torch.get_rng_state(), rng)
        (['0', '3'], True, True)
    """
    if loss is not None and not callable(loss):
        raise TypeError(f"loss must be a callable (output -> scalar tensor) or None; got {type(loss).__name__}")
    loss = loss if loss is not None else (lambda out: first_tensor(out).float().pow(2).mean())  # type: ignore[union-attr]
    preserved = _Preserved(model)  # refuses what it could not restore, before anything runs
    args = tuple(a.requires_grad_(True) if isinstance(a, Tensor) and a.is_floating_point() else a
                 for a in _as_args(_copy_inputs(inputs)))  # fmt: skip
    owners = [(name, m) for name, m in model.named_modules() if next(m.parameters(recurse=False), None) is not None]
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

    with preserved:  # .grad set aside (None inside), everything put back on the way out
        try:
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
        finally:
            for h in handles:
                h.remove()
    for row, sink in zip(rows, sinks):
        row["grad_std"] = sink[0] if sink else math.nan
    first_input = next((a for a in args if isinstance(a, Tensor) and a.grad is not None), None)
    return SignalReport(rows, _std(out), first_input.grad if first_input is not None else None, float(value.detach()))


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
    attributes and the random number generators. The price is one copy of the
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
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError("x must be a floating-point tensor")
    preserved = _Preserved(model)

    def flat_output(inp: Tensor) -> Tensor:
        out = first_tensor(model(inp))
        if out is None:
            raise TypeError("model output has no floating-point tensor")
        return out.reshape(-1)

    with preserved:
        jac = torch.autograd.functional.jacobian(flat_output, x.detach().clone())
    out_numel = jac.shape[0] if jac.dim() else 1
    return torch.linalg.svdvals(jac.reshape(out_numel, -1).double())
