"""muP's initialization (a :class:`~torchinit.Policy`) and per-parameter learning rates (optimizer groups).

The formulation is Table 3 of "Tensor Programs V" (Yang et al., 2022), with every width measured against the base
model (``m`` is a parameter's ``Role.width_mult``, so at the base width, ``m = 1``, muP is the standard
parametrization):

==========================  ====================  ======================  ======================
                            input weights         hidden weights          output weights
==========================  ====================  ======================  ======================
init std (``std=s``)        ``s``                 ``s / sqrt(m)``         ``s / m`` (or 0)
init (``std=None``)         the model's own       the model's own         0
Adam(W) learning rate       ``lr``                ``lr / m``              ``lr / m``
SGD learning rate           ``lr * m``            ``lr * fan_out_mult``   ``lr / m``
                                                  ``/ fan_in_mult``
==========================  ====================  ======================  ======================

``std=None`` relies on the model's own init being fan-in based where muP needs it (torch's Linear and ConvNd:
variance ``1 / (3 fan_in)``, muP's hidden rule at every width), and zeroes the readout, which the paper allows
and which needs no scale. Biases are zero (muP keeps them of constant size; torch's bias init shrinks as
``1 / sqrt(fan_in)``); other vectors (norm weights) keep the model's own init. Vectors follow the input column's
learning rates. Weight decay
is scaled inversely to the learning rate in every group (``weight_decay * lr / group lr``), so the decay per step,
``lr * weight_decay`` in torch's AdamW and SGD, does not change with width: the mup package's ``MuAdamW`` and
``MuSGD`` do the same.

The mup package (Microsoft, 1.0.0) moves the output weights' factor ``1/m`` into the forward pass instead
(``MuReadout``: logits ``W x / m``, with ``W`` at the base width's scale and the input column's learning rate).
The two are the same training dynamics: the effective readout ``W / m`` starts with std ``s / m``; under Adam its
update is ``lr / m`` (Adam's step does not depend on the gradient's scale), and under SGD the gradient of ``W`` is
``1/m`` of the effective one, so the mup package's ``lr * m`` moves ``W / m`` by ``lr / m`` times the effective
gradient, as here. ``tests/mup/test_against_mup.py`` trains both and compares.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from torch import Tensor, nn

from torchinit._util.warn import warn
from torchinit.model.policy import Policy, named_parameter_owners
from torchinit.mup.depth import Depth, check_alpha, depth_of
from torchinit.mup.roles import Role, roles
from torchinit.schemes.initializers import Initializer, Normal, Zeros

__all__ = ["policy", "param_groups", "OPTIMIZERS", "READOUTS"]

#: The optimizers :func:`param_groups` has rules for: Adam-like (entry-wise normalized updates) and SGD-like.
OPTIMIZERS = ("adamw", "sgd")
#: How :func:`policy` initializes output weights.
READOUTS = ("scaled", "zero")


class Named:
    """A policy selector for the parameters of one muP group, by qualified name (each name a tied parameter
    has), shown in reports as the group's description."""

    def __init__(self, description: str, names: Iterable[str]) -> None:
        self.__name__ = description
        self.names = frozenset(names)

    def __call__(self, name: str, param: Tensor, module: nn.Module) -> bool:
        return name in self.names

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Named) and (self.__name__, self.names) == (other.__name__, other.names)

    def __hash__(self) -> int:
        return hash((self.__name__, self.names))

    def __repr__(self) -> str:
        return f"Named({self.__name__!r}, {len(self.names)} parameters)"


