"""torchinit.mup against Microsoft's mup package (1.0.0, test-only): the same training dynamics, step by step.

The mup package puts the readout's 1/m in the forward pass (MuReadout: logits W x / m, W at the base width's scale,
the input column's learning rate); torchinit.mup puts it in the init and the learning rate of a plain readout
(torchinit.mup.rules). Starting both from the same effective weights (ours = theirs / m for the readout), AdamW
and SGD, with weight decay, must give the same losses and the same effective weights at every step.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchinit.mup as mup
from conftest import std_tolerance

mu = pytest.importorskip("mup", reason="the mup package (a test-only dependency) is not installed")

BASE, WIDTH = 32, 128  # m = 4
STEPS = 8


class MLP(nn.Module):
    def __init__(self, width: int, readout: type[nn.Linear] = nn.Linear) -> None:
        super().__init__()
        self.inp = nn.Linear(8, width)
        self.hid = nn.Linear(width, width)
        self.out = readout(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.hid(F.relu(self.inp(x)))))


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.heads = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(a)
        return x + self.fc2(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    """A GPT-2-style decoder: token and position embeddings, pre-norm blocks, a final norm and an untied readout."""

    def __init__(self, d: int, readout: type[nn.Linear] = nn.Linear) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(32, d), nn.Embedding(8, d)
        self.blocks = nn.ModuleList([Block(d), Block(d)])
        self.ln = nn.LayerNorm(d)
        self.out = readout(d, 32)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.out(self.ln(x)).flatten(0, 1)


def _data(family: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    if family == "mlp":
        return torch.randn(16, 8, generator=g, dtype=torch.float64), torch.randint(0, 10, (16,), generator=g)
    idx = torch.randint(0, 32, (4, 8), generator=g)
    return idx, torch.randint(0, 32, (32,), generator=g)


def _pair(family: str) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(theirs with MuReadout and base shapes set, ours with the same effective weights, our base on meta)."""
    build = MLP if family == "mlp" else GPT
    torch.manual_seed(0)
    theirs = build(WIDTH, mu.MuReadout).double()
    mu.set_base_shapes(theirs, build(BASE, mu.MuReadout))
    ours = build(WIDTH).double()
    with torch.no_grad():
        for (name, mine), theirs_p in zip(ours.named_parameters(), theirs.parameters()):
            scale = 1 / theirs.out.width_mult() if name == "out.weight" else 1.0  # W_eff = W / m
            mine.copy_(theirs_p * scale)
    with torch.device("meta"):
        base = build(BASE)
    return theirs, ours, base


def _optimizers(kind: str, theirs: nn.Module, ours: nn.Module, base: nn.Module):
    lr, wd = (3e-3, 0.05) if kind == "adamw" else (0.05, 1e-3)
    if kind == "adamw":  # eps tiny: it is added to gradients m times smaller in the package's readout
        return mu.MuAdamW(theirs.parameters(), lr=lr, weight_decay=wd, eps=1e-30), torch.optim.AdamW(
            mup.param_groups(ours, base, lr=lr, weight_decay=wd), eps=1e-30)
    return mu.MuSGD(theirs.parameters(), lr=lr, weight_decay=wd), torch.optim.SGD(
        mup.param_groups(ours, base, lr=lr, optimizer="sgd", weight_decay=wd))


@pytest.mark.parametrize("family", ["mlp", "gpt"])
@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_same_dynamics_as_the_mup_package(family: str, kind: str):
    theirs, ours, base = _pair(family)
    opt_theirs, opt_ours = _optimizers(kind, theirs, ours, base)
    x, y = _data(family)
    for step in range(STEPS):
        losses = []
        for model, opt in ((theirs, opt_theirs), (ours, opt_ours)):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        # float64 throughout: the two differ only by rounding (W (x / m) against (W / m) x)
        assert losses[0] == pytest.approx(losses[1], rel=1e-10), (step, losses)
    with torch.no_grad():
        effective = theirs.out.weight / theirs.out.width_mult()
    assert torch.allclose(ours.out.weight, effective, rtol=1e-9, atol=1e-12)
    assert torch.allclose(ours.hid.weight if family == "mlp" else ours.blocks[0].fc.weight,
                          theirs.hid.weight if family == "mlp" else theirs.blocks[0].fc.weight, rtol=1e-9, atol=1e-12)


def test_training_moves_the_weights():
    """The comparison above is not vacuous: a wrong multiplier (the standard parametrization's groups) diverges."""
    theirs, ours, _ = _pair("mlp")
    opt_theirs = mu.MuAdamW(theirs.parameters(), lr=3e-3)
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=3e-3)  # every group at lr: not muP
    x, y = _data("mlp")
    for model, opt in ((theirs, opt_theirs), (ours, opt_ours)):
        for _ in range(STEPS):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert not torch.allclose(ours.hid.weight, theirs.hid.weight, rtol=1e-3)


def test_init_as_the_mup_package():
    """policy(std=s) draws what mup.init.normal_(std=s) gives the package's model (hidden weights s / sqrt(m); the
    readout s at the base scale, s / m effective through MuReadout), layer by layer, at m = 16."""
    torch.manual_seed(1)
    theirs = mu.set_base_shapes(MLP(1024, mu.MuReadout), MLP(64, mu.MuReadout))
    for p in (theirs.inp.weight, theirs.hid.weight, theirs.out.weight):
        mu.init.normal_(p, std=0.02)
    ours = MLP(1024)
    with torch.device("meta"):
        base = MLP(64)
    mup.policy(ours, base, std=0.02).apply_(ours, seed=0)
    with torch.no_grad():
        effective = {"inp": theirs.inp.weight, "hid": theirs.hid.weight, "out": theirs.out.weight / 16}
    for name, want in effective.items():
        got = getattr(ours, name).weight.detach()
        tol = 2 * std_tolerance(got.numel())  # two independent samples of the same std
        assert float(got.std()) == pytest.approx(float(want.detach().std()), rel=tol), name
    assert float(ours.hid.weight.detach().std()) == pytest.approx(0.02 / 4, rel=std_tolerance(1024 * 1024))
