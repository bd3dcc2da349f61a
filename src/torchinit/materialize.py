"""Deferred construction and one-pass materialization: build on the meta device, initialize each parameter once.

::

    with torchinit.deferred():
        model = Transformer(config)            # parameters on meta: no memory, no init work
    report = torchinit.materialize_(model, policy, device="cpu", generator=torch.Generator().manual_seed(0))

Inside :func:`deferred`, every parameter a module registers is moved to the meta
device as it is registered, so constructors allocate nothing real and their own
``reset_parameters`` do no work; buffers are computed for real (a RoPE
``inv_freq`` is right, unlike after ``to_empty``). :func:`materialize_` then
allocates each parameter on the target device and gives it its values exactly once.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from torchinit.policy import InitReport, Planned, Policy, check_on_meta, report_of, stream_generator, stream_seed

__all__ = ["deferred", "materialize_"]


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Within this context, parameters are created on the meta device; buffers stay real.

    Constructors run as usual (so buffers such as RoPE frequencies and any
    Python-side state are computed), but each ``nn.Parameter`` is moved to meta
    when it is registered, so no parameter memory is kept and ``reset_parameters``
    works on meta tensors (free: in-place random fills on meta tensors return at
    once, where torch would first import its Python meta kernels, ~2 s). Values that
    a constructor writes into a parameter (a LayerScale ``gamma = init * ones(dim)``)
    are lost: give them a rule when you call :func:`materialize_`, which names any
    parameter it cannot initialize.

    The context patches ``nn.Module.register_parameter`` process-wide (as
    accelerate's ``init_empty_weights`` does), so modules built by other threads
    while it is open are deferred too; nested and overlapping contexts are counted,
    and torch is restored when the last one exits.

    Example:
        >>> with deferred():
        ...     layer = nn.Linear(4096, 4096)
        >>> layer.weight.is_meta
        True
    """
    with _PATCH_LOCK:
        if _PATCH["depth"] == 0:
            _PATCH["saved"] = _install_patches()
        _PATCH["depth"] += 1
    try:
        yield
    finally:
        with _PATCH_LOCK:
            _PATCH["depth"] -= 1
            if _PATCH["depth"] == 0:
                _remove_patches(_PATCH.pop("saved"))


# The patches are process-wide (class attributes), so nested or concurrent contexts share one installation,
# counted under a lock: the originals come back when the last context exits, whatever the order.
_PATCH_LOCK = threading.Lock()
_PATCH: dict[str, Any] = {"depth": 0}


