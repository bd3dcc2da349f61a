"""Compare a model materialized by torchinit with the same model built eagerly.

Which entries are deterministic is derived, not assumed: the model is built eagerly under
three seeds, and an entry equal in all three is deterministic (a one, a zero, a padding
row, a constant, a computed buffer); it must match exactly. (Two seeds are not enough:
in a million float32 draws, one pair of entries at the same index is equal by chance.)
The other entries are random: the materialized ones must have the mean and the std of
the eager ones, within tolerances derived from the sample size. The std is taken over
the entries within 10 robust standard deviations of the median, so that a rare legal
outlier does not decide it: timm's trunc_normal_ turns a uniform draw of exactly -1
(probability 2^-24 per entry) into the lower bound, -2 for std 0.02.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by qualified name (tied ones under each name)."""
    out = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        out[name] = p.detach()
    for name, b in model.named_buffers(remove_duplicate=False):
        out[name] = b.detach()
    return out


def differences(build: Callable[[], nn.Module], materialized: nn.Module, sigmas: float = 6.0) -> list[str]:
    """The names of the tensors of ``materialized`` that differ from eager ``build()``, with the reason."""
    torch.manual_seed(1)
    first = state(build())
    torch.manual_seed(2)
    second = state(build())
    torch.manual_seed(3)
    third = state(build())
    got = state(materialized)
    problems = []
    if set(got) != set(first):
        problems.append(f"names differ: {sorted(set(got) ^ set(first))}")
    for name, a in first.items():
        m = got.get(name)
        if m is None:
            continue
        if m.is_meta or m.shape != a.shape or m.dtype != a.dtype:
            problems.append(
                f"{name}: meta={m.is_meta} shape {tuple(m.shape)} dtype {m.dtype}, eager {tuple(a.shape)} {a.dtype}"
            )
            continue
        b, c = second[name], third[name]
        if a.is_complex():  # real and imaginary parts compared as entries of their own
            a, b, c, m = (torch.view_as_real(t) for t in (a, b, c, m))
        fixed = (a == b) & (a == c)
        if a.is_floating_point():
            fixed |= a.isnan() & b.isnan() & c.isnan()
        if not torch.equal(m[fixed], a[fixed]):
            bad = int((m[fixed] != a[fixed]).sum())
            problems.append(f"{name}: {bad} of {int(fixed.sum())} deterministic entries differ")
            continue
        rand = ~fixed
        n = int(rand.sum())
        if n == 0:
            continue
        ref = _core(torch.cat([a[rand].double(), b[rand].double(), c[rand].double()]))
        x = _core(m[rand].double())
        if not bool(torch.isfinite(x).all()):
            problems.append(f"{name}: non-finite random entries")
            continue
        n = x.numel()
        sd = float(ref.std()) if ref.numel() > 1 else 0.0
        mean_tol = sigmas * sd * math.sqrt(1 / n + 1 / ref.numel())
        if abs(float(x.mean()) - float(ref.mean())) > mean_tol + 1e-12:
            problems.append(
                f"{name}: mean {float(x.mean()):.4g}, eager {float(ref.mean()):.4g} (tolerance {mean_tol:.2g})"
            )
            continue
        if n >= 8:
            kurt = float(((ref - ref.mean()) ** 4).mean() / max(sd**4, 1e-300)) if sd > 0 else 3.0
            rel = sigmas * math.sqrt(max(kurt - 1, 0.5) / 4 * (1 / n + 1 / ref.numel()))
            xs = float(x.std())
            if abs(xs - sd) > rel * sd + 1e-12:
                problems.append(f"{name}: std {xs:.4g}, eager {sd:.4g} (relative tolerance {rel:.2g})")
    return problems


def _core(x: torch.Tensor, width: float = 10.0) -> torch.Tensor:
    """The entries within ``width`` robust standard deviations (1.4826 MAD) of the median."""
    if x.numel() < 8:
        return x
    med = x.median()
    spread = 1.4826 * (x - med).abs().median()
    if float(spread) == 0:
        return x
    return x[(x - med).abs() <= width * spread]
