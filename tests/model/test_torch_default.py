"""presets.torch_default() is eager construction, bit for bit, for every torch.nn class that owns parameters.

The classes come from ``torch.nn`` itself: every ``nn.Module`` subclass it exports is
built with generic arguments (or, for the few that need specific ones, from the table
below); a class that can be built neither way fails the test, so a new torch class is
noticed. Variants exercise the options that change the init (padding_idx, proj_size,
kdim/vdim, bias_k/v, groups, bias=False, ...).
"""

import inspect
import warnings

import pytest
import torch
from torch import nn

from torchinit.model import presets

#: Classes whose constructors need specific arguments.
SPECIFIC = {
    "AdaptiveLogSoftmaxWithLoss": lambda: nn.AdaptiveLogSoftmaxWithLoss(8, 20, cutoffs=[5, 10], div_value=2.0),
    "TransformerEncoder": lambda: nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16), 3, nn.LayerNorm(8)),
    "TransformerDecoder": lambda: nn.TransformerDecoder(nn.TransformerDecoderLayer(8, 2, 16), 2, nn.LayerNorm(8)),
    "RNNBase": lambda: nn.RNNBase("GRU", 4, 6, num_layers=2),
    "Transformer": lambda: nn.Transformer(8, 2, 2, 2, 16),
    "Unflatten": lambda: nn.Unflatten(1, (2, 2)),
}

#: More configurations of classes whose options change what the constructor does.
VARIANTS = {
    "Embedding": [lambda: nn.Embedding(10, 4, padding_idx=3), lambda: nn.Embedding(10, 4, padding_idx=-1)],
    "EmbeddingBag": [lambda: nn.EmbeddingBag(10, 4, padding_idx=2)],
    "LSTM": [lambda: nn.LSTM(4, 6, num_layers=2, proj_size=3, bidirectional=True), lambda: nn.LSTM(4, 6, bias=False)],
    "GRU": [lambda: nn.GRU(4, 6, num_layers=2, bidirectional=True)],
    "MultiheadAttention": [
        lambda: nn.MultiheadAttention(8, 2, kdim=5, vdim=3),
        lambda: nn.MultiheadAttention(8, 2, add_bias_kv=True, bias=False),
        lambda: nn.MultiheadAttention(8, 2, add_bias_kv=True, batch_first=True),
    ],
    "Conv2d": [lambda: nn.Conv2d(4, 8, 3, groups=2, bias=False), lambda: nn.Conv2d(4, 4, 3, groups=4)],
    "ConvTranspose2d": [lambda: nn.ConvTranspose2d(4, 6, 3, groups=2)],
    "PReLU": [lambda: nn.PReLU(5, init=0.1)],
    "InstanceNorm2d": [lambda: nn.InstanceNorm2d(4, affine=True)],
    "LayerNorm": [lambda: nn.LayerNorm((3, 4), bias=False)],
    "GroupNorm": [lambda: nn.GroupNorm(2, 4)],
    "TransformerEncoderLayer": [lambda: nn.TransformerEncoderLayer(8, 2, 16, norm_first=True, bias=False)],
    "Bilinear": [lambda: nn.Bilinear(3, 4, 5, bias=False)],
}

GENERIC_ARGS = [(), (4,), (4, 4), (4, 4, 3), (4, 4, 4, 4)]


def torch_module_classes() -> list[type]:
    found = {c for c in vars(nn).values() if inspect.isclass(c) and issubclass(c, nn.Module) and c is not nn.Module}
    return sorted(found, key=lambda c: c.__name__)


def builder(cls: type):
    """A zero-argument function building ``cls``: from the table, or with the first generic arguments that work."""
    if cls.__name__ in SPECIFIC:
        return SPECIFIC[cls.__name__]
    for args in GENERIC_ARGS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cls(*args)
        except Exception:  # try the next arguments
            continue
        return lambda: cls(*args)
    return None


CASES = []
for cls in torch_module_classes():
    CASES.append(pytest.param(cls.__name__, None, id=cls.__name__))
    for i, build in enumerate(VARIANTS.get(cls.__name__, [])):
        CASES.append(pytest.param(cls.__name__, build, id=f"{cls.__name__}-variant{i}"))


def state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict(keep_vars=True).items()}


