"""Golden digests of torchinit's public API: every value it writes, recorded bit for bit.

Each case runs one public call (an initializer function or object on a tensor, ``materialize_`` or
``Policy.apply_`` on a model, a preset, ``fans``, ``calculate_gain``) and reduces its result to a
string or a list: the SHA-256 of a tensor's dtype, shape and raw bytes (:func:`digest`), a model's
``torchinit.fingerprint(model, buffers=True)``, ``float.hex`` of a float, or a list of ints.
``make_golden.py`` writes them to ``digests.json``; ``test_golden.py`` recomputes them and compares.

``digests.json`` was recorded on the code before torchinit was restructured into sub-packages, to
prove that the restructure changes no value. It must never be regenerated to make a test pass: a
difference means the code now writes other bits than it did.

Only the public API is used (``import torchinit as ti``, ``ti.presets``, the names in
``ti.__all__``): module paths inside the package may change, these names may not. The models are
defined here (torch.nn layers only) or come from transformers and timm, which the caller must be
able to import: the tests import them through ``tests/_thirdparty.py`` (torchvision's tolerant
import) and skip the cases that need a missing one (:attr:`Case.requires`).

Every case is independent of the others and of the order they run in: it seeds what it uses and
runs inside ``torch.random.fork_rng``, so the global RNG is left as it was. Cases that pass a
``generator`` or a ``seed`` (or need no randomness) run with the global RNG seeded unpredictably:
a value that read the global RNG anyway would then change from run to run, which the check that
``make_golden.py`` gives the same file twice catches (and the test would fail).

The values depend on torch's CPU kernels too (its vectorized RNG transforms, LAPACK's QR for the
orthogonal family, the linear solve of the truncated normal's polynomial fit) and on the init code
of transformers and timm: compare on the machine and versions ``digests.json`` records under
:data:`ENVIRONMENT_KEY` (:func:`environment`).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import importlib
import importlib.metadata
import math
import os
import platform
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

import torchinit as ti

#: A case's value: a hex digest or ``float.hex`` string, or a list (fans, layouts).
Value = str | list

__all__ = ["ENVIRONMENT_KEY", "Case", "Value", "all_cases", "compute", "compute_case", "digest", "environment"]


@dataclass(frozen=True)
class Case:
    """One golden value: ``run()`` computes it; ``requires`` names the third-party modules it imports."""

    name: str
    run: Callable[[], Value]
    requires: tuple[str, ...] = ()

    @property
    def group(self) -> str:
        """The first two parts of the name (``fn/normal_``, ``model/gpt2``): the unit of a test report."""
        return "/".join(self.name.split("/")[:2])


# ---- digests -------------------------------------------------------------------------------------------------


def digest(t: Tensor) -> str:
    """SHA-256 (hex) of ``t``'s dtype, shape and raw bytes (fp16/bf16 as int16, complex as its real view)."""
    t = t.detach().cpu()
    header = f"{t.dtype}|{tuple(t.shape)}|".encode()
    if t.is_complex():
        t = torch.view_as_real(t.resolve_conj())
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.view(torch.int16)
    t = t.contiguous()
    data = ctypes.string_at(t.data_ptr(), t.numel() * t.element_size()) if t.numel() else b""
    return hashlib.sha256(header + data).hexdigest()


def _model_digest(model: nn.Module) -> str:
    return ti.fingerprint(model, buffers=True)


# ---- randomness ----------------------------------------------------------------------------------------------

#: How a case gets its randomness, and the seed each way uses.
SEEDS = {"generator": 1, "seed": 2, "seed+name": 3, "global": 4}
RANDOM = tuple(SEEDS)
#: The ``name=`` of the ``seed+name`` variant.
NAME = "layer.weight"
#: The global seed models are built under (construction draws from the global RNG).
BUILD_SEED = 1234


def _unpredictable() -> int:
    return int.from_bytes(os.urandom(8), "little") >> 1


