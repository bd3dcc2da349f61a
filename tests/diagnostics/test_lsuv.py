"""lsuv_: every layer within tol, execution order, inplace ReLU, residuals, shared modules."""


import pytest
import torch
from torch import nn

from conftest import gen
from torchinit.diagnostics.lsuv import lsuv_
from torchinit.diagnostics.models import ResidualMLP, SmallCNN


def output_stds(model: nn.Module, data: torch.Tensor) -> dict[str, float]:
    """Each Linear/conv layer's output std at its first call, measured independently with plain hooks."""
    stds: dict[str, float] = {}
    handles = []

    def record(name):
        def hook(module, inputs, output):
            stds.setdefault(name, float(output.detach().std()))  # returns None: the output is not replaced
        return hook

    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
            handles.append(m.register_forward_hook(record(name)))
    with torch.no_grad():
        model.eval()
        model(data)
    for h in handles:
        h.remove()
    return stds


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(16, 32)
        self.shared = nn.Linear(32, 32)
        self.out = nn.Linear(32, 4)

    def forward(self, x):
        h = torch.relu(self.shared(torch.relu(self.inp(x))))
        return self.out(torch.relu(self.shared(h)))


MODELS = {
    "mlp-inplace": (lambda: nn.Sequential(nn.Linear(32, 64), nn.ReLU(inplace=True), nn.Linear(64, 64),
                                          nn.ReLU(inplace=True), nn.Linear(64, 8)), (512, 32)),
    "residual": (lambda: ResidualMLP(depth=2), (512, 64)),
    "cnn": (lambda: SmallCNN(depth=1), (32, 3, 16, 16)),
    "shared": (Shared, (512, 16)),
}


@pytest.mark.parametrize("kind", MODELS)
def test_every_layer_within_tol(kind):
    build, shape = MODELS[kind]
    torch.manual_seed(0)
    model = build()
    data = torch.randn(*shape, generator=gen(1))
    report = lsuv_(model, data, generator=gen(2))
    assert report.not_converged == []
    stds = output_stds(model, data)
    assert set(stds) == {r.name for r in report.rows}
    for name, std in stds.items():
        assert abs(std - 1.0) <= 0.02, (name, std)


def test_execution_order_not_registration_order():
    class Reordered(nn.Module):
        def __init__(self):
            super().__init__()
            self.second = nn.Linear(8, 8)
            self.first = nn.Linear(8, 8)

        def forward(self, x):
            return self.second(torch.relu(self.first(x)))

    report = lsuv_(Reordered(), torch.randn(256, 8, generator=gen()), generator=gen())
    assert [r.name for r in report.rows] == ["first", "second"]


def test_modes_restored_biases_untouched_no_hooks_left():
    first, last = nn.Linear(16, 16), nn.Linear(16, 16)
    model = nn.Sequential(first, nn.Dropout(0.5), last)
    model.train()
    last.eval()
    biases = [first.bias.detach().clone(), last.bias.detach().clone()]
    lsuv_(model, torch.randn(256, 16, generator=gen()), generator=gen())
    assert model.training and model[1].training and not last.training
    assert torch.equal(first.bias, biases[0]) and torch.equal(last.bias, biases[1])
    assert all(not m._forward_hooks for m in model.modules())


def test_warns_naming_the_layer_that_does_not_converge():
    second = nn.Linear(16, 16)
    model = nn.Sequential(nn.Linear(16, 16), second)
    with torch.no_grad():
        second.bias.copy_(torch.linspace(-30, 30, 16))  # a bias that alone has std ~ 18: out of reach
    with pytest.warns(UserWarning, match=r"did not reach std 1.0 .*: 1$"):
        report = lsuv_(model, torch.randn(256, 16, generator=gen()), generator=gen(), max_iter=4)
    assert report.not_converged == ["1"] and report.rows[1].iterations == 4
    assert "NO" in str(report)


def test_deterministic_with_generator():
    data = torch.randn(128, 64, generator=gen())
    torch.manual_seed(0)
    a = ResidualMLP(depth=1)
    torch.manual_seed(1)  # different biases (LSUV keeps them), the same weights after LSUV's orthogonal start
    b = ResidualMLP(depth=1)
    b.load_state_dict(a.state_dict())
    lsuv_(a, data, generator=gen(5))
    lsuv_(b, data, generator=gen(5))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_progress_bar(capsys):
    lsuv_(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8)), torch.randn(64, 8, generator=gen()), generator=gen(),
          progress=True)
    err = capsys.readouterr().err
    assert "lsuv_ [" in err and "2/2" in err


def test_bad_arguments():
    model = nn.Linear(4, 4)
    with pytest.raises(ValueError, match="target_std"):
        lsuv_(model, torch.randn(8, 4), target_std=0.0)
    with pytest.raises(ValueError, match="tol"):
        lsuv_(model, torch.randn(8, 4), tol=-1.0)
    with pytest.raises(ValueError, match="max_iter"):
        lsuv_(model, torch.randn(8, 4), max_iter=0)
    with pytest.raises(TypeError, match=r"nn\.Module"):
        lsuv_(torch.zeros(3), torch.randn(8, 4))  # type: ignore[arg-type]
