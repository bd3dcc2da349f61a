"""Depth transfer: residual branches scaled by ``(L0 / L) ** alpha``, and the learning rates that go with it.

Depth-muP (Yang et al., "Tensor Programs VI: Feature Learning in Infinite-Depth Neural Networks", 2023; Bordelon
et al., 2023) and CompleteP (Dey et al., "Don't be lazy: CompleteP enables compute-efficient deep transformers",
2025) make a residual network's hyperparameters transfer across depth ``L`` by multiplying every residual branch
by ``L ** -alpha`` and its weights' Adam learning rate by ``L ** (alpha - 1)``, against a base depth ``L0``:

==========================  ===============================  ======================================
                            branch output                    Adam(W) learning rate in the blocks
==========================  ===============================  ======================================
``alpha = 0.5`` (depth-muP)  ``x (L0 / L) ** 0.5``            ``lr (L0 / L) ** 0.5``
``alpha = 1`` (CompleteP)    ``x L0 / L``                     ``lr`` (unchanged)
==========================  ===============================  ======================================

The init is unchanged (the multiplier scales the branch at every step, at initialization too), and parameters
outside the blocks (embeddings, the readout, a final norm) are untouched. At ``L = L0`` nothing changes.

The depth ``L`` is found as the widths are, by comparing with the base model: a ``ModuleList`` (or
``Sequential``) of blocks (modules of one class with modules of their own) that is longer in the model than in the
base and holds branch ends is a depth stack, and ``L / L0`` is the ratio of the lengths.
The branch ends are the modules whose output is added back to the residual stream: by
default the output projections of the known block layouts (:data:`BRANCH_ENDS`: GPT-2's ``attn.c_proj`` and
``mlp.c_proj``, Llama's ``self_attn.o_proj`` and ``mlp.down_proj``, timm's ``attn.proj`` and ``mlp.fc2``, BERT's
``attention.output.dense`` and ``output.dense``), or glob patterns of your own (``branches=``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

__all__ = ["ALPHAS", "BRANCH_ENDS", "Depth", "depth_of", "check_alpha", "block_renamer"]

#: The depth exponents with a published rule: depth-muP (0.5) and CompleteP (1).
ALPHAS = (0.5, 1.0)

#: The names, relative to a block, of the modules that end a residual branch in the known layouts.
BRANCH_ENDS = ("attn.c_proj", "mlp.c_proj", "self_attn.o_proj", "mlp.down_proj", "attn.proj", "mlp.fc2",
               "attention.output.dense", "output.dense")  # fmt: skip


@dataclass(frozen=True)
class Depth:
    """A model's depth against its base: the block stacks (their qualified names), ``L`` and ``L0``, and the
    branch ends found in them."""

    stacks: tuple[str, ...]
    layers: int
    base_layers: int
    branches: tuple[str, ...]

    @property
    def ratio(self) -> float:
        """``L / L0``."""
        return self.layers / self.base_layers

    def in_blocks(self, name: str) -> bool:
        """Whether the parameter or module ``name`` lies inside one of the block stacks."""
        return any(name.startswith(_prefix(stack)) for stack in self.stacks)

    def branch_multiplier(self, alpha: float) -> float:
        """``(L0 / L) ** alpha``: what each residual branch's output is multiplied by."""
        return (self.base_layers / self.layers) ** alpha

    def lr_multiplier(self, alpha: float) -> float:
        """``(L0 / L) ** (1 - alpha)``: what Adam's learning rate in the blocks is multiplied by."""
        return (self.base_layers / self.layers) ** (1 - alpha)


def _prefix(stack: str) -> str:
    return f"{stack}." if stack else ""


def check_alpha(alpha: object) -> float:
    """``alpha`` as a float in [0.5, 1] (depth-muP's 0.5, CompleteP's 1, and the range between)."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.5 <= alpha <= 1:
        raise ValueError(f"depth_alpha must be a number from 0.5 (depth-muP) to 1 (CompleteP), or None; got {alpha!r}")
    return float(alpha)


def block_renamer(model: nn.Module, other: nn.Module) -> Callable[[str], str]:
    """A map from ``model``'s parameter names to ``other``'s, where ``model`` has more blocks: block ``i`` of a stack
    with ``L`` blocks (``L0`` in ``other``) stands for block ``i * L0 // L`` of ``other``, which has its shapes."""
    deeper = {name: lengths for name, lengths in _stacks(model, other).items() if lengths[0] > lengths[1] > 0}

    def rename(name: str) -> str:
        for stack, (length, base_length) in deeper.items():
            prefix = _prefix(stack)
            index, dot, rest = name[len(prefix):].partition(".")
            if name.startswith(prefix) and dot and index.isdigit():
                return f"{prefix}{int(index) * base_length // length}.{rest}"
        return name

    return rename