@contextlib.contextmanager
def _global_rng(seed: int | None) -> Iterator[None]:
    """The global RNG seeded with ``seed`` (None: an unpredictable seed) inside, and restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_unpredictable() if seed is None else seed)
        yield


@contextlib.contextmanager
def _randomness(variant: str) -> Iterator[dict[str, Any]]:
    """The keyword arguments of ``variant`` (``det``: none, for deterministic calls), with the global RNG set."""
    if variant == "det":
        with _global_rng(None):
            yield {}
        return
    k = SEEDS[variant]
    with _global_rng(k if variant == "global" else None):
        if variant == "generator":
            yield {"generator": torch.Generator().manual_seed(k)}
        elif variant == "seed":
            yield {"seed": k}
        elif variant == "seed+name":
            yield {"seed": k, "name": NAME}
        else:
            yield {}


# ---- initializer functions on tensors ------------------------------------------------------------------------

F32, F64, BF16, F16, C64 = torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.complex64
REAL = (F32, F64, BF16, F16)
ALL = (*REAL, C64)
_DTYPE_NAMES = {F32: "float32", F64: "float64", BF16: "bfloat16", F16: "float16", C64: "complex64",
                torch.int64: "int64"}  # fmt: skip

LINEAR, WIDE, CONV = (16, 8), (8, 24), (8, 4, 3, 3)
#: Elements of the large tensors: above 2**22 and not a multiple of the keyed stream's chunk (2**18).
LARGE = (2051, 2048)


def _shape_label(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def _fill_case(function: str, shape: tuple[int, ...], dtype: torch.dtype, kwargs: dict[str, Any], variant: str,
               transpose: bool = False) -> Callable[[], Value]:
    def run() -> Value:
        t = torch.full(shape, 3, dtype=dtype)  # a sentinel: an element the call does not write keeps it
        target = t.t() if transpose else t
        with _randomness(variant) as randomness:
            getattr(ti, function)(target, **kwargs, **randomness)
        return digest(t)

    return run


@dataclass(frozen=True)
class _Fill:
    """Cases of ``function(tensor, **kwargs)`` over shapes x dtypes x variants; ``label`` tells settings apart."""

    function: str
    kwargs: dict[str, Any]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[torch.dtype, ...]
    variants: tuple[str, ...] = RANDOM
    label: str = ""

    def cases(self, prefix: str = "fn") -> Iterator[Case]:
        for shape in self.shapes:
            for dtype in self.dtypes:
                for variant in self.variants:
                    parts = [prefix, self.function, self.label, _DTYPE_NAMES[dtype], _shape_label(shape), variant]
                    yield Case("/".join(p for p in parts if p),
                               _fill_case(self.function, shape, dtype, self.kwargs, variant))


def _variance(distribution: str, mode: str, shapes: tuple[tuple[int, ...], ...] = (LINEAR, CONV)) -> _Fill:
    return _Fill("variance_scaling_", {"scale": 2.0, "mode": mode, "distribution": distribution}, shapes, ALL,
                 label=f"{distribution}-{mode}")


FILLS: tuple[_Fill, ...] = (
    _Fill("uniform_", {"a": -0.5, "b": 0.5}, (LINEAR, CONV), ALL),
    _Fill("normal_", {"mean": 0.1, "std": 0.5}, (LINEAR, CONV), ALL),
    # the polynomial sampler (bounds within 3.5 std), a one-sided tail (inverse CDF), torch's defaults
    _Fill("trunc_normal_", {"std": 0.5, "a": -1.0, "b": 1.0}, (LINEAR, CONV), REAL, label="poly"),
    _Fill("trunc_normal_", {"mean": 0.0, "std": 1.0, "a": 1.5, "b": 4.0}, (LINEAR,), REAL, label="tail"),
    _Fill("trunc_normal_", {}, (LINEAR,), REAL, label="defaults"),
    _Fill("trunc_normal_std_", {"std": 0.02}, (LINEAR, CONV), ALL),
    _Fill("trunc_normal_std_", {"std": 0.5, "k": 3.0, "mean": 0.1}, (LINEAR,), ALL, label="k3-mean"),
    _Fill("xavier_uniform_", {"gain": 1.5}, (LINEAR, CONV), ALL),
    _Fill("xavier_normal_", {}, (LINEAR, CONV), ALL),
    _Fill("kaiming_uniform_", {"a": math.sqrt(5)}, (LINEAR, CONV), ALL),
    _Fill("kaiming_normal_", {"mode": "fan_out", "nonlinearity": "gelu"}, (LINEAR, CONV), ALL),
    _Fill("lecun_uniform_", {}, (LINEAR, CONV), ALL),
    _Fill("lecun_normal_", {}, (LINEAR, CONV), ALL),
    *(_variance(d, m) for d in ("truncated_normal", "normal", "uniform") for m in ("fan_in", "fan_avg")),
    _variance("truncated_normal", "fan_out", (WIDE,)),
    _variance("normal", "fan_geo_avg", (WIDE,)),
    _Fill("variance_scaling_", {"in_dims": 0, "out_dims": 1}, (WIDE,), ALL, label="in0-out1"),
    _Fill("variance_scaling_", {"distribution": "normal", "batch_dims": 0}, ((4, 16, 8),), ALL, label="batch0"),
    _Fill("variance_scaling_", {"mode": "fan_out", "distribution": "uniform", "blocks": 2}, (LINEAR,), ALL,
          label="fan_out-blocks2"),
    _Fill("orthogonal_", {}, (LINEAR, WIDE, CONV), ALL),
    _Fill("orthogonal_", {"gain": 2.0, "blocks": 2}, (LINEAR,), ALL, label="gain2-blocks2"),
    _Fill("delta_orthogonal_", {}, (CONV, (4, 8, 3, 3), (8, 8, 3)), ALL),
    _Fill("delta_orthogonal_", {"gain": 0.5}, ((6, 6, 3, 3, 3),), ALL, label="gain0.5"),
    _Fill("sparse_", {"sparsity": 0.5}, (LINEAR, CONV), ALL),
    _Fill("sparse_", {"sparsity": 0.25, "std": 0.1}, (WIDE,), ALL, label="sparsity0.25"),
    # glass: random signs (zero_mean=True); deterministic otherwise
    *(_Fill("glass_", {"isometric": iso, "zero_mean": True}, (LINEAR, WIDE, CONV), REAL,
            label=f"isometric={iso}-zero_mean=True") for iso in (False, True)),
    _Fill("glass_", {"sparse": True}, (LINEAR,), REAL, label="sparse"),
    *(_Fill("glass_", {"isometric": iso, "zero_mean": False}, (LINEAR, WIDE, CONV), REAL, ("det",),
            label=f"isometric={iso}-zero_mean=False") for iso in (False, True)),
    _Fill("glass_", {"gain": 0.5, "zero_mean": False, "in_dims": 0, "out_dims": 1}, (WIDE,), REAL, ("det",),
          label="gain0.5-in0-out1"),
    # glassInit_ / glassInit: the reference's API, signs from the global RNG only
    _Fill("glassInit_", {}, (LINEAR, WIDE, CONV), REAL, ("global",)),
    _Fill("glassInit_", {"zeroMean": False, "sparse": True}, (LINEAR,), REAL, ("det",), label="zeroMean=False-sparse"),
    # deterministic
    _Fill("constant_", {"val": 0.3}, (LINEAR, CONV), ALL, ("det",)),
    _Fill("constant_", {"val": 7}, (LINEAR,), (torch.int64,), ("det",)),
    _Fill("ones_", {}, (LINEAR, CONV), ALL, ("det",)),
    _Fill("zeros_", {}, (LINEAR, CONV), ALL, ("det",)),
    _Fill("eye_", {}, (LINEAR, WIDE), ALL, ("det",)),
    _Fill("dirac_", {}, (CONV, (4, 4, 3), (4, 2, 3, 3, 3)), ALL, ("det",)),
    _Fill("dirac_", {"groups": 2}, (CONV,), ALL, ("det",), label="groups2"),
    _Fill("identity_", {"gain": 0.5}, (LINEAR, WIDE, CONV), ALL, ("det",)),
    _Fill("identity_", {"groups": 2}, (CONV,), ALL, ("det",), label="groups2"),
    _Fill("hadamard_", {}, (LINEAR, WIDE, (12, 5), CONV), ALL, ("det",)),
    _Fill("hadamard_", {"gain": 2.0}, ((16, 16),), ALL, ("det",), label="gain2"),
)


def _glass_init_case(shape: tuple[int, ...], dtype: torch.dtype) -> Callable[[], Value]:
    """``glassInit`` is out of place: the digest of the new tensor and of the argument (left unchanged)."""

    def run() -> Value:
        weight = torch.full(shape, 3, dtype=dtype)
        with _randomness("global"):
            out = ti.glassInit(weight)
        return [digest(out), digest(weight)]

    return run


def _function_cases() -> Iterator[Case]:
    for fill in FILLS:
        yield from fill.cases()
    for shape in (LINEAR, CONV):
        for dtype in REAL:
            name = f"fn/glassInit/{_DTYPE_NAMES[dtype]}/{_shape_label(shape)}/global"
            yield Case(name, _glass_init_case(shape, dtype))


# ---- initializers on modules (the layer's own layout) ----------------------------------------------------------

_LAYERS: dict[str, Callable[[], nn.Module]] = {
    "Linear(6,10)": lambda: nn.Linear(6, 10),
    "Conv2d(8,4,3,groups=2)": lambda: nn.Conv2d(8, 4, 3, groups=2),
    "ConvTranspose2d(4,8,3)": lambda: nn.ConvTranspose2d(4, 8, 3),
    "Conv1d(4,8,1)": lambda: nn.Conv1d(4, 8, 1),
}


def _module_case(function: str, kwargs: dict[str, Any], layer: str, variant: str) -> Callable[[], Value]:
    def run() -> Value:
        with _global_rng(BUILD_SEED):
            module = _LAYERS[layer]()
        with _randomness(variant) as randomness:
            getattr(ti, function)(module, **kwargs, **randomness)
        return _model_digest(module)

    return run


def _module_cases() -> Iterator[Case]:
    functions: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
        ("kaiming_normal_", {"mode": "fan_out", "nonlinearity": "relu"}, RANDOM),
        ("xavier_uniform_", {}, RANDOM),
        ("variance_scaling_", {}, RANDOM),
        ("glass_", {}, RANDOM),
        ("glass_", {"isometric": True, "zero_mean": False}, ("det",)),
    ]
    for function, kwargs, variants in functions:
        label = "-".join(f"{k}={v}" for k, v in kwargs.items())
        for layer in _LAYERS:
            if layer.startswith("Conv1d") and function != "glass_":
                continue
            for variant in variants:
                name = "/".join(p for p in ("module", function, label, layer, variant) if p)
                yield Case(name, _module_case(function, kwargs, layer, variant))


# ---- large tensors: the threaded paths -----------------------------------------------------------------------


def _large_cases() -> Iterator[Case]:
    fills = [
        _Fill("normal_", {"std": 0.02}, (LARGE,), (F32,), ("seed", "generator", "global")),
        _Fill("normal_", {"mean": 0.5, "std": 0.02}, (LARGE,), (BF16,), ("seed",)),
        _Fill("uniform_", {"a": -0.1, "b": 0.1}, (LARGE,), (F32,), ("seed", "generator")),
        _Fill("uniform_", {"a": -0.1, "b": 0.1}, (LARGE,), (F64,), ("seed+name",)),
        _Fill("trunc_normal_", {"std": 0.02, "a": -0.04, "b": 0.04}, (LARGE,), (F32,), ("generator", "seed", "global")),
        _Fill("trunc_normal_std_", {"std": 0.02}, (LARGE,), (F32,), ("seed", "generator")),
        _Fill("trunc_normal_std_", {"std": 0.02}, (LARGE,), (BF16,), ("seed",)),
        _Fill("kaiming_normal_", {}, (LARGE,), (F32,), ("seed", "generator")),
        _Fill("variance_scaling_", {}, (LARGE,), (F32,), ("seed", "generator")),
    ]
    for fill in fills:
        yield from fill.cases(prefix="large")
    # a transposed (non-contiguous) view of a large tensor
    yield Case("large/normal_/float32/2048x2051-transposed/seed",
               _fill_case("normal_", LARGE, F32, {"std": 0.02}, "seed", transpose=True))


# ---- initializer objects -------------------------------------------------------------------------------------

_OBJECTS: dict[str, Callable[[], ti.Initializer]] = {
    "KaimingNormal(mode=fan_out)": lambda: ti.KaimingNormal(mode="fan_out"),
    "TruncNormalStd(std=0.02)": lambda: ti.TruncNormalStd(std=0.02),
    "Orthogonal()": lambda: ti.Orthogonal(),
    "Glass(isometric=True)": lambda: ti.Glass(isometric=True),
    "Glass()": lambda: ti.Glass(),
    "VarianceScaling(0.5,fan_avg,truncated_normal)": lambda: ti.VarianceScaling(0.5, "fan_avg", "truncated_normal"),
    "XavierUniform(gain=0.7,blocks=2)": lambda: ti.XavierUniform(gain=0.7, blocks=2),
    "Sparse(0.5)": lambda: ti.Sparse(0.5),
    "DeltaOrthogonal()": lambda: ti.DeltaOrthogonal(),
}

#: How an object is called (``init``: ``obj.init(t, ...)``; ``call``: ``obj(t, ...)``) and with which randomness.
_CALLS = (
    ("call", "generator"),
    ("init", "generator"),
    ("init", "seed+name"),
    ("call", "seed"),
    ("call", "global"),
)


def _object_case(obj: str, shape: tuple[int, ...], how: str, variant: str) -> Callable[[], Value]:
    def run() -> Value:
        t = torch.full(shape, 3, dtype=F32)
        initializer = _OBJECTS[obj]()
        with _randomness(variant) as randomness:
            (initializer.init if how == "init" else initializer)(t, **randomness)
        return digest(t)

    return run


def _object_cases() -> Iterator[Case]:
    for obj in _OBJECTS:
        shapes = (CONV, (4, 8, 3, 3)) if obj.startswith("DeltaOrthogonal") else (LINEAR, CONV)
        for shape in shapes:
            for how, variant in _CALLS:
                yield Case(f"obj/{obj}/{_shape_label(shape)}/{how}-{variant}", _object_case(obj, shape, how, variant))
    # the deterministic ones check and ignore the randomness arguments
    for obj, make in (("Hadamard()", ti.Hadamard), ("Identity(gain=0.5)", lambda: ti.Identity(gain=0.5))):
        for how, variant in (("init", "seed+name"), ("call", "generator")):
            def run(make: Callable[[], ti.Initializer] = make, how: str = how, variant: str = variant) -> Value:
                t = torch.full(LINEAR, 3, dtype=F32)
                with _randomness(variant) as randomness:
                    (make().init if how == "init" else make())(t, **randomness)
                return digest(t)

            yield Case(f"obj/{obj}/{_shape_label(LINEAR)}/{how}-{variant}", run)


# ---- models --------------------------------------------------------------------------------------------------


class Mixed(nn.Module):
    """One of each common torch.nn layer with parameters: what torch's constructors and a policy must cover."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16, padding_idx=0)
        self.proj = nn.Linear(16, 32)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.convt = nn.ConvTranspose2d(8, 4, 3, groups=2)
        self.ln = nn.LayerNorm(32)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.lstm = nn.LSTM(32, 16, num_layers=2, batch_first=True)
        self.encoder = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
        self.head = nn.Linear(16, 10)


