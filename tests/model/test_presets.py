"""Presets on real models: transformers' GPT-2, a nanoGPT-style model, a ResNet, a ViT, Fixup."""

import functools
import inspect
import math
import pickle
from collections.abc import Callable
from copy import deepcopy

import pytest
import torch
from torch import nn

import torchinit as ti
from _thirdparty import need
from conftest import gen, std_tolerance
from torchinit.model import presets


def std_of(p: torch.Tensor) -> float:
    return float(p.detach().std())


# ---------------------------------------------------------------- torch_default


def test_torch_default_is_what_constructors_do():
    def build():
        return nn.Sequential(nn.Linear(6, 5), nn.Conv2d(3, 4, 3), nn.ConvTranspose2d(4, 6, 3, groups=2),
                             nn.Conv1d(4, 8, 3, groups=4), nn.Embedding(7, 3), nn.LayerNorm(4), nn.BatchNorm2d(3))

    torch.manual_seed(11)
    eager = build()
    model = build()
    torch.manual_seed(11)
    report = presets.torch_default().apply_(model)
    assert report.untouched == []
    for (name, a), b in zip(eager.named_parameters(), model.parameters()):
        assert torch.equal(a, b), name


# ---------------------------------------------------------------- gpt2


def gpt2_model(n_layer=3):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=n_layer, n_embd=64, n_head=4, vocab_size=211, n_positions=32, bos_token_id=0,
                        eos_token_id=0)
    return GPT2LMHeadModel(config)


def check_gpt2(model: nn.Module, n_layer: int, conv_type: type) -> None:
    c_proj = [n for n, _ in model.named_parameters() if n.endswith("c_proj.weight")]
    assert len(c_proj) == 2 * n_layer  # attn.c_proj and mlp.c_proj of every block
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        owner = model.get_submodule(name.rsplit(".", 1)[0])
        if name.endswith("c_proj.weight"):
            want = 0.02 / math.sqrt(2 * n_layer)
            assert std_of(p) == pytest.approx(want, rel=std_tolerance(p.numel())), name
        elif isinstance(owner, (conv_type, nn.Embedding)) and leaf == "weight":
            assert std_of(p) == pytest.approx(0.02, rel=std_tolerance(p.numel())), name
        elif leaf == "bias" and isinstance(owner, conv_type):
            assert bool((p == 0).all()), name
        elif "ln" in name:
            assert bool((p == (1 if leaf == "weight" else 0)).all()), name


def test_gpt2_on_transformers_model():
    need("transformers")
    from transformers.pytorch_utils import Conv1D

    model = gpt2_model(3)
    report = presets.gpt2(3).apply_(model, strict=True, generator=gen())
    assert report.untouched == [] and model.lm_head.weight is model.transformer.wte.weight
    check_gpt2(model, 3, Conv1D)
    rules = {r.name: r.rule for r in report}
    assert rules["transformer.h.0.attn.c_proj.weight"] == "#6 '*.c_proj.weight'"
    assert rules["transformer.h.2.mlp.c_proj.weight"] == "#6 '*.c_proj.weight'"


class LayerNorm(nn.Module):
    """nanoGPT's LayerNorm: its own class (same name, not an nn.LayerNorm), optional bias."""

    def __init__(self, dim, bias=True):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x):
        return nn.functional.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class NanoBlock(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln_1, self.ln_2 = LayerNorm(d), LayerNorm(d)
        self.attn = nn.Module()
        self.attn.c_attn, self.attn.c_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Module()
        self.mlp.c_fc, self.mlp.c_proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)


class NanoGPT(nn.Module):
    def __init__(self, n_layer=4, d=64, vocab=300):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(wte=nn.Embedding(vocab, d), wpe=nn.Embedding(32, d),
                                              h=nn.ModuleList(NanoBlock(d) for _ in range(n_layer)),
                                              ln_f=LayerNorm(d)))
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.transformer.wte.weight = self.lm_head.weight


def test_gpt2_on_nanogpt_and_no_compounding():
    model = NanoGPT()
    policy = presets.gpt2(4)
    policy.apply_(model, strict=True, generator=gen(1))
    check_gpt2(model, 4, nn.Linear)
    first = {k: v.clone() for k, v in model.state_dict().items()}
    policy.apply_(model, strict=True, generator=gen(1))  # applying twice: same values, no extra depth scaling
    assert all(torch.equal(first[k], v) for k, v in model.state_dict().items())