def depth_of(model: nn.Module, base: nn.Module, branches: Sequence[str] | None = None) -> Depth:
    """The depth of ``model`` against ``base``, found by comparing the lengths of their block lists.

    Raises:
        ValueError: the block lists grow by different ratios, none is deeper than in ``base`` while another is
            shallower, or no branch end is found in the deeper stacks (then name them with ``branches``).
    """
    deeper = {name: lengths for name, lengths in _stacks(model, base).items()
              if _branch_ends(model, (name,), branches)}  # fmt: skip  (a list of heads holds no branch end)
    if not deeper:
        if any(lengths[0] != lengths[1] for lengths in _stacks(model, base).values()):
            raise ValueError(f"no residual branch end found in the block lists that change depth "
                             f"({_listed(_stacks(model, base))}): if they are residual blocks, name the modules that "
                             f"end each branch with branches= (glob patterns, e.g. '*.mlp.c_proj'; the known ones "
                             f"are {', '.join(BRANCH_ENDS)}); if none is (a list of heads), depth_alpha has nothing "
                             "to scale: leave it out")  # fmt: skip
        return Depth((), 1, 1, ())
    ratios = {(length, base_length) for length, base_length in deeper.values()}
    if len({a / b for a, b in ratios}) > 1 or any(a < b for a, b in ratios):
        raise ValueError(f"the block lists change depth unevenly against base ({_listed(deeper)}): depth transfer "
                         "needs one depth ratio, every list at least as deep as in base")  # fmt: skip
    length, base_length = next(iter(ratios))
    stacks = tuple(sorted(deeper))
    return Depth(stacks, length, base_length, _branch_ends(model, stacks, branches))


def _stacks(model: nn.Module, other: nn.Module) -> dict[str, tuple[int, int]]:
    """The block stacks whose length differs between ``model`` and ``other``, with both lengths: lists
    (``ModuleList``, ``Sequential``) of modules of one class (blocks; an ``nn.Sequential`` of different layers is a
    network, not a stack)."""
    lengths = {name: len(m) for name, m in other.named_modules() if _is_stack(m)}
    return {name: (len(m), lengths[name]) for name, m in model.named_modules()
            if _is_stack(m) and name in lengths and len(m) != lengths[name]}  # fmt: skip


def _is_stack(module: nn.Module) -> bool:
    """A list of blocks: a ``ModuleList`` or ``Sequential`` of modules of one class that have modules of their own
    (a list of plain layers, ``Sequential(Linear, Linear, ...)``, is a network whose layers differ in shape)."""
    return (isinstance(module, (nn.ModuleList, nn.Sequential)) and len({type(m) for m in module}) == 1
            and all(any(True for _ in m.children()) for m in module))  # fmt: skip


def _listed(deeper: dict[str, tuple[int, int]]) -> str:
    return ", ".join(f"{name}: {a} against {b}" for name, (a, b) in deeper.items())


def _branch_ends(model: nn.Module, stacks: tuple[str, ...], branches: Sequence[str] | None) -> tuple[str, ...]:
    """The qualified names of the branch-end modules inside ``stacks``: matching ``branches`` (globs on the
    qualified name), or by default named ``<stack>.<i>.<one of BRANCH_ENDS>``."""
    found = []
    for name, _ in model.named_modules():
        inside = next((s for s in stacks if name.startswith(_prefix(s))), None)
        if inside is None:
            continue
        if branches is not None:
            hit = any(fnmatch.fnmatchcase(name, pattern) for pattern in branches)
        else:
            relative = name[len(_prefix(inside)):].partition(".")[2]  # without the block index
            hit = relative in BRANCH_ENDS
        if hit:
            found.append(name)
    return tuple(found)