def _install_patches() -> dict[str, Any]:
    saved: dict[str, Any] = {"register_parameter": nn.Module.register_parameter}
    original = saved["register_parameter"]

    def register_parameter(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and not param.is_meta:
            param = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
        original(self, name, param)

    nn.Module.register_parameter = register_parameter  # type: ignore[method-assign]
    for name in _META_NO_OPS:
        saved[name] = getattr(torch.Tensor, name)
        setattr(torch.Tensor, name, _skip_on_meta(saved[name]))
    return saved


def _remove_patches(saved: dict[str, Any]) -> None:
    nn.Module.register_parameter = saved.pop("register_parameter")  # type: ignore[method-assign]
    for name, method in saved.items():
        setattr(torch.Tensor, name, method)


#: In-place ops that constructors use for init and that torch 2.13 has no C++ meta kernel for: the
#: first one on a meta tensor imports torch's Python meta kernels (~2 s, measured here). On a meta
#: tensor an in-place elementwise op changes nothing, so inside ``deferred`` they return at once.
_META_NO_OPS = ("normal_", "erfinv_", "exponential_", "log_normal_", "geometric_", "cauchy_")


def _skip_on_meta(method: Any) -> Any:
    def wrapper(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self if self.is_meta else method(self, *args, **kwargs)

    wrapper.__name__, wrapper.__doc__ = method.__name__, method.__doc__
    return wrapper


def _reset_method(module: nn.Module) -> Any:
    """The module's own re-initialization method: ``reset_parameters`` or (MultiheadAttention) ``_reset_parameters``."""
    for name in ("reset_parameters", "_reset_parameters"):
        method = getattr(module, name, None)
        if callable(method):
            return method
    return None


def materialize_(
    model: nn.Module,
    policy: Policy | None = None,
    *,
    device: torch.device | str | None = None,
    strict: bool = False,
    generator: torch.Generator | None = None,
) -> InitReport:
    """Allocate every meta parameter of ``model`` on ``device`` and initialize it exactly once.

    The values of each parameter come from, in order:

    1. the ``policy``, where a rule matches;
    2. otherwise the owning module's ``reset_parameters()`` (or ``_reset_parameters()``,
       which is all MultiheadAttention has), called once per module while only the
       parameters that module owns directly and that no rule covers are allocated:
       everything else is still on meta, so the call cannot touch it;
    3. otherwise the values are unknown (a LayerScale gamma set in a constructor):
       with ``strict=True`` a ValueError names them before anything is allocated;
       otherwise they are set to zero, and a warning names them.

    No uninitialized memory is left behind. Modules are processed one at a time, so
    peak memory stays near the parameters' own bytes. Parameters that are already
    real are left as they are; with ``device`` given, they and all buffers are moved
    there. Tied parameters stay tied.

    Args:
        model: a model built under :func:`deferred` (or on the meta device).
        policy: rules that take precedence over the modules' own init.
        device: where to allocate (default: the CPU).
        strict: raise instead of zero-filling parameters with unknown values.
        generator: with it, each policy-covered parameter draws from a stream derived
            from its seed and qualified name, and each module's ``reset_parameters`` runs
            under the global RNG seeded from the seed and the module's name (then restored).

    Returns:
        An :class:`~torchinit.policy.InitReport`; its rule column says where each value came from.

    Example:
        >>> with deferred():
        ...     model = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))
        >>> report = materialize_(model, generator=torch.Generator().manual_seed(0))
        >>> model[0].weight.is_meta, [row.rule for row in report]
        (False, ['reset_parameters', 'reset_parameters', 'reset_parameters', 'reset_parameters'])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module; got {type(model).__name__}")
    device = torch.device("cpu") if device is None else torch.device(device)
    plans = (policy if policy is not None else Policy([])).plan(model)
    pending = [p for p in plans if p.param.is_meta]
    for p in pending:
        if p.initializer is None:
            owner = next((o for o in p.owners if _reset_method(o.module) is not None), None)
            if owner is not None:
                method = _reset_method(owner.module).__name__
                p.source, p.detail = "reset_parameters", f"{type(owner.module).__name__}.{method}()"
                p.owners.sort(key=lambda o: o is not owner)  # the resetting module first
            else:
                p.source, p.detail = "unknown", "zeros (no rule, no reset_parameters)"
    unknown = [p.name for p in pending if p.source == "unknown"]
    if strict and unknown:
        raise ValueError(
            f"strict: the values of {len(unknown)} parameter(s) are unknown (no rule, and their modules have no "
            f"reset_parameters): {', '.join(unknown)}; add rules for them"
        )
    for p in pending:
        if p.initializer is not None:
            check_on_meta(p)
    if unknown:
        warnings.warn(
            f"materialize_: no rule and no reset_parameters for {', '.join(unknown)}; they are set to zero. "
            "Add rules for them (e.g. a LayerScale gamma: Constant(1e-5)).",
            UserWarning,
            stacklevel=2,
        )

    by_module: dict[int, list[Planned]] = {}
    for p in pending:
        by_module.setdefault(id(p.owner.module), []).append(p)
    with torch.no_grad():
        for module_name, module in model.named_modules():
            group = by_module.get(id(module), [])
            resets = [p for p in group if p.source == "reset_parameters"]
            if resets:
                for p in resets:
                    _allocate(p, device, torch.zeros)  # zeros: a reset that skips a parameter leaves no garbage
                _reset(module, module_name, generator, device)
            for p in group:
                if p.initializer is not None:
                    _allocate(p, device, torch.empty)  # every initializer writes every element
                    p.initializer.init(p.target(), generator=stream_generator(generator, p.name, device))
                elif p.source == "unknown":
                    _allocate(p, device, torch.zeros)
        _move_real(model, device)
    return report_of(plans)


def _allocate(p: Planned, device: torch.device, factory: Any) -> None:
    """Replace the meta parameter by a real one on ``device``, at every place it is registered (ties kept)."""
    old = p.param
    new = nn.Parameter(factory(old.shape, dtype=old.dtype, device=device), requires_grad=old.requires_grad)
    for o in p.owners:
        _set_parameter(o.module, o.attr, new)
    p.param = new


def _set_parameter(module: nn.Module, attr: str, param: nn.Parameter) -> None:
    """Register ``param`` as ``module.attr``; an RNN also keeps a list of its weights, refreshed here.

    torch 2.13's RNN forward notices replaced weights by itself; the refresh keeps older
    releases (the package accepts torch >= 2.1) from running on the stale meta tensors.
    """
    module._parameters[attr] = param
    if isinstance(module, nn.RNNBase):
        module._init_flat_weights()


def _reset(module: nn.Module, name: str, generator: torch.Generator | None, device: torch.device) -> None:
    """Run the module's own reset, touching only its direct parameters that are real; seeded per module name."""
    descendants = [(m, k, v.detach().clone()) for m in module.modules() if m is not module
                   for k, v in m._parameters.items() if v is not None and not v.is_meta]  # fmt: skip
    method = _reset_method(module)
    if generator is None:
        method()
    else:
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            seed = stream_seed(generator.initial_seed(), name + ":reset_parameters")
            torch.manual_seed(seed)
            method()
    for m, k, saved in descendants:  # a reset that reaches into submodules (MultiheadAttention's out_proj.bias)
        m._parameters[k].copy_(saved)


def _move_real(model: nn.Module, device: torch.device) -> None:
    """Move buffers and already-real parameters to ``device``; a parameter shared by several modules stays shared."""
    moved: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for k, b in module._buffers.items():
            if b is not None and b.device != device:
                module._buffers[k] = b.to(device)
        for k, v in module._parameters.items():
            if v is not None and v.device != device and not v.is_meta:
                if id(v) not in moved:
                    moved[id(v)] = nn.Parameter(v.detach().to(device), requires_grad=v.requires_grad)
                _set_parameter(module, k, moved[id(v)])