# ---------------------------------------------------------------- resnet (+ glass on the shortcuts)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c // 4, 1, bias=False), nn.BatchNorm2d(c // 4)
        self.conv2, self.bn2 = nn.Conv2d(c // 4, c // 4, 3, padding=1, bias=False), nn.BatchNorm2d(c // 4)
        self.conv3, self.bn3 = nn.Conv2d(c // 4, c, 1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        return torch.relu(self.bn3(self.conv3(out)) + x)


class ResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.layer1 = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 32, stride=2), Bottleneck(32))
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.layer1(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


def test_resnet_zero_init_residual():
    model = ResNet()
    report = presets.resnet().apply_(model, generator=gen())
    last = {"layer1.0.bn2.weight", "layer1.1.bn2.weight", "layer1.2.bn3.weight"}
    for name, p in model.named_parameters():
        if name in last:
            assert bool((p == 0).all()), name
        elif ".bn" in name or name.startswith("bn") or "downsample.1" in name:
            assert bool((p == (1 if name.endswith("weight") else 0)).all()), name
    conv = model.layer1[0].conv2.weight  # fan_out = 16 * 9
    assert std_of(conv) == pytest.approx(math.sqrt(2 / (16 * 9)), rel=std_tolerance(conv.numel()))
    assert set(report.untouched) == {"fc.weight", "fc.bias"}  # torchvision leaves fc to its default
    model.eval()
    x = torch.randn(2, 16, 8, 8)
    block = model.layer1[0]  # the branch is zero at init: the block is relu(identity)
    assert torch.equal(block(x), torch.relu(x))
    assert [r.rule for r in report if r.name == "layer1.2.bn3.weight"] == ["#4 last_bnN_of_block()"]


def test_resnet_without_zero_init():
    model = ResNet()
    presets.resnet(zero_init_residual=False).apply_(model)
    assert bool((model.layer1[0].bn2.weight == 1).all())


@pytest.mark.parametrize("isometric", [False, True])
def test_glass_on_every_projection_shortcut(isometric):
    model = ResNet()
    report = (presets.resnet() + presets.glass_shortcuts(isometric=isometric)).apply_(model, generator=gen())
    rows = {r.name: r for r in report}
    assert rows["layer1.1.downsample.0.weight"].initializer.startswith("Glass(")
    assert rows["layer1.1.conv1.weight"].initializer.startswith("KaimingNormal(")
    w = model.layer1[1].downsample[0].weight.detach()  # (32, 16, 1, 1)
    if isometric:
        m = w.reshape(32, 16).double()
        assert torch.allclose(m.T @ m, torch.eye(16, dtype=torch.float64), atol=1e-6)
    else:
        assert torch.equal(w.abs(), ti.glass_(torch.empty(32, 16, 1, 1), zero_mean=False))


# ---------------------------------------------------------------- vit_jax


class TinyViT(nn.Module):
    def __init__(self, d=64, depth=2):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, d, 4, 4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, d))
        self.pos_embed = nn.Parameter(torch.randn(1, 17, d))
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            b = nn.Module()
            b.norm1, b.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
            b.attn = nn.Module()
            b.attn.qkv, b.attn.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            b.mlp = nn.Module()
            b.mlp.fc1, b.mlp.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
            self.blocks.append(b)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 10)


def test_vit_jax():
    model = TinyViT()
    report = presets.vit_jax().apply_(model, strict=True, generator=gen())
    assert report.untouched == []
    sigma_u = 0.02 / ti.truncated_std_factor(2.0)
    pos = model.pos_embed.detach()
    assert float(pos.abs().max()) <= 2 * sigma_u  # sigma-relative bounds: truncated at +-2 sigma
    assert bool((model.cls_token == 0).all()) and bool((model.head.weight == 0).all())
    fc_bias = model.blocks[0].mlp.fc1.bias.detach()
    assert 0 < float(fc_bias.abs().max()) < 1e-5
    assert bool((model.blocks[0].attn.qkv.bias == 0).all())
    w = model.blocks[0].attn.qkv.weight.detach()
    assert float(w.abs().max()) <= math.sqrt(6 / (64 + 192))
    patch = model.patch_embed.proj.weight.detach()  # lecun normal (truncated): std sqrt(1 / fan_in)
    assert float(patch.abs().max()) <= 2 * math.sqrt(1 / 48) / ti.truncated_std_factor(2.0)


# ---------------------------------------------------------------- fixup


class FixupBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.bias1a, self.bias1b = nn.Parameter(torch.randn(1)), nn.Parameter(torch.randn(1))
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bias2a, self.bias2b = nn.Parameter(torch.randn(1)), nn.Parameter(torch.randn(1))
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.scale = nn.Parameter(torch.randn(1))


class FixupNet(nn.Module):
    def __init__(self, blocks=8, c=16):
        super().__init__()
        self.conv1 = nn.Conv2d(3, c, 3, padding=1, bias=False)
        self.layers = nn.Sequential(*[FixupBlock(c) for _ in range(blocks)])
        self.fc = nn.Linear(c, 10)