class BasicBlock(nn.Module):
    """torchvision's BasicBlock layout: conv1, bn1, conv2, bn2 and a 1x1 ``downsample`` when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class ResNetish(nn.Module):
    """A small ResNet: stem, three blocks (two widen, with projection shortcuts), a classifier ``fc``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 16, 2))
        self.layer2 = nn.Sequential(BasicBlock(16, 24, 2))
        self.fc = nn.Linear(24, 10)


class FixupBlock(nn.Module):
    """The Fixup paper's block: conv1, conv2, scalar biases and scale, a 1x1 ``shortcut`` when the width changes."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.bias1a, self.bias1b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bias2a, self.bias2b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.scale = nn.Parameter(torch.ones(1))
        if cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, bias=False)


class FixupNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.blocks = nn.Sequential(FixupBlock(8, 8), FixupBlock(8, 16), FixupBlock(16, 16))
        self.fc = nn.Linear(16, 10)


class MLPBlock(nn.Module):
    """A residual MLP block: fc1, fc2, LayerNorm, and a ``shortcut`` Linear when the width changes."""

    def __init__(self, din: int, dout: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(din)
        self.fc1 = nn.Linear(din, 2 * din)
        self.fc2 = nn.Linear(2 * din, dout)
        if din != dout:
            self.shortcut = nn.Linear(din, dout, bias=False)


class ResMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(12, 16)
        self.blocks = nn.Sequential(MLPBlock(16, 16), MLPBlock(16, 24), MLPBlock(24, 8))
        self.fc = nn.Linear(8, 4)


class CustomInit(nn.Module):
    """A constructor that initializes its own parameters: torch.nn.init and torchinit calls, a second fill of
    one tensor, a value drawn at construction, a buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.empty(6, 6))
        nn.init.orthogonal_(self.a)
        self.b = nn.Parameter(torch.empty(6, 6))
        nn.init.trunc_normal_(self.b, std=0.5)
        self.c = nn.Parameter(torch.empty(64))
        nn.init.normal_(self.c)
        with torch.no_grad():
            self.c[:32].uniform_(-1, 1)
        self.d = nn.Parameter(torch.empty(8, 4))
        ti.kaiming_normal_(self.d, nonlinearity="relu")
        self.e = nn.Parameter(torch.empty(4, 8, 3, 3))
        ti.glass_(self.e)
        self.f = nn.Parameter(torch.randn(5))  # drawn at construction
        self.register_buffer("g", torch.arange(4.0))
        self.lin = nn.Linear(8, 8)


