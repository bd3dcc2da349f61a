"""The changes muP needs in the forward pass, made without editing model code: :func:`forward_changes`.

Two places need them (Yang et al., "Tensor Programs V", Table 3 and section 4):

- **A tied readout.** An output layer that shares its weight with the input embedding cannot take the output
  weights' init and learning rate (the weight is the embedding's, ``input``-like: :mod:`torchinit.mup.roles`), so
  its ``1/m`` goes into the forward pass: the layer sees ``x / m`` (``m``: the growth of its input dim), as the mup
  package's ``MuSharedReadout`` computes. A forward pre-hook does it.
- **Attention logits scaled by 1/d.** When the head dim ``d`` grows with width (the number of heads fixed), muP
  scales the attention logits by ``1/d`` instead of ``1/sqrt(d)``: ``sqrt(d0) / d`` against the base head dim
  ``d0``, which equals the standard ``1/sqrt(d0)`` at the base width. Modules that keep their scale in an attribute
  are changed in place: transformers' attention modules (``scaling`` beside ``head_dim``: GPT-2, Llama, Mistral,
  Qwen2 and the others built on the same attention interface) and timm's ``Attention`` (``scale`` beside
  ``head_dim``; its fused path ignores ``scale``, so ``fused_attn`` is turned off for the changed modules). When
  heads grow and the head dim stays, nothing changes. ``torch.nn.MultiheadAttention`` computes its scale inside
  ``F.multi_head_attention_forward`` and cannot be changed from outside (nor can transformers 4's attention
  classes): a warning names such a module when its head dim grows; keep its head dim fixed.

An untied readout needs nothing in the forward pass: :func:`~torchinit.mup.policy` and
:func:`~torchinit.mup.param_groups` give it its ``1/m``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from torchinit._util.warn import warn
from torchinit.model.policy import named_parameter_owners
from torchinit.mup.depth import Depth, block_renamer, check_alpha, depth_of
from torchinit.mup.roles import registration_role, roles

__all__ = ["forward_changes", "ForwardChanges"]


#: The attribute that marks a module changed by :func:`forward_changes`.
_MARK = "_torchinit_mup_forward"


@dataclass
class ForwardChanges:
    """What :func:`forward_changes` changed in a model (``changes``, one line each), and how to undo it: ``remove()``,
    or leave a ``with`` block."""

    changes: list[str] = field(default_factory=list)
    _hooks: list[Any] = field(default_factory=list, repr=False)
    _attributes: list[tuple[nn.Module, str, Any]] = field(default_factory=list, repr=False)
    _marked: list[nn.Module] = field(default_factory=list, repr=False)

    def changed(self, module: nn.Module) -> None:
        """Mark ``module`` as changed (the mark travels with copies: a copy refuses a second application too)."""
        if _MARK not in module.__dict__:
            module.__dict__[_MARK] = True
            self._marked.append(module)

    def remove(self) -> None:
        """Undo every change (idempotent). A deep copy made meanwhile keeps its copy of the changes."""
        for module in self._marked:
            module.__dict__.pop(_MARK, None)
        self._marked.clear()
        for handle in self._hooks:
            handle.remove()
        for module, attr, value in reversed(self._attributes):
            setattr(module, attr, value)
        self._hooks.clear()
        self._attributes.clear()

    def __enter__(self) -> ForwardChanges:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def forward_changes(model: nn.Module, base: nn.Module, *, delta: nn.Module | None = None, readout: bool = True,
                    attention: bool = True, depth_alpha: float | None = None,
                    branches: Sequence[str] | None = None) -> ForwardChanges:
    """Make the forward-pass changes muP needs in ``model`` (see :mod:`torchinit.mup.forward`), from its shapes
    against ``base`` (and ``delta``, for a model at the base width: :func:`~torchinit.mup.roles`).

    ``readout``: a tied output layer sees its input divided by its width multiplier ``m`` (a forward pre-hook).
    ``attention``: attention modules whose head dim grows scale their logits by ``sqrt(d0) / d`` instead of
    ``1 / sqrt(d)`` (``d``: head dim, ``d0``: the base's). Returns a :class:`ForwardChanges` that lists what changed
    and undoes it; the parameters are not touched, so the state dict is unchanged.

    Args:
        model: the model to train.
        base: the same architecture at the base width.
        delta: the architecture at another width, for a ``model`` at the base width.
        readout: change tied readouts (default True).
        attention: change attention scales (default True).
        depth_alpha: with a ``base`` of smaller depth, multiply every residual branch's output by
            ``(L0 / L) ** depth_alpha`` (0.5: depth-muP; 1: CompleteP; :mod:`torchinit.mup.depth`); pair it with
            :func:`~torchinit.mup.param_groups`'s ``depth_alpha``.
        branches: glob patterns of the modules that end the residual branches (default: the known layouts,
            :data:`~torchinit.mup.depth.BRANCH_ENDS`).

    Example:
        >>> import torch, torchinit.mup as mup
        >>> class LM(torch.nn.Module):
        ...     def __init__(self, d):
        ...         super().__init__()
        ...         self.embed, self.head = torch.nn.Embedding(50, d), torch.nn.Linear(d, 50, bias=False)
        ...         self.head.weight = self.embed.weight  # tied
        ...     def forward(self, idx):
        ...         return self.head(self.embed(idx))
        >>> with torch.device("meta"):
        ...     base = LM(16)
        >>> model = LM(64)
        >>> changes = mup.forward_changes(model, base)
        >>> changes.changes
        ['head: tied readout, input / 4']
        >>> changes.remove()
    """
    if not isinstance(readout, bool) or not isinstance(attention, bool):
        raise TypeError("readout and attention must be bools")
    depth = depth_of(model, base, branches) if depth_alpha is not None and check_alpha(depth_alpha) else None
    if any(_MARK in m.__dict__ for m in model.modules()):
        raise ValueError("model already has muP's forward changes (they would apply twice; a deep copy of a changed "
                         "model carries them): call remove() on the ForwardChanges that forward_changes returned "
                         "first")  # fmt: skip
    done = ForwardChanges()
    unreachable: list[str] = []
    try:
        if readout:
            _tied_readouts(model, base, delta, done)
        if attention:
            unreachable = _attention_scales(model, base, done)
        if depth is not None and depth.ratio != 1:
            _branch_multipliers(model, depth, depth.branch_multiplier(depth_alpha), done)  # type: ignore[arg-type]
    except BaseException:
        done.remove()  # all or nothing
        raise
    if unreachable:
        warn(f"forward_changes: the head dim of {', '.join(unreachable)} grows, but its attention scale is computed "
             "inside its forward (no `scaling` or `scale` attribute to change): its logits keep 1/sqrt(d), not "
             "muP's 1/d. Keep the head dim fixed (grow the number of heads), or scale its queries yourself.")
    return done


def _tied_readouts(model: nn.Module, base: nn.Module, delta: nn.Module | None, done: ForwardChanges) -> None:
    found = roles(model, base, delta=delta)
    for _, owners in named_parameter_owners(model):
        if len(owners) < 2 or found[owners[0].name].kind != "input":
            continue
        for owner in owners:  # every registration that reads out through the shared (input-like) weight
            role = registration_role(model, base, delta, owner.name, owner.module, owner.attr)
            if role.kind == "output" and isinstance(owner.module, nn.Linear):
                done.changed(owner.module)
                done._hooks.append(owner.module.register_forward_pre_hook(_DivideInput(role.width_mult)))
                module_name = owner.name.rpartition(".")[0]
                done.changes.append(f"{module_name}: tied readout, input / {role.width_mult:g}")


class _DivideInput:
    """A forward pre-hook that divides a module's first input (a class, so that a model holding it pickles)."""

    def __init__(self, divisor: float) -> None:
        self.divisor = divisor

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (args[0] / self.divisor, *args[1:])


def _attention_scales(model: nn.Module, base: nn.Module, done: ForwardChanges) -> list[str]:
    """Scale the logits of every attention module whose head dim grew; return those whose scale torchinit cannot
    reach (an int ``head_dim`` but no ``scaling``/``scale`` attribute: ``nn.MultiheadAttention``, transformers 4's
    attention classes, which compute ``1/sqrt(d)`` inside their forward)."""
    base_modules = dict(base.named_modules())
    rename = block_renamer(model, base)  # a deeper model's block i: the base's block i * L0 // L
    unreachable = []
    for name, module in model.named_modules():
        counterpart = base_modules.get(rename(f"{name}.x").removesuffix(".x") if name else name)
        d, d0 = getattr(module, "head_dim", None), getattr(counterpart, "head_dim", None)
        if counterpart is None or not isinstance(d, int) or not isinstance(d0, int) or d == d0:
            continue
        attr = _scale_attribute(module)
        if attr is None:
            unreachable.append(f"{name} ({type(module).__name__}, head dim {d0} -> {d})")
            continue
        old = getattr(module, attr)
        done.changed(module)
        done._attributes.append((module, attr, old))
        setattr(module, attr, old * (d0 / d) ** 0.5)
        if attr == "scale" and getattr(module, "fused_attn", False):  # timm: the fused path ignores ``scale``
            done._attributes.append((module, "fused_attn", True))
            module.fused_attn = False
        done.changes.append(f"{name}: attention scale x sqrt({d0}/{d}) (1/d instead of 1/sqrt(d))")
    return unreachable


def _branch_multipliers(model: nn.Module, depth: Depth, multiplier: float, done: ForwardChanges) -> None:
    modules = dict(model.named_modules())
    for name in depth.branches:
        done.changed(modules[name])
        done._hooks.append(modules[name].register_forward_hook(_MultiplyOutput(multiplier)))
    done.changes.append(f"{len(depth.branches)} residual branch(es) in {', '.join(depth.stacks)}: output x "
                        f"{multiplier:.4g} (depth {depth.layers} against {depth.base_layers})")


class _MultiplyOutput:
    """A forward hook that multiplies a module's output (a class, so that a model holding it pickles)."""

    def __init__(self, multiplier: float) -> None:
        self.multiplier = multiplier

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        return output * self.multiplier


def _scale_attribute(module: nn.Module) -> str | None:
    """The attribute holding ``module``'s attention scale, next to an int ``head_dim``: ``scaling`` (transformers)
    or ``scale`` (timm), or None."""
    if not isinstance(getattr(module, "head_dim", None), int):
        return None
    for attr in ("scaling", "scale"):
        if isinstance(module.__dict__.get(attr), float):
            return attr
    return None
