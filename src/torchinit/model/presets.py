"""Ready-made policies for well-known models, each with its source.

Every preset returns a :class:`~torchinit.Policy`; policies add up (``a + b``: the
rules of ``b`` override those of ``a``), so a preset can be extended::

    policy = presets.resnet() + presets.glass_shortcuts(isometric=True)

Presets match layers by class and by their place in the model, as the original
code does; each docstring says exactly which parameters it covers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import cast

import torch
from torch import Tensor, nn

from torchinit._util.checks import positive_int
from torchinit._util.tensors import is_uninitialized, keeps_thread_modes
from torchinit.model.construction import (
    COMPOSITES,
    constructor_init,
    is_torch_module,
    parametrizations_of,
    reset_method,
)
from torchinit.model.policy import ModuleInitializer, OwnerInitializer, Policy, Rule
from torchinit.model.replay import replay_program_
from torchinit.rng.sampling import is_dtensor, make_sampler
from torchinit.rng.seeds import seeded_torch_rng
from torchinit.schemes.basic import uniform_, zeros_
from torchinit.schemes.initializers import (
    Glass,
    Initializer,
    KaimingNormal,
    Normal,
    Ones,
    TruncNormalStd,
    VarianceScaling,
    XavierUniform,
    Zeros,
)
from torchinit.schemes.layout import is_transposed_linear, tensor_fans
from torchinit.schemes.variance import kaiming_uniform_

__all__ = [
    "torch_default", "gpt2", "resnet", "vit_jax", "fixup", "glass_shortcuts", "SHORTCUT_NAMES",
    "LastInBlock", "TorchReset", "TorchWeight", "TorchBias", "torch_reset_",
]  # fmt: skip

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _preset(rules: list, *, required: tuple[int, ...] = ()) -> Policy:
    """A preset's policy: its rules are a catalogue (one per kind of layer), so a rule that matches nothing in a
    given model is not reported, except the ``required`` ones (by position), whose silent miss would be a bug."""
    return Policy([Rule(i, selector, spec, i in required) for i, (selector, spec) in enumerate(rules)])


def _norms() -> list[tuple[type, dict[str, Initializer]]]:
    """Normalization layers (LayerNorm, GroupNorm, BatchNorm, InstanceNorm): weight 1, bias 0."""
    spec = {"weight": Ones(), "bias": Zeros()}
    return [(cls, spec) for cls in (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)]


def torch_default() -> Policy:
    """What PyTorch's constructors do, bit for bit under the same global seed (torch 2.13).

    One module-level rule, :class:`TorchReset`: every module class of ``torch.nn`` gets
    its own ``reset_parameters`` (Linear and ConvNd: U(±1/sqrt(fan_in)) with torch's
    tensor fans; Embedding N(0, 1) with the ``padding_idx`` row 0; norms 1 and 0; PReLU
    its ``init``; the RNN family U(±1/sqrt(hidden_size))), and the composite modules are
    initialized in their constructors' order: MultiheadAttention draws its ``out_proj``
    first, then ``in_proj``/``bias_k``/``bias_v`` and zeroes both biases; a
    TransformerEncoder/Decoder draws one layer and copies it into the others (its
    constructor deep-copies the layer); Transformer then redraws every matrix
    ``xavier_uniform_``. Parameters of modules that are not torch's own are not covered.
    Source: ``torch/nn/modules/*.py``.

    Example:
        >>> _ = torch.manual_seed(0); eager = nn.MultiheadAttention(8, 2)
        >>> other = nn.MultiheadAttention(8, 2)
        >>> _ = torch.manual_seed(0); report = torch_default().apply_(other)
        >>> all(torch.equal(a, b) for a, b in zip(eager.parameters(), other.parameters()))
        True
        >>> sorted({row.rule for row in report})
        ['#0 Module']
    """
    return Policy([(nn.Module, TorchReset())], optional=True)


@keeps_thread_modes
def torch_reset_(
    module: nn.Module, *, generator: torch.Generator | None = None, seed: int | None = None, name: str = ""
) -> nn.Module:
    """Initialize ``module`` as torch's constructor does (see :func:`torch_default`); in place.

    With ``generator``, torch's own code draws from private generators seeded from one draw
    of it (:func:`torchinit.rng.seeds.seeded_torch_rng`), as it would from the global RNG after
    ``torch.manual_seed`` of that draw; the global RNG is not touched, so another thread drawing
    from it meanwhile is neither rewound nor takes these draws. With ``seed``, the same program's
    random fills draw from the keyed stream instead: ``module``'s tensor ``n`` (named
    ``name.n``) from the stream of ``(seed, "name.n")``
    (:func:`torchinit.model.replay.replay_program_`); the global RNG is not touched.

    A module holding DTensors (FSDP2, tensor parallel) is initialized whole and each rank
    keeps its part: torch's resets on the DTensors themselves would draw per shard.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module; got {type(module).__name__}")
    make_sampler(generator, seed, name)
    sharded = any(is_dtensor(t) for t in (*module.parameters(), *module.buffers()))
    if seed is not None or sharded:
        if seed is not None or generator is None:
            return replay_program_(module, constructor_init, seed, name)
        with seeded_torch_rng(generator):
            return replay_program_(module, constructor_init, None, name)
    with torch.no_grad():  # as the constructors run: a reparametrized module's reset writes leaf parameters
        if generator is None:
            constructor_init(module)
            return module
        with seeded_torch_rng(generator):
            constructor_init(module)
    return module


class TorchReset(ModuleInitializer):
    """torch's constructor init for a whole module, as :func:`torch_default` uses it (module-level).

    The unit of a parameter is its owning module, or the outermost composite above it
    (MultiheadAttention, TransformerEncoder/Decoder, Transformer), whose constructor
    orders its children's init, or the module whose weight is reparametrized (weight_norm,
    parametrizations). Only modules of ``torch.nn`` are covered. The program is
    :func:`torchinit.model.construction.constructor_init`.
    """

    function = staticmethod(torch_reset_)

    def unit(self, path: list[tuple[str, nn.Module]], attr: str) -> tuple[str, nn.Module] | None:
        for name, module in path:
            if isinstance(module, COMPOSITES):
                return name, module
        for (name, module), (_, child) in pairwise(path):
            parametrizations = parametrizations_of(module)
            if parametrizations is not None and child is parametrizations:
                return (name, module) if is_torch_module(module) else None  # reparametrized: the module is the unit
        name, owner = path[-1]
        param = owner._parameters.get(attr)
        if not is_torch_module(owner) or reset_method(owner) is None or param is None:
            return None
        if is_uninitialized(param):
            return None  # a lazy module's parameter has no values until its first forward
        return name, owner


class TorchWeight(Initializer):
    """torch's Linear/Conv weight default: ``kaiming_uniform_(w, a=sqrt(5))`` on the weight tensor.

    U(±1/sqrt(fan_in)) with torch's tensor fans (not the layer's: this is what the
    constructors do, transposed and grouped convs included): a per-parameter piece of
    :func:`torch_default` for policies of your own.
    """

    @staticmethod
    def function(tensor: Tensor, *, generator=None, seed=None, name="") -> Tensor:
        return kaiming_uniform_(tensor, a=math.sqrt(5), generator=generator, seed=seed, name=name)


class TorchBias(OwnerInitializer):
    """torch's Linear/Conv bias default: U(±1/sqrt(fan_in)), fan_in of the owning layer's weight tensor.

    It needs the owning layer, which :class:`~torchinit.Policy` passes (an ``OwnerInitializer``).
    """


    @staticmethod
    def function(layer: nn.Module, *, generator=None, seed=None, name="") -> Tensor:
        if not isinstance(layer, nn.Module):
            raise TypeError("TorchBias initializes a layer's bias from its weight's fans; it needs the layer")
        fan_in = tensor_fans(tuple(cast(Tensor, layer.weight).shape)).fan_in
        if fan_in == 0:
            return zeros_(layer.bias)
        bound = 1 / math.sqrt(fan_in)
        return uniform_(layer.bias, -bound, bound, generator=generator, seed=seed, name=name)


def gpt2(n_layer: int) -> Policy:
    """GPT-2's initialization (Radford et al., 2019; as in nanoGPT and transformers' GPT2PreTrainedModel).

    Every Linear / Conv1D weight and every Embedding N(0, 0.02), their biases 0,
    LayerNorms weight 1 and bias 0, and the residual projections ``*.c_proj.weight``
    N(0, 0.02/sqrt(2 n_layer)) (matched on the fully qualified name, so the depth
    scaling cannot silently miss). Works on transformers' ``GPT2LMHeadModel`` (Conv1D
    layers, tied ``lm_head``) and on nanoGPT (Linear layers, its own ``LayerNorm``).

    Example:
        >>> gpt2(12).rules[-1].spec
        Normal(std=0.004082482904638631)
    """
    n_layer = positive_int("n_layer", n_layer)
    weight, bias = Normal(std=0.02), Zeros()
    return _preset([
        (nn.Linear, {"weight": weight, "bias": bias}),
        (conv1d_weight, weight),
        (conv1d_bias, bias),
        (nn.Embedding, {"weight": weight}),
        (layer_norm_weight, Ones()),
        (layer_norm_bias, Zeros()),
        ("*.c_proj.weight", Normal(std=0.02 / math.sqrt(2 * n_layer))),
    ], required=(6,))  # fmt: skip


# The selectors of the presets are module-level functions (or instances of module-level classes), never closures,
# so that a preset's policy pickles (to spawn workers, with a saved config); their names are what reports show.


def conv1d_weight(name: str, param: Tensor, module: nn.Module) -> bool:
    """transformers' Conv1D weight (a transposed Linear): :func:`gpt2`."""
    return is_transposed_linear(module) and name.endswith(".weight")


def conv1d_bias(name: str, param: Tensor, module: nn.Module) -> bool:
    """transformers' Conv1D bias: :func:`gpt2`."""
    return is_transposed_linear(module) and name.endswith(".bias")


def layer_norm_weight(name: str, param: Tensor, module: nn.Module) -> bool:
    """A LayerNorm's (or RMSNorm's) weight, torch's or a model's own class of that name (nanoGPT): :func:`gpt2`."""
    return _is_layer_norm(module) and name.rsplit(".", 1)[-1] == "weight"


def layer_norm_bias(name: str, param: Tensor, module: nn.Module) -> bool:
    """A LayerNorm's (or RMSNorm's) bias, torch's or a model's own class of that name: :func:`gpt2`."""
    return _is_layer_norm(module) and name.rsplit(".", 1)[-1] == "bias"


def _is_layer_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or type(module).__name__ in ("LayerNorm", "RMSNorm")


def resnet(zero_init_residual: bool = True) -> Policy:
    """ResNet (He et al., 2016), as torchvision's ``ResNet.__init__`` initializes it.

    Conv weights ``kaiming_normal_(mode="fan_out", nonlinearity="relu")``; BatchNorm /
    GroupNorm weight 1 and bias 0. With ``zero_init_residual`` (Goyal et al., 2017), the
    weight of the last BatchNorm of each residual branch is 0, so every block starts as
    the identity: in each module with two or more BatchNorm children named ``bn1``,
    ``bn2``, ... (torchvision's BasicBlock and Bottleneck), the highest-numbered one.
    Linear layers keep their default (torchvision leaves ``fc`` to ``reset_parameters``).

    Example:
        >>> resnet().rules[0].spec["weight"]
        KaimingNormal(mode='fan_out', nonlinearity='relu')
    """
    rules: list = [
        (nn.modules.conv._ConvNd, {"weight": KaimingNormal(mode="fan_out", nonlinearity="relu")}),
        *_norms(),
    ]
    if zero_init_residual:
        rules.append((LastInBlock("bn", (nn.modules.batchnorm._BatchNorm,)), Zeros()))
    return _preset(rules)


class LastInBlock:
    """Selects the weight of the highest-numbered child layer ``<prefix>N`` of each block.

    A block is any module with two or more children named ``<prefix>1``, ``<prefix>2``, ...
    of the given types (torchvision's BasicBlock has bn1, bn2; Bottleneck bn1..bn3). The
    selection needs the whole model, so :class:`~torchinit.Policy` calls :meth:`bind`
    with it before matching.

    Example:
        >>> block = nn.Module()
        >>> block.bn1, block.bn2 = nn.BatchNorm2d(4), nn.BatchNorm2d(4)
        >>> select = LastInBlock("bn", (nn.BatchNorm2d,)).bind(nn.Sequential(block))
        >>> select("0.bn2.weight", None, None), select("0.bn1.weight", None, None)
        (True, False)
    """

    def __init__(self, prefix: str, kinds: tuple[type, ...]) -> None:
        self.prefix, self.kinds = prefix, kinds
        self.__name__ = f"last_{prefix}N_of_block"

    def bind(self, model: nn.Module) -> Callable[[str, Tensor, nn.Module], bool]:
        chosen = set()
        for block_name, block in model.named_modules():
            numbered = [(int(m.group(1)), name) for name, child in block.named_children()
                        if isinstance(child, self.kinds) and (m := re.fullmatch(rf"{self.prefix}(\d+)", name))]
            if len(numbered) >= 2:
                last = max(numbered)[1]
                chosen.add(f"{block_name}.{last}.weight" if block_name else f"{last}.weight")

        def selector(name: str, param: Tensor, module: nn.Module) -> bool:
            return name in chosen

        selector.__name__ = self.__name__
        return selector

    def __call__(self, name: str, param: Tensor, module: nn.Module) -> bool:
        raise TypeError(f"{self.__name__} needs the model: use it inside a Policy, which binds it")


def vit_jax() -> Policy:
    """ViT's JAX initialization (Dosovitskiy et al., 2021; big_vision / timm ``init_weights_vit_jax``).

    Linear weights ``xavier_uniform_``, biases 0, but the MLP's biases N(0, 1e-6)
    (``*.mlp.fc*.bias``); conv weights (the patch embedding) LeCun normal as JAX does it:
    truncated normal with σ-relative bounds (±2σ, std exactly sqrt(1/fan_in));
    ``pos_embed`` truncated normal with std 0.02 at ±2σ (σ-relative bounds, unlike torch's
    absolute ``trunc_normal_(std=0.02)`` which truncates nothing); ``cls_token`` 0;
    the classifier ``head`` 0; LayerNorms 1 and 0.

    Example:
        >>> vit_jax().rules[-3]
        Rule(index=6, selector='*pos_embed', spec=TruncNormalStd(std=0.02), required=False)
    """
    return _preset([
        (nn.Linear, {"weight": XavierUniform(), "bias": Zeros()}),
        *_norms(),
        ("*.mlp.fc*.bias", Normal(std=1e-6)),
        (nn.modules.conv._ConvNd, {"weight": VarianceScaling(1.0, "fan_in", "truncated_normal"), "bias": Zeros()}),
        ("*pos_embed", TruncNormalStd(std=0.02)),
        ("*cls_token", Zeros()),
        ("head.*", Zeros()),
    ])  # fmt: skip


def fixup(num_branches: int, branch_depth: int = 2) -> Policy:
    """Fixup (Zhang et al., "Fixup Initialization: Residual Learning Without Normalization", ICLR 2019).

    For a network of ``num_branches`` (L) residual branches of ``branch_depth`` (m)
    layers, in the layout of the paper's code (blocks with ``conv1`` ... ``convm`` or
    ``fc1`` ... ``fcm``, scalar ``bias*`` and ``scale`` parameters, a final ``fc``):

    * the last layer of each branch (the highest-numbered ``convN``/``fcN`` of a block): 0;
    * the other branch layers: He normal with fan_out (as the paper's code) scaled by
      :math:`L^{-1/(2m-2)}`, i.e. variance :math:`2 L^{-1/(m-1)} / \\text{fan\\_out}`;
    * every other conv (the stem, shortcuts): He normal, fan_out;
    * scalar biases (``*bias1a`` ... names with ``bias``, one element) 0 and ``*scale`` 1;
    * the classifier ``fc`` (top level): weight and bias 0.

    Example:
        >>> fixup(16).rules[1].spec
        VarianceScaling(scale=0.125, mode='fan_out', distribution='normal')
    """
    num_branches, branch_depth = positive_int("num_branches", num_branches), positive_int("branch_depth", branch_depth)
    if branch_depth < 2:
        raise ValueError(f"branch_depth must be >= 2 (Fixup scales all but the last layer); got {branch_depth}")
    scale = 2.0 * num_branches ** (-1.0 / (branch_depth - 1))
    return _preset([
        (nn.modules.conv._ConvNd, {"weight": KaimingNormal(mode="fan_out", nonlinearity="relu")}),
        (branch_layer, VarianceScaling(scale, "fan_out", "normal")),
        (LastInBlock("conv", _CONVS), Zeros()),
        (LastInBlock("fc", (nn.Linear,)), Zeros()),
        (scalar_bias, Zeros()),
        (scalar_scale, Ones()),
        ("fc.weight", Zeros()),
        ("fc.bias", Zeros()),
    ])  # fmt: skip


def branch_layer(name: str, param: Tensor, module: nn.Module) -> bool:
    """The weight of a ``convN``/``fcN`` layer inside a block (a residual branch layer): :func:`fixup`."""
    parts = name.split(".")
    return len(parts) >= 3 and bool(re.fullmatch(r"(conv|fc)\d+", parts[-2])) and parts[-1] == "weight"


def scalar_bias(name: str, param: Tensor, module: nn.Module) -> bool:
    """A one-element parameter with ``bias`` in its attribute name (Fixup's ``bias1a``...): :func:`fixup`."""
    return "bias" in name.rsplit(".", 1)[-1] and param.numel() == 1


def scalar_scale(name: str, param: Tensor, module: nn.Module) -> bool:
    """A one-element parameter named ``scale``: :func:`fixup`."""
    return name.rsplit(".", 1)[-1] == "scale" and param.numel() == 1


#: Name components that mark a projection shortcut in common code (torchvision ``downsample``, ...).
SHORTCUT_NAMES = ("shortcut", "downsample", "skip", "proj_skip", "residual_proj")


def glass_shortcuts(isometric: bool = False, *, names: Sequence[str] = SHORTCUT_NAMES) -> Policy:
    """Glass init on every projection shortcut: the Linear / conv weights under a module named in ``names``.

    A weight matches when one of the components of its qualified name is in ``names``
    (``layer2.0.downsample.0.weight``, ``blocks.3.shortcut.weight``). ``isometric=True``
    uses the exactly semi-orthogonal variant (deterministic, ``zero_mean=False``).
    Add it after a preset: ``presets.resnet() + presets.glass_shortcuts()``.

    Example:
        >>> glass_shortcuts(isometric=True).rules[0].spec
        Glass(zero_mean=False, isometric=True)
    """
    names = tuple(names)
    if not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"names must be a non-empty sequence of strings; got {names!r}")
    spec = Glass(zero_mean=False, isometric=True) if isometric else Glass()
    return _preset([(ProjectionShortcut(names), spec)], required=(0,))


class ProjectionShortcut:
    """Selects the Linear / conv weights under a module named in ``names`` (:func:`glass_shortcuts`).

    A weight matches when one of the components of its qualified name before the last is in
    ``names``; Linear, ConvNd and transposed-Linear (transformers' Conv1D) layers count.

    Example:
        >>> select = ProjectionShortcut(("downsample",))
        >>> select("layer2.0.downsample.0.weight", None, nn.Conv2d(2, 2, 1)), select("fc.weight", None, nn.Linear(2, 2))
        (True, False)
    """

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.__name__ = "projection_shortcut"  # what reports show, as for a function

    def __call__(self, name: str, param: Tensor, module: nn.Module) -> bool:
        layer = isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) or is_transposed_linear(module)
        return layer and name.endswith(".weight") and any(part in self.names for part in name.split(".")[:-1])
