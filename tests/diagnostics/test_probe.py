"""probe() and jacobian_spectrum(): per-layer statistics against plain hooks, execution order, tuple outputs,
the model left as found, plots and errors, and the Jacobian's singular values."""

import math
import sys

import pytest
import torch
from torch import nn

import torchinit as ti
from conftest import gen
from torchinit.diagnostics.probing import jacobian_spectrum, probe


def manual_stats(model: nn.Module, x: torch.Tensor, layers: list[nn.Module]):
    """Reference statistics with plain hooks and retain_grad on a model without in-place ops."""
    outs = []

    def keep(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        output.retain_grad()
        outs.append(output)

    handles = [m.register_forward_hook(keep) for m in layers]
    y = model(x.clone().requires_grad_(True))
    y.pow(2).mean().backward()
    for h in handles:
        h.remove()
    model.zero_grad(set_to_none=True)
    stats = []
    for o in outs:
        assert o.grad is not None
        stats.append((float(o.detach().mean()), float(o.detach().std()), float(o.grad.std())))
    return stats


def weight_of(module: nn.Module) -> torch.Tensor:
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def mlp(inplace: bool) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(inplace=inplace), nn.Linear(32, 32), nn.Tanh(),
                         nn.Linear(32, 8))


def test_stats_equal_manual_hooks_with_inplace_relu():
    x = torch.randn(128, 16, generator=gen())
    model = mlp(inplace=True)
    report = probe(model, x)
    ref_model = mlp(inplace=False)
    reference = manual_stats(ref_model, x, [ref_model[0], ref_model[2], ref_model[4]])
    assert [r["name"] for r in report.rows] == ["0", "2", "4"]
    for row, (mean, std, grad) in zip(report.rows, reference):
        assert row["act_mean"] == pytest.approx(mean, rel=1e-5, abs=1e-7)
        assert row["act_std"] == pytest.approx(std, rel=1e-5)
        assert row["grad_std"] == pytest.approx(grad, rel=1e-5)
    assert report.rows[0]["fan_in"] == 16 and report.rows[0]["fan_out"] == 32
    assert report.rows[0]["weight_std"] == pytest.approx(float(weight_of(model[0]).detach().std()), rel=1e-6)
    assert report.output_std == pytest.approx(float(model(x).detach().std()), rel=1e-5)


class Reordered(nn.Module):
    """Registration order b, shared, a; execution order a, shared, b, shared (called twice)."""

    def __init__(self):
        super().__init__()
        self.b = nn.Linear(8, 8)
        self.shared = nn.Linear(8, 8)
        self.a = nn.Linear(8, 8)

    def forward(self, x):
        return self.shared(self.b(self.shared(self.a(x))))


def test_execution_order_and_modules_called_twice():
    report = probe(Reordered(), torch.randn(32, 8, generator=gen()))
    assert [(r["name"], r["call"]) for r in report.rows] == [("a", 1), ("shared", 1), ("b", 1), ("shared", 2)]
    assert all(math.isfinite(r["grad_std"]) for r in report.rows)
    assert "shared (call 2)" in str(report)


class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(8, 16, batch_first=True)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        h, _ = self.lstm(x)
        a, _ = self.attn(h, h, h)
        return self.head(a)


def test_tuple_outputs():
    report = probe(Recurrent(), torch.randn(4, 5, 8, generator=gen()))
    assert [r["name"] for r in report.rows] == ["lstm", "attn", "head"]
    assert report.rows[0]["output_shape"] == (4, 5, 16)
    assert all(math.isfinite(r["grad_std"]) and r["grad_std"] > 0 for r in report.rows)


def test_model_left_exactly_as_found():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 2))
    model.train()
    model[4].eval()  # mixed modes stay mixed
    model[0].weight.grad = torch.ones_like(weight_of(model[0]))  # an existing .grad is kept as it was
    before = {k: v.clone() for k, v in model.state_dict().items()}
    probe(model, torch.randn(8, 3, 8, 8, generator=gen()))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm running stats included
    assert model.training and model[1].training and not model[4].training
    assert torch.equal(model[0].weight.grad, torch.ones_like(weight_of(model[0])))
    assert model[4].weight.grad is None
    assert all(not m._forward_hooks for m in model.modules())


def test_report_plot(tmp_path, monkeypatch):
    report = probe(mlp(inplace=True), torch.randn(64, 16, generator=gen()))
    path = tmp_path / "probe.png"
    report.plot(str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'torchinit\[plot\]'"):
        report.plot(str(tmp_path / "again.png"))


def test_probe_errors():
    with pytest.raises(TypeError, match=r"model must be an nn\.Module"):
        probe(torch.zeros(2), torch.zeros(2))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="scalar"):
        probe(nn.Linear(3, 3), torch.randn(2, 3), loss=lambda out: out)


def test_jacobian_spectrum():
    layer = nn.Linear(16, 16, bias=False)
    ti.orthogonal_(layer.weight, generator=gen())
    sv = jacobian_spectrum(layer, torch.randn(1, 16, generator=gen()))
    assert torch.allclose(sv, torch.ones(16, dtype=torch.float64), atol=1e-6)
    two = nn.Sequential(nn.Linear(8, 12, bias=False), nn.Linear(12, 5, bias=False))
    want = torch.linalg.svdvals((weight_of(two[1]) @ weight_of(two[0])).double().detach())
    got = jacobian_spectrum(two, torch.randn(1, 8, generator=gen()))
    assert torch.allclose(got, want, rtol=1e-5) and two[0].weight.grad is None