class InitWeights(nn.Module):
    """A constructor that ends with the model's own ``init_weights()``, as transformers and timm models do."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 4))
        self.norm = nn.LayerNorm(16)
        self.init_weights()

    def init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.05, a=-0.1, b=0.1)
                nn.init.zeros_(module.bias)


class Big(nn.Module):
    """One Linear with more than 2**22 weights: materialization's threaded fills."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(LARGE[1], LARGE[0])


def _mixed_policy() -> ti.Policy:
    return ti.Policy([
        (nn.Embedding, {"weight": ti.Normal(std=0.02)}),
        (nn.Linear, {"weight": ti.XavierUniform(), "bias": ti.Zeros()}),
        (nn.Conv2d, {"weight": ti.KaimingNormal(mode="fan_out", nonlinearity="relu"), "bias": ti.Constant(0.01)}),
        (nn.ConvTranspose2d, {"weight": ti.LecunUniform()}),
        (nn.MultiheadAttention, {"in_proj_weight": ti.XavierUniform(blocks=3), "in_proj_bias": ti.Zeros()}),
        ("lstm.weight_hh_*", ti.Orthogonal(blocks=4)),
        ("lstm.weight_ih_*", ti.VarianceScaling(1.0, "fan_avg", "uniform", blocks=4)),
        ("lstm.bias_*", ti.Uniform(a=-0.1, b=0.1)),
        ("encoder.linear*.weight", ti.TruncNormalStd(std=0.02)),
        ("encoder.self_attn.in_proj_weight", ti.LecunNormal(blocks=3)),
        (nn.LayerNorm, {"weight": ti.Ones(), "bias": ti.Zeros()}),
        ("head.weight", ti.Sparse(0.5)),
        (lambda name, param, module: name == "bn.weight", ti.Constant(0.5)),
    ])  # fmt: skip