def policy(model: nn.Module, base: nn.Module, *, std: float | None = None, readout: str | None = None,
           delta: nn.Module | None = None) -> Policy:
    """muP's initialization of ``model`` as a :class:`~torchinit.Policy`, from the roles against ``base``.

    With ``std=s`` (a model initialized ``Normal(std=s)`` at the base width, as GPT-2 and Llama are): input
    weights ``Normal(s)``, hidden ``Normal(s / sqrt(m))``, output ``Normal(s / m)``, as the mup package's
    ``mup.init.normal_`` with its ``MuReadout`` gives them. With ``std=None`` every weight keeps the model's own init
    (torch's layers draw hidden weights with variance ``1 / (3 fan_in)``, muP's hidden rule) and output weights are
    zero. ``readout="zero"`` zeroes the output weights with ``std=s`` too (the paper allows a zero readout at any
    width); ``readout="scaled"`` needs ``std``. Biases are zero: muP keeps them of constant size, and torch's layers
    draw them with std ``1 / sqrt(3 fan_in)``, which shrinks with width (the mup package rescales them instead).
    Other vectors (norm weights) keep the model's own init, and so do reparametrized weights (``parametrize``'s
    ``original``, weight_norm's ``g`` and ``v``: the weight is computed from them; their learning rates follow
    their layer's role). A model with the base's shapes shows no width dim: pass ``delta`` (a warning says so).
    ``m`` is each weight's :attr:`Role.width_mult`; the formulation and its equivalence with the mup package:
    :mod:`torchinit.mup.rules`.

    The policy composes like any other (``mup.policy(model, base) + Policy([...])``: later rules win) and works
    with ``apply_`` and ``materialize_`` on eager, deferred, meta and sharded models; with ``seed=`` the weights are
    the same at every world size.

    Args:
        model: the model to initialize (its shapes decide the roles; any device).
        base: the same architecture at the base width (any device; meta costs nothing).
        std: the base width's init std, or None for the model's own init.
        readout: ``"scaled"`` (the default with ``std``) or ``"zero"`` (the default, and the only choice, without).
        delta: the architecture at another width, for a ``model`` at the base width (:func:`roles`).

    Example:
        >>> import torch, torchinit as ti, torchinit.mup as mup
        >>> def mlp(width):
        ...     return torch.nn.Sequential(torch.nn.Linear(8, width), torch.nn.ReLU(), torch.nn.Linear(width, 10))
        >>> with torch.device("meta"):
        ...     base = mlp(64)
        >>> model = mlp(256)
        >>> report = mup.policy(model, base, std=0.02).apply_(model, seed=0)
        >>> abs(float(model[2].weight.detach().std()) - 0.02 / 4) < 0.0005  # the readout's std shrinks as 1/m
        True
    """
    readout = checked_init(std, readout)
    found = roles(model, base, delta=delta)
    if delta is None and all(r.width_mult == 1 and r.kind != "output" for r in found.values()):
        warn("mup.policy: model has base's shapes, so no width dim shows and no readout is told from an input "
             "layer (every weight keeps input's rule); pass delta=, the architecture at another width", UserWarning)
    aliases = {name: [a for a in every if not _reparametrized(a)] for name, every in _aliases(model).items()}
    rules: list[tuple[Any, Initializer]] = []
    for (role, _), names in _groups(found).items():
        init = _initializer(role.kind, role.width_mult, std, readout)
        every = [alias for name in names for alias in aliases[name]]
        if init is not None and every:
            rules.append((Named(f"mup_{role.kind}_x{role.width_mult:g}", every), init))
    return Policy(rules + _bias_rules(found, aliases))


def _bias_rules(found: dict[str, Role], aliases: dict[str, list[str]]) -> list[tuple[Any, Initializer]]:
    """Zeros for every bias (``bias``, an LSTM's ``bias_ih_l0``): muP keeps biases of constant size."""
    biases = [alias for name, role in found.items() if role.kind == "vector" for alias in aliases[name]
              if alias.rpartition(".")[2].startswith("bias")]  # fmt: skip
    return [(Named("mup_biases", biases), Zeros())] if biases else []


def _reparametrized(name: str) -> bool:
    """A tensor behind a reparametrization (``parametrize``'s ``original``, old weight_norm's ``weight_g`` and
    ``weight_v``, spectral_norm's ``weight_orig``): the weight is computed from it, and its own init stays."""
    last = name.rpartition(".")[2]
    return ".parametrizations." in f".{name}" or last in ("weight_g", "weight_v", "weight_orig")


def checked_init(std: Any, readout: Any) -> str:
    """``readout`` with its default, once ``std`` and ``readout`` are known to be valid together."""
    if std is not None and (isinstance(std, bool) or not isinstance(std, (int, float)) or not std > 0
                            or not math.isfinite(std)):  # fmt: skip
        raise ValueError(f"std must be a positive finite number or None; got {std!r}")
    readout = ("scaled" if std is not None else "zero") if readout is None else readout
    if readout not in READOUTS:
        raise ValueError(f"readout must be one of {', '.join(map(repr, READOUTS))}; got {readout!r}")
    if readout == "scaled" and std is None:
        raise ValueError("readout='scaled' needs std (the base width's init std); without std the readout is zero")
    return readout


def _initializer(kind: str, mult: float, std: float | None, readout: str) -> Initializer | None:
    """The initializer of a weight of ``kind`` with width multiplier ``mult`` (None: the model's own)."""
    if kind == "output" and readout == "zero":
        return Zeros()
    if kind == "vector" or std is None:
        return None
    return Normal(std=std / {"input": 1.0, "hidden": math.sqrt(mult), "output": mult}[kind])


