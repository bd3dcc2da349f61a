"""Compare initialization schemes on one model: the engine behind ``torchinit compare`` and ``torchinit probe``.

A scheme re-initializes a freshly built model; :func:`compare` then probes each
(one forward and one backward pass on the same batch, :func:`~torchinit.diagnostics.probing.probe`)
and, optionally, the input-output Jacobian's spectrum.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from torchinit.diagnostics.lsuv import lsuv_
from torchinit.diagnostics.probing import SignalReport, jacobian_spectrum, probe
from torchinit.model.policy import Policy
from torchinit.model.presets import fixup, glass_shortcuts
from torchinit.schemes.initializers import (
    DeltaOrthogonal,
    Hadamard,
    Initializer,
    KaimingNormal,
    KaimingUniform,
    LecunNormal,
    LecunUniform,
    Orthogonal,
    XavierNormal,
    XavierUniform,
    Zeros,
)

__all__ = ["Scheme", "SCHEMES", "DEFAULT_SCHEMES", "SchemeResult", "compare", "every_weight", "EXPLODE_STD",
           "VANISH_STD", "VANISH_GRAD"]

#: A scheme "exploded" when the output or the input gradient is not finite, or the output std exceeds this.
EXPLODE_STD = 1e3
#: A scheme "vanished" when the output std is below this ...
VANISH_STD = 1e-3
#: ... or the norm of the gradient at the input is below this.
VANISH_GRAD = 1e-6

Apply = Callable[[nn.Module, Any, torch.Generator], object]


class Scheme(NamedTuple):
    """A named way to initialize a whole model: a one-line description and the function that does it."""

    description: str
    apply: Apply


def every_weight(weight: Initializer, conv: Initializer | None = None) -> Apply:
    """A scheme's function: every Linear and conv weight from ``weight`` (the layer's own fans), every bias 0.

    ``conv``: the conv weights from this one instead.

    Example:
        >>> from torchinit.schemes.initializers import Orthogonal
        >>> layer = nn.Linear(3, 3)
        >>> _ = every_weight(Orthogonal())(layer, None, torch.Generator().manual_seed(0))
        >>> bool((layer.bias == 0).all())
        True
    """
    conv = weight if conv is None else conv
    return _applying(Policy([(nn.Linear, {"weight": weight, "bias": Zeros()}),
                             (nn.modules.conv._ConvNd, {"weight": conv, "bias": Zeros()})], optional=True))  # fmt: skip


def _applying(policy: Policy) -> Apply:
    """A scheme's function that applies ``policy``, drawing from the scheme's generator."""
    return lambda model, data, g: policy.apply_(model, generator=g)


def _fixup(model: nn.Module, data: Any, g: torch.Generator) -> None:
    """Fixup (presets.fixup) for the model's residual blocks (fc1/fc2 or conv1/conv2).

    The last Linear (the classifier) gets 0.
    """
    blocks = [m for m in model.modules() if hasattr(m, "fc2") or hasattr(m, "conv2")]
    if not blocks:
        raise ValueError("fixup needs residual blocks whose branches are fc1, fc2 (or conv1, conv2) layers; "
                         f"{type(model).__name__} has none")
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    head = Policy([(f"{linears[-1]}.weight", Zeros()), (f"{linears[-1]}.bias", Zeros())], optional=True)
    (fixup(len(blocks), 2) + head).apply_(model, generator=g)


def _shortcuts(isometric: bool) -> Apply:
    return _applying(glass_shortcuts(isometric=isometric))


_RELU = math.sqrt(2.0)

#: The schemes ``compare`` knows, in report order.
SCHEMES: dict[str, Scheme] = {
    "default": Scheme("the constructors' own init (torch's reset_parameters)", lambda model, data, g: None),
    "kaiming_normal": Scheme("kaiming_normal_(nonlinearity='relu') on every weight, biases 0",
                             every_weight(KaimingNormal(nonlinearity="relu"))),
    "kaiming_uniform": Scheme("kaiming_uniform_(nonlinearity='relu') on every weight, biases 0",
                              every_weight(KaimingUniform(nonlinearity="relu"))),
    "xavier_uniform": Scheme("xavier_uniform_() on every weight, biases 0", every_weight(XavierUniform())),
    "xavier_normal": Scheme("xavier_normal_() on every weight, biases 0", every_weight(XavierNormal())),
    "lecun_normal": Scheme("lecun_normal_() on every weight, biases 0", every_weight(LecunNormal())),
    "lecun_uniform": Scheme("lecun_uniform_() on every weight, biases 0", every_weight(LecunUniform())),
    "orthogonal": Scheme("orthogonal_(gain=sqrt(2)) on every weight, biases 0", every_weight(Orthogonal(gain=_RELU))),
    "hadamard": Scheme("hadamard_() (ZerO) on every weight, biases 0", every_weight(Hadamard())),
    "delta_orthogonal": Scheme("delta_orthogonal_(gain=sqrt(2)) on every conv weight, orthogonal_(gain=sqrt(2)) on "
                               "every Linear weight, biases 0",
                               every_weight(Orthogonal(gain=_RELU), conv=DeltaOrthogonal(gain=_RELU))),
    "fixup": Scheme("Fixup: branch layers He fan_out scaled by L^(-1/2), their last layer and the classifier 0 "
                    "(presets.fixup)", _fixup),
    "glass": Scheme("glass_() on the projection shortcuts, the rest as 'default'", _shortcuts(False)),
    "glass-isometric": Scheme("glass_(isometric=True, zero_mean=False) on the shortcuts, the rest as 'default'",
                              _shortcuts(True)),
    "lsuv": Scheme("lsuv_(): orthogonal, then each layer rescaled to output std 1 on the batch",
                   lambda model, data, g: lsuv_(model, data, generator=g)),
}  # fmt: skip


#: What ``compare`` runs when no scheme is named: all but the architecture-specific ones (fixup needs residual
#: blocks of fc1/fc2 or conv1/conv2 layers; delta_orthogonal is for conv nets), which are asked for by name.
DEFAULT_SCHEMES = [name for name in SCHEMES if name not in ("fixup", "delta_orthogonal")]


@dataclass
class SchemeResult:
    """One scheme's probe, with the summary ``torchinit compare`` prints."""

    scheme: str
    description: str
    report: SignalReport
    input_grad_norm: float
    spectrum: Tensor | None = None

    @property
    def output_std(self) -> float:
        return self.report.output_std

    @property
    def exploded(self) -> bool:
        return not (math.isfinite(self.output_std) and math.isfinite(self.input_grad_norm)) \
            or self.output_std > EXPLODE_STD

    @property
    def vanished(self) -> bool:
        return not self.exploded and (self.output_std < VANISH_STD or self.input_grad_norm < VANISH_GRAD)

    def summary(self) -> dict[str, Any]:
        """A JSON-safe dict (non-finite floats become None)."""
        d: dict[str, Any] = {
            "scheme": self.scheme, "init": self.description, "output_std": self.output_std,
            "input_grad_norm": self.input_grad_norm, "exploded": self.exploded, "vanished": self.vanished,
        }  # fmt: skip
        if self.spectrum is not None:
            d["jacobian_sigma_min"] = float(self.spectrum.min())
            d["jacobian_sigma_max"] = float(self.spectrum.max())
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def compare(
    build: Callable[[], nn.Module],
    inputs: Tensor,
    schemes: Sequence[str] | None = None,
    *,
    seed: int = 0,
    spectrum: bool = False,
) -> list[SchemeResult]:
    """Build a fresh model per scheme, initialize it with the scheme, and probe it on ``inputs``.

    Every model is built under ``torch.manual_seed(seed + 1)`` (in a forked RNG state, the
    caller's is untouched), so 'default' and the parts a scheme leaves alone are the same
    for every scheme; each scheme draws from a ``torch.Generator`` seeded with ``seed + 1``.
    With ``spectrum``, the singular values of the input-output Jacobian at the first sample
    are computed too (small models only).

    Example:
        >>> from torchinit.diagnostics.models import ResidualMLP
        >>> rows = compare(lambda: ResidualMLP(depth=1), torch.randn(8, 64), ["default", "glass"])
        >>> [r.scheme for r in rows]
        ['default', 'glass']
    """
    names = list(DEFAULT_SCHEMES) if schemes is None else list(schemes)
    unknown = [n for n in names if n not in SCHEMES]
    if unknown:
        raise ValueError(f"unknown scheme(s) {', '.join(map(repr, unknown))}; choose from {', '.join(SCHEMES)}")
    results = []
    for name in names:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            model = build()
            SCHEMES[name].apply(model, inputs, torch.Generator().manual_seed(seed + 1))
        report = probe(model, inputs)  # loss: mean(output ** 2)
        spec = jacobian_spectrum(model, inputs[:1]) if spectrum else None
        results.append(SchemeResult(name, SCHEMES[name].description, report, report.input_grad_norm, spec))
    return results