def _mlp_policy() -> ti.Policy:
    return ti.Policy([
        (nn.Linear, {"weight": ti.presets.TorchWeight(), "bias": ti.presets.TorchBias()}),
        ("blocks.*.fc1.weight", ti.KaimingUniform(nonlinearity="relu")),
        ("blocks.*.fc2.weight", ti.Identity(gain=0.5)),
        ("*.shortcut.weight", ti.Glass()),
        ("stem.weight", ti.Hadamard()),
        ("fc.weight", ti.Eye()),
    ])  # fmt: skip


def _conv_policy() -> ti.Policy:
    return ti.Policy([
        ("*conv1.weight", ti.DeltaOrthogonal()),
        ("*conv2.weight", ti.Dirac()),
        ("*.shortcut.weight", ti.Glass(isometric=True)),
        ("fc.weight", ti.TruncNormal(std=0.1, a=-0.15, b=0.15)),
    ])  # fmt: skip


def _big_policy() -> ti.Policy:
    return ti.Policy([("lin.weight", ti.TruncNormalStd(std=0.02)), ("lin.bias", ti.Uniform(a=-0.1, b=0.1))])


# -- third-party models (small: hidden 32, two layers, 32x32 images; nothing is downloaded)

_VOCAB = 100


def _gpt2() -> nn.Module:
    tf = importlib.import_module("transformers")
    config = tf.GPT2Config(vocab_size=_VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=32,
                           bos_token_id=0, eos_token_id=1)  # fmt: skip
    return tf.GPT2LMHeadModel(config)