def param_groups(model: nn.Module, base: nn.Module, lr: float, optimizer: str = "adamw",
                 weight_decay: float = 0.0, *, delta: nn.Module | None = None, depth_alpha: float | None = None,
                 branches: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """torch.optim parameter groups with muP's learning rate (and weight decay) for each parameter of ``model``.

    One group per (kind, width multiplier), each with ``params``, ``lr``, ``weight_decay`` and, for reading, ``kind``,
    ``width_mult`` and ``names`` (torch's optimizers keep extra keys). The rules (Table 3 of "Tensor Programs V",
    the table in :mod:`torchinit.mup.rules`):

    - ``"adamw"`` (Adam, AdamW and other entry-wise normalized optimizers): hidden and output weights
      ``lr / m``; input weights and vectors ``lr``.
    - ``"sgd"``: input weights and vectors ``lr * m``; hidden weights ``lr * fan_out_mult / fan_in_mult``; output
      weights ``lr / m``.

    Each group's ``weight_decay`` is ``weight_decay * lr / group_lr``, so the decay per step (``lr * weight_decay``
    in torch's AdamW and SGD) is the same at every width, as the mup package does. Nothing is stored on the
    tensors: the groups work with FSDP2's DTensor parameters and under ``torch.compile``.

    Args:
        model: the model to train.
        base: the same architecture at the base width.
        lr: the learning rate tuned at the base width.
        optimizer: ``"adamw"`` or ``"sgd"``.
        weight_decay: the weight decay tuned at the base width.
        delta: the architecture at another width, for a ``model`` at the base width (:func:`roles`).
        depth_alpha: with a ``base`` of smaller depth, depth transfer (:mod:`torchinit.mup.depth`): the learning
            rate of every parameter inside the residual blocks is multiplied by ``(L0 / L) ** (1 - depth_alpha)``
            (0.5: depth-muP; 1: CompleteP), AdamW only. Pair it with :func:`~torchinit.mup.forward_changes`'s
            branch multipliers.
        branches: the residual branch ends, for ``depth_alpha`` (:func:`~torchinit.mup.depth.depth_of`).

    Example:
        >>> import torch, torchinit.mup as mup
        >>> def mlp(width):
        ...     return torch.nn.Sequential(torch.nn.Linear(8, width), torch.nn.ReLU(), torch.nn.Linear(width, 10))
        >>> with torch.device("meta"):
        ...     base = mlp(64)
        >>> model = mlp(256)
        >>> opt = torch.optim.AdamW(mup.param_groups(model, base, lr=1e-3))
        >>> [(g["kind"], g["lr"]) for g in opt.param_groups]
        [('input', 0.001), ('vector', 0.001), ('output', 0.00025), ('vector', 0.001)]
    """
    _check_number("lr", lr)
    _check_number("weight_decay", weight_decay, zero=True)
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(map(repr, OPTIMIZERS))}; got {optimizer!r}")
    depth = _depth(model, base, optimizer, depth_alpha, branches)
    found = roles(model, base, delta=delta)
    params = {owners[0].name: p for p, owners in named_parameter_owners(model)}
    groups = []
    for (role, in_blocks), names in _groups(found, depth).items():
        scale = _lr_scale(role, optimizer) * (depth.lr_multiplier(depth_alpha) if in_blocks else 1.0)  # type: ignore[arg-type]
        groups.append({"params": [params[n] for n in names], "lr": lr * scale, "weight_decay": weight_decay / scale,
                       "kind": role.kind, "width_mult": role.width_mult, "names": list(names)})  # fmt: skip
    return groups


def _depth(model: nn.Module, base: nn.Module, optimizer: str, alpha: Any, branches: Any) -> Depth:
    """The depth against ``base`` when ``alpha`` asks for depth transfer, else one that changes nothing."""
    if alpha is None:
        return Depth((), 1, 1, ())
    check_alpha(alpha)
    if optimizer != "adamw":
        raise ValueError(f"depth_alpha has learning-rate rules for AdamW only (depth-muP, CompleteP); got "
                         f"optimizer={optimizer!r}")  # fmt: skip
    return depth_of(model, base, branches)


def _lr_scale(role: Role, optimizer: str) -> float:
    """The factor muP puts on the learning rate of a parameter with ``role``."""
    if role.kind in ("hidden", "output") and optimizer == "adamw":
        return 1.0 / role.width_mult
    if optimizer == "adamw":
        return 1.0
    if role.kind == "hidden":
        return role.fan_out_mult / role.fan_in_mult
    return 1.0 / role.width_mult if role.kind == "output" else role.width_mult


def _groups(found: dict[str, Role], depth: Depth | None = None) -> dict[tuple[Role, bool], list[str]]:
    """The parameter names by role (kind and multipliers) and whether they lie in the residual blocks of a depth
    transfer, in order of first appearance."""
    groups: dict[tuple[Role, bool], list[str]] = {}
    for name, role in found.items():
        groups.setdefault((role, depth is not None and depth.in_blocks(name)), []).append(name)
    return groups


def _aliases(model: nn.Module) -> dict[str, list[str]]:
    """Every name of each parameter, by its first name (a tied parameter has several)."""
    return {owners[0].name: [o.name for o in owners] for _, owners in named_parameter_owners(model)}


def _check_number(name: str, value: Any, *, zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number; got {type(value).__name__}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise ValueError(f"{name} must be a {'non-negative' if zero else 'positive'} finite number; got {value!r}")