@pytest.mark.parametrize("name,build", CASES)
def test_torch_default_equals_eager_construction(name, build):
    cls = getattr(nn, name)
    build = build or builder(cls)
    assert build is not None, f"torch.nn.{name}: add a constructor for it to SPECIFIC (no generic arguments work)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own construction warnings (nested tensors, ...)
        torch.manual_seed(0)
        eager = build()
        if not list(eager.parameters()):
            return  # owns no parameters: nothing to initialize
        other = build()
        lazy = [n for n, p in other.named_parameters() if isinstance(p, nn.parameter.UninitializedParameter)]
        if lazy:  # values exist only after the first forward (then the module is its non-lazy class)
            report = presets.torch_default().apply_(other)
            assert sorted(report.untouched) == sorted(lazy)
            return
        with torch.no_grad():  # every parameter differs from eager's, so the comparison can fail
            for p in other.parameters():
                p.add_(1.0)
        torch.manual_seed(0)
        report = presets.torch_default().apply_(other)
    assert report.untouched == [], f"{name}: not covered: {report.untouched}"
    want, got = state(eager), state(other)
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), f"{name}: {k} differs from eager construction"


def test_torch_default_keeps_other_rules_and_generator():
    """A later rule still wins inside a composite unit, and a generator makes the result reproducible."""
    from torchinit import Policy, Zeros

    policy = presets.torch_default() + Policy([("out_proj.weight", Zeros())])
    a, b = nn.MultiheadAttention(8, 2), nn.MultiheadAttention(8, 2)
    policy.apply_(a, generator=torch.Generator().manual_seed(5))
    policy.apply_(b, generator=torch.Generator().manual_seed(5))
    assert bool((a.out_proj.weight == 0).all())
    for x, y in zip(a.parameters(), b.parameters()):
        assert torch.equal(x, y)
    state_before = torch.random.get_rng_state()
    policy.apply_(a, generator=torch.Generator().manual_seed(6))
    assert torch.equal(torch.random.get_rng_state(), state_before)  # the global RNG is left alone
    assert not torch.equal(a.in_proj_weight, b.in_proj_weight)


def test_torch_default_through_materialize():
    """As the policy of materialize_, torch_default gives torch's init on a deferred model (values staged first)."""
    import torchinit as ti

    def build():
        return nn.Sequential(nn.MultiheadAttention(8, 2), nn.LSTM(4, 6), nn.Embedding(10, 4, padding_idx=1))

    with ti.deferred():
        model = build()
    report = ti.materialize_(model, presets.torch_default(), generator=torch.Generator().manual_seed(0))
    assert {r.rule for r in report} == {"#0 Module"}
    assert bool((model[0].out_proj.bias == 0).all()) and bool((model[0].in_proj_bias == 0).all())
    assert bool((model[2].weight[1] == 0).all()) and float(model[2].weight.detach().std()) > 0.5
    bound = 1 / 6**0.5
    weight_hh = model[1].weight_hh_l0.detach()
    assert float(weight_hh.abs().max()) <= bound and float(weight_hh.std()) > bound / 3


REPARAMETRIZED = {
    "weight_norm": lambda: nn.utils.weight_norm(nn.Linear(5, 4)),
    "weight_norm_conv_dim": lambda: nn.utils.weight_norm(nn.Conv2d(3, 4, 3), dim=1),
    "parametrizations.weight_norm": lambda: nn.utils.parametrizations.weight_norm(nn.Linear(5, 4)),
    "parametrizations.spectral_norm": lambda: nn.utils.parametrizations.spectral_norm(nn.Linear(5, 4)),
}


@pytest.mark.parametrize("name", REPARAMETRIZED)
def test_torch_default_on_reparametrized_modules(name):
    """The module was initialized before its weight was reparametrized: g and v (or original0/1) follow from it."""
    build = REPARAMETRIZED[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # weight_norm's deprecation
        torch.manual_seed(0)
        eager = build()
        other = build()
        with torch.no_grad():
            for p in other.parameters():
                p.add_(1.0)
        torch.manual_seed(0)
        report = presets.torch_default().apply_(other)
    assert report.untouched == []
    want, got = eager.state_dict(), other.state_dict()
    for k in want:
        if k.endswith("._u") or k.endswith("._v"):  # spectral_norm's power-iteration vectors: drawn, not reset
            continue
        assert torch.equal(want[k], got[k]), k


def test_per_parameter_torch_defaults_stay_public():
    """TorchWeight/TorchBias, the per-parameter pieces of torch's Linear/Conv default, as a policy of one's own."""
    import torchinit.model.presets as module
    from torchinit import Policy

    assert all(hasattr(module, name) for name in module.__all__)
    torch.manual_seed(3)
    eager = nn.Conv2d(4, 6, 3, groups=2)
    other = nn.Conv2d(4, 6, 3, groups=2)
    torch.manual_seed(3)
    Policy([(nn.Conv2d, {"weight": presets.TorchWeight(), "bias": presets.TorchBias()})]).apply_(other)
    assert torch.equal(eager.weight, other.weight) and torch.equal(eager.bias, other.bias)