def _llama() -> nn.Module:
    tf = importlib.import_module("transformers")
    config = tf.LlamaConfig(vocab_size=_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                            bos_token_id=0, eos_token_id=1, pad_token_id=2)  # fmt: skip
    return tf.LlamaForCausalLM(config)


def _bert() -> nn.Module:
    tf = importlib.import_module("transformers")
    config = tf.BertConfig(vocab_size=_VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=32, pad_token_id=0)  # fmt: skip
    return tf.BertForMaskedLM(config)


def _timm_vit() -> nn.Module:
    timm = importlib.import_module("timm")
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32,
                             depth=2, num_heads=2, num_classes=10)  # fmt: skip


def _timm_resnet() -> nn.Module:
    timm = importlib.import_module("timm")
    return timm.create_model("resnet18", pretrained=False, num_classes=10, channels=(8, 16, 32, 64), stem_width=8)


def _llama_policy() -> ti.Policy:
    return ti.Policy([
        (nn.Linear, {"weight": ti.TruncNormalStd(std=0.02)}),
        (nn.Embedding, {"weight": ti.Normal(std=0.02)}),
        ("*.o_proj.weight", ti.Normal(std=0.01)),
        ("*norm.weight", ti.Ones()),
    ])  # fmt: skip


@dataclass(frozen=True)
class _Model:
    build: Callable[[], nn.Module]
    requires: tuple[str, ...] = ()


MODELS: dict[str, _Model] = {
    "mixed": _Model(Mixed),
    "resnetish": _Model(ResNetish),
    "fixupnet": _Model(FixupNet),
    "resmlp": _Model(ResMLP),
    "custom_init": _Model(CustomInit),
    "init_weights": _Model(InitWeights),
    "big": _Model(Big),
    "gpt2": _Model(_gpt2, ("transformers",)),
    "llama": _Model(_llama, ("transformers",)),
    "bert": _Model(_bert, ("transformers",)),
    "timm_vit": _Model(_timm_vit, ("timm",)),
    "timm_resnet18": _Model(_timm_resnet, ("timm",)),
}

#: The policies, by label; "-": none (materialize_ gives what construction gives).
POLICIES: dict[str, Callable[[], ti.Policy | None]] = {
    "-": lambda: None,
    "torch_default()": ti.presets.torch_default,
    "gpt2(2)": lambda: ti.presets.gpt2(2),
    "resnet()": ti.presets.resnet,
    "resnet(zero_init_residual=False)": lambda: ti.presets.resnet(zero_init_residual=False),
    "resnet()+glass_shortcuts()": lambda: ti.presets.resnet() + ti.presets.glass_shortcuts(),
    "resnet()+glass_shortcuts(isometric=True)":
        lambda: ti.presets.resnet() + ti.presets.glass_shortcuts(isometric=True),
    "glass_shortcuts()": ti.presets.glass_shortcuts,
    "vit_jax()": ti.presets.vit_jax,
    "fixup(3)": lambda: ti.presets.fixup(3),
    "fixup(3,2)": lambda: ti.presets.fixup(3, 2),
    "mixed_policy": _mixed_policy,
    "mlp_policy": _mlp_policy,
    "conv_policy": _conv_policy,
    "big_policy": _big_policy,
    "llama_policy": _llama_policy,
}