def test_fixup():
    model = FixupNet(blocks=8)
    report = presets.fixup(8, 2).apply_(model, strict=True, generator=gen())
    assert report.untouched == []
    for block in model.layers:
        assert bool((block.conv2.weight == 0).all())
        assert all(float(getattr(block, n).detach()) == 0 for n in ("bias1a", "bias1b", "bias2a", "bias2b"))
        assert float(block.scale.detach()) == 1
    w = torch.cat([b.conv1.weight.detach().reshape(-1) for b in model.layers])
    want = math.sqrt(2 / (16 * 9)) * 8 ** -0.5  # He (fan_out) times L^(-1/(2m-2)), m = 2
    assert float(w.std()) == pytest.approx(want, rel=std_tolerance(w.numel()))
    assert bool((model.fc.weight == 0).all()) and bool((model.fc.bias == 0).all())
    stem = model.conv1.weight.detach()
    assert std_of(stem) == pytest.approx(math.sqrt(2 / (16 * 9)), rel=std_tolerance(stem.numel()) * 2)


def test_preset_argument_errors():
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="n_layer"):
            presets.gpt2(bad)
    with pytest.raises(ValueError, match="branch_depth"):
        presets.fixup(4, 1)
    with pytest.raises(ValueError, match="names"):
        presets.glass_shortcuts(names=())


# ---------------------------------------------------------------- every preset pickles


#: The required arguments of the presets that have some; a new preset with required arguments fails
#: test_every_preset_pickles until it is given its arguments here.
PRESET_ARGUMENTS: dict[str, dict] = {"gpt2": {"n_layer": 2}, "fixup": {"num_branches": 3}}


def every_preset() -> list[tuple[str, Callable[[], ti.Policy]]]:
    """Every function of the presets module's ``__all__`` that returns a Policy, with its arguments, and the variants
    whose settings build other selectors."""
    found = []
    for name in presets.__all__:
        function = getattr(presets, name)
        signature = inspect.signature(function) if inspect.isfunction(function) else None
        if signature is not None and signature.return_annotation in ("Policy", ti.Policy):
            required = {p.name for p in signature.parameters.values() if p.default is inspect.Parameter.empty}
            assert required <= set(PRESET_ARGUMENTS.get(name, {})), f"give {name} its arguments in PRESET_ARGUMENTS"
            found.append((name, functools.partial(function, **PRESET_ARGUMENTS.get(name, {}))))
    assert len(found) >= 6, found  # torch_default, gpt2, resnet, vit_jax, fixup, glass_shortcuts
    return [*found, ("resnet(zero_init_residual=False)", lambda: presets.resnet(zero_init_residual=False)),
            ("glass_shortcuts(isometric=True)", lambda: presets.glass_shortcuts(isometric=True))]  # fmt: skip


class EveryLayer(nn.Module):
    """A block with a layer for every preset's rules: convs numbered as in Fixup and ResNet blocks, a projection
    shortcut, scalar Fixup parameters, a ``c_proj`` Linear (GPT-2's required rule), norms, an embedding."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2, self.shortcut = nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 1)
        self.bn1, self.bn2 = nn.BatchNorm2d(4), nn.BatchNorm2d(4)
        self.bias1a, self.scale = nn.Parameter(torch.full((1,), 0.5)), nn.Parameter(torch.full((1,), 0.5))
        self.c_proj, self.ln, self.wte = nn.Linear(4, 6), nn.LayerNorm(6), nn.Embedding(5, 6)


def every_layer_model() -> nn.Module:
    model = nn.Sequential(EveryLayer(), EveryLayer())
    model.fc = nn.Linear(6, 3)
    return model


@pytest.mark.parametrize(("name", "make"), every_preset(), ids=[n for n, _ in every_preset()])
def test_every_preset_pickles(name, make):
    """A preset's policy goes to spawn workers: it pickles (no closures), and the copy initializes bit for bit as the
    original does with seed=."""
    policy = make()
    copy = pickle.loads(pickle.dumps(policy))
    assert repr(copy) == repr(policy)
    torch.manual_seed(0)
    original = every_layer_model()
    models = [deepcopy(original), deepcopy(original)]
    reports = [p.apply_(m, seed=7) for p, m in zip((policy, copy), models)]
    assert [(r.name, r.rule) for r in reports[0]] == [(r.name, r.rule) for r in reports[1]]
    changed = [n for (n, a), b in zip(original.state_dict().items(), models[0].state_dict().values())
               if not torch.equal(a, b)]  # fmt: skip
    assert changed, f"{name} changed nothing: the comparison below would prove nothing"
    for (key, a), b in zip(models[0].state_dict().items(), models[1].state_dict().values()):
        assert torch.equal(a, b), key