#: (model, how it is built and initialized, policy label): each runs with a generator, a seed and the global RNG.
#: ``deferred``/``meta``: built under ti.deferred() / torch.device("meta"), then ti.materialize_(model, policy);
#: ``eager``: built for real, then policy.apply_(model); ``torch_reset_``: built for real, then presets.torch_reset_.
MODEL_CASES: tuple[tuple[str, str, str], ...] = (
    ("mixed", "deferred", "-"),
    ("mixed", "deferred", "torch_default()"),
    ("mixed", "deferred", "mixed_policy"),
    ("mixed", "meta", "-"),
    ("mixed", "meta", "mixed_policy"),
    ("mixed", "eager", "torch_default()"),
    ("mixed", "eager", "mixed_policy"),
    ("mixed", "torch_reset_", "-"),
    ("resnetish", "deferred", "-"),
    ("resnetish", "deferred", "resnet()"),
    ("resnetish", "deferred", "resnet()+glass_shortcuts()"),
    ("resnetish", "meta", "resnet()+glass_shortcuts(isometric=True)"),
    ("resnetish", "eager", "resnet()"),
    ("resnetish", "eager", "resnet(zero_init_residual=False)"),
    ("resnetish", "eager", "glass_shortcuts()"),
    ("resnetish", "eager", "torch_default()"),
    ("fixupnet", "deferred", "fixup(3)"),
    ("fixupnet", "deferred", "conv_policy"),
    ("fixupnet", "meta", "fixup(3)"),
    ("fixupnet", "eager", "fixup(3)"),
    ("fixupnet", "eager", "conv_policy"),
    ("resmlp", "deferred", "-"),
    ("resmlp", "deferred", "fixup(3,2)"),
    ("resmlp", "meta", "mlp_policy"),
    ("resmlp", "eager", "fixup(3,2)"),
    ("resmlp", "eager", "glass_shortcuts()"),
    ("resmlp", "eager", "mlp_policy"),
    ("resmlp", "torch_reset_", "-"),
    ("custom_init", "deferred", "-"),
    ("init_weights", "deferred", "-"),
    ("init_weights", "meta", "-"),
    ("init_weights", "meta", "torch_default()"),
    ("big", "deferred", "-"),
    ("big", "deferred", "big_policy"),
    ("big", "meta", "-"),
    ("big", "eager", "big_policy"),
    ("gpt2", "deferred", "-"),
    ("gpt2", "deferred", "gpt2(2)"),
    ("gpt2", "meta", "-"),
    ("gpt2", "eager", "gpt2(2)"),
    ("llama", "deferred", "-"),
    ("llama", "deferred", "llama_policy"),
    ("llama", "meta", "-"),
    ("llama", "eager", "llama_policy"),
    ("bert", "deferred", "-"),
    ("bert", "meta", "-"),
    ("bert", "eager", "torch_default()"),
    ("timm_vit", "deferred", "-"),
    ("timm_vit", "deferred", "vit_jax()"),
    ("timm_vit", "meta", "-"),
    ("timm_vit", "eager", "vit_jax()"),
    ("timm_resnet18", "deferred", "-"),
    ("timm_resnet18", "deferred", "resnet()"),
    ("timm_resnet18", "meta", "resnet()+glass_shortcuts(isometric=True)"),
    ("timm_resnet18", "eager", "resnet()"),
)

_MODEL_VARIANTS = ("generator", "seed", "global")


def _model_case(model: str, how: str, policy: str, variant: str) -> Callable[[], Value]:
    def run() -> Value:
        build = MODELS[model].build
        with _global_rng(BUILD_SEED):  # construction draws (eager values, values drawn before registration)
            if how == "deferred":
                with ti.deferred():
                    m = build()
            elif how == "meta":
                with torch.device("meta"):
                    m = build()
            else:
                m = build()
        p = POLICIES[policy]()
        with _randomness(variant) as randomness, warnings.catch_warnings():
            # a model of this file on meta has no init method: materialize_ says it re-enacts reset_parameters
            warnings.filterwarnings("ignore", "materialize_: re-enacting", UserWarning)
            if how in ("deferred", "meta"):
                if p is None:
                    ti.materialize_(m, **randomness)
                else:
                    ti.materialize_(m, p, **randomness)
            elif how == "torch_reset_":
                ti.presets.torch_reset_(m, **randomness)
            else:
                assert p is not None, f"{model}/{how}: eager models need a policy"
                p.apply_(m, **randomness)
        return _model_digest(m)

    return run


def _model_cases() -> Iterator[Case]:
    for model, how, policy in MODEL_CASES:
        for variant in _MODEL_VARIANTS:
            yield Case(f"model/{model}/{how}/{policy}/{variant}", _model_case(model, how, policy, variant),
                       MODELS[model].requires)


# ---- fans, gains, layouts ------------------------------------------------------------------------------------

_FANS: dict[str, Callable[[], Any]] = {
    "16x8": lambda: ti.fans(torch.empty(16, 8)),
    "8x4x3x3": lambda: ti.fans(torch.empty(8, 4, 3, 3)),
    "64x128/in0-out1": lambda: ti.fans(torch.empty(64, 128), in_dims=0, out_dims=1),
    "8x256x64/batch0": lambda: ti.fans(torch.empty(8, 256, 64), batch_dims=0),
    "96x32/blocks3": lambda: ti.fans(torch.empty(96, 32), blocks=3),
    "Linear(3,5)": lambda: ti.fans(nn.Linear(3, 5, device="meta")),
    "Conv2d(64,128,3,groups=8)": lambda: ti.fans(nn.Conv2d(64, 128, 3, groups=8, device="meta")),
    "ConvTranspose2d(4,8,3)": lambda: ti.fans(nn.ConvTranspose2d(4, 8, 3, device="meta")),
    "Embedding(10,4)": lambda: ti.fans(nn.Embedding(10, 4, device="meta")),
}

_GAINS: dict[str, Callable[[], float]] = {
    **{name: functools.partial(ti.calculate_gain, name) for name in (
        "linear", "conv2d", "sigmoid", "tanh", "relu", "leaky_relu", "selu", "gelu", "silu", "mish", "elu",
        "softplus", "hardswish")},
    "leaky_relu,0.2": lambda: ti.calculate_gain("leaky_relu", 0.2),
    "nn.GELU()": lambda: ti.calculate_gain(nn.GELU()),
    "torch.tanh": lambda: ti.calculate_gain(torch.tanh),
    "variance_gain(torch.sin)": lambda: ti.variance_gain(torch.sin),
    "truncated_std_factor(2)": lambda: ti.truncated_std_factor(2.0),
    "truncated_std_factor(3)": lambda: ti.truncated_std_factor(3.0),
}  # fmt: skip

_LAYOUTS: dict[str, Callable[[], nn.Module]] = {
    "Linear(3,5)": lambda: nn.Linear(3, 5, device="meta"),
    "Conv2d(8,4,3,groups=2)": lambda: nn.Conv2d(8, 4, 3, groups=2, device="meta"),
    "ConvTranspose2d(4,8,3)": lambda: nn.ConvTranspose2d(4, 8, 3, device="meta"),
}


def _fans_case(make: Callable[[], Any]) -> Callable[[], Value]:
    return lambda: [int(x) for x in make()]


def _gain_case(gain: Callable[[], float]) -> Callable[[], Value]:
    return lambda: float(gain()).hex()


def _layout_case(layer: Callable[[], nn.Module]) -> Callable[[], Value]:
    def run() -> Value:
        layout = ti.glass_layout(layer())
        return [list(layout.in_dims), list(layout.out_dims), int(layout.groups)]

    return run


def _extra_cases() -> Iterator[Case]:
    for label, make in _FANS.items():
        yield Case(f"fans/{label}", _fans_case(make))
    for label, gain in _GAINS.items():
        yield Case(f"gain/{label}", _gain_case(gain))
    for label, layer in _LAYOUTS.items():
        yield Case(f"glass_layout/{label}", _layout_case(layer))


# ---- the environment -----------------------------------------------------------------------------------------

#: The key of ``digests.json`` that records :func:`environment` (not a case).
ENVIRONMENT_KEY = "_recorded_with"


def environment() -> dict[str, str]:
    """What the values may depend on besides torchinit: versions, and the CPU kernels torch dispatches to."""
    out = {"python": platform.python_version(), "machine": platform.machine(),
           "cpu_capability": str(torch.backends.cpu.get_cpu_capability())}  # fmt: skip
    for dist in ("torch", "transformers", "timm"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


# ---- all cases -----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def all_cases() -> dict[str, Case]:
    """Every case by name, in a fixed order (names are unique)."""
    cases: dict[str, Case] = {}
    for case in (*_function_cases(), *_module_cases(), *_large_cases(), *_object_cases(), *_model_cases(),
                 *_extra_cases()):
        if case.name in cases:
            raise ValueError(f"two cases are named {case.name!r}")
        cases[case.name] = case
    return cases


def compute_case(name: str) -> Value:
    """The value of the case ``name``."""
    return all_cases()[name].run()


def compute(names: Iterable[str] | None = None) -> dict[str, Value]:
    """The values of the cases ``names`` (default: all), by name. The third-party modules must be importable."""
    return {name: compute_case(name) for name in (all_cases() if names is None else names)}
