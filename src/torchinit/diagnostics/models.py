"""The embedded models of ``torchinit compare``: a deep residual MLP and a small residual CNN, no normalization.

Layout (defaults)::

    x (batch, 64)
      stage 1:  4 blocks at width  64                  (identity shortcuts)
      stage 2:  4 blocks at width 128, first 64 -> 128  (Linear projection shortcut)
      stage 3:  4 blocks at width 256, first 128 -> 256 (projection)
      stage 4:  4 blocks at width 128, first 256 -> 128 (projection)
      stage 5:  4 blocks at width  64, first 128 -> 64  (projection)
      stage 6:  4 blocks at width  32, first 64 -> 32   (projection)
      head:     Linear 32 -> 10
    output (batch, 10)

Each block is the post-activation residual block of He et al. (2016) with the
convolutions replaced by Linear layers and no batch norm::

    y = relu(shortcut(x) + fc2(relu(fc1(x))))

``shortcut`` is the identity when the width is unchanged and a bias-free
``Linear(in, out)`` when it changes, so the initializer of the shortcut matters
too. Without normalization nothing rescales the signal between blocks, which is
exactly what makes the choice of initializer visible.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "DEFAULT_WIDTHS",
    "DEFAULT_DEPTH",
    "DEFAULT_OUT_FEATURES",
    "ResidualBlock",
    "ResidualMLP",
    "build_default_model",
    "ConvBlock",
    "SmallCNN",
]

#: Width of each stage; the input width is the first one.
DEFAULT_WIDTHS: tuple[int, ...] = (64, 128, 256, 128, 64, 32)
#: Residual blocks per stage.
DEFAULT_DEPTH = 4
#: Width of the final Linear head.
DEFAULT_OUT_FEATURES = 10


class ResidualBlock(nn.Module):
    """``y = relu(shortcut(x) + fc2(relu(fc1(x))))``; the shortcut projects only when widths differ.

    Example:
        >>> block = ResidualBlock(64, 128)  # projection shortcut
        >>> block(torch.randn(8, 64)).shape
        torch.Size([8, 128])
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, out_features)
        self.fc2 = nn.Linear(out_features, out_features)
        self.shortcut: nn.Module = (
            nn.Identity() if in_features == out_features else nn.Linear(in_features, out_features, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.shortcut(x) + self.fc2(torch.relu(self.fc1(x))))


class ResidualMLP(nn.Module):
    """A stack of residual stages (``depth`` blocks each, one per width) and a Linear head.

    Example:
        >>> model = ResidualMLP(widths=(16, 32), depth=2, out_features=3)
        >>> model(torch.randn(5, 16)).shape
        torch.Size([5, 3])
    """

    def __init__(
        self,
        widths: Sequence[int] = DEFAULT_WIDTHS,
        depth: int = DEFAULT_DEPTH,
        out_features: int = DEFAULT_OUT_FEATURES,
    ) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if not widths or min(widths) < 1:
            raise ValueError(f"widths must be a non-empty sequence of positive ints; got {widths}")
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be a positive int; got {depth!r}")
        if isinstance(out_features, bool) or not isinstance(out_features, int) or out_features < 1:
            raise ValueError(f"out_features must be a positive int; got {out_features!r}")
        self.widths = widths
        self.depth = depth
        self.in_features = widths[0]
        self.out_features = out_features
        blocks: list[nn.Module] = []
        prev = widths[0]
        for width in widths:
            for _ in range(depth):
                blocks.append(ResidualBlock(prev, width))
                prev = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(prev, out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(x))

    def linears(self) -> Iterator[nn.Linear]:
        """Every ``nn.Linear`` in a fixed order (module registration order)."""
        return (m for m in self.modules() if isinstance(m, nn.Linear))

    def num_params(self) -> int:
        """Number of scalar parameters."""
        return sum(p.numel() for p in self.parameters())

    def num_projections(self) -> int:
        """Number of blocks with a Linear projection shortcut."""
        return sum(isinstance(b.shortcut, nn.Linear) for b in self.blocks)

    def describe(self) -> str:
        """One line: widths, blocks, Linear layers and parameters.

        Example:
            >>> ResidualMLP(widths=(16, 32), depth=2, out_features=3).describe()
            'residual MLP (no norm) 16 -> [16x2, 32x2] -> 3: 4 blocks, 1 projection shortcut, 10 Linear, 5,411 params'
        """
        stages = ", ".join(f"{w}x{self.depth}" for w in self.widths)
        n_proj = self.num_projections()
        n_lin = sum(1 for _ in self.linears())
        return (
            f"residual MLP (no norm) {self.in_features} -> [{stages}] -> {self.out_features}: "
            f"{len(self.blocks)} blocks, {n_proj} projection shortcut{'' if n_proj == 1 else 's'}, "
            f"{n_lin} Linear, {self.num_params():,} params"
        )


def build_default_model(
    depth: int = DEFAULT_DEPTH,
    seed: int | None = 0,
    *,
    widths: Sequence[int] = DEFAULT_WIDTHS,
    out_features: int = DEFAULT_OUT_FEATURES,
) -> ResidualMLP:
    """The demo model with PyTorch's own initialization, deterministic for a given ``seed``.

    The modules' ``reset_parameters`` draw from the global RNG; with ``seed``
    given they run under ``torch.manual_seed(seed)`` inside
    :func:`torch.random.fork_rng`, so the result is reproducible and the
    caller's global RNG state is left untouched. ``seed=None`` uses the global
    RNG as is.

    Example:
        >>> model = build_default_model(depth=2, seed=0)
        >>> model(torch.randn(8, model.in_features)).shape
        torch.Size([8, 10])
    """
    if seed is None:
        return ResidualMLP(widths, depth, out_features)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ResidualMLP(widths, depth, out_features)


class ConvBlock(nn.Module):
    """``y = relu(shortcut(x) + conv2(relu(conv1(x))))`` with 3x3 convs; a 1x1 projection when the width changes.

    Example:
        >>> ConvBlock(8, 16, stride=2)(torch.randn(2, 8, 8, 8)).shape
        torch.Size([2, 16, 4, 4])
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        self.shortcut: nn.Module = (
            nn.Identity() if in_channels == out_channels and stride == 1
            else nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.shortcut(x) + self.conv2(torch.relu(self.conv1(x))))


class SmallCNN(nn.Module):
    """A small residual CNN without normalization: stem 3 -> 16, stages 16, 32, 64 (stride 2), a Linear head.

    Example:
        >>> SmallCNN()(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, widths: Sequence[int] = (16, 32, 64), depth: int = 2, out_features: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, widths[0], 3, padding=1)
        blocks: list[nn.Module] = []
        prev = widths[0]
        for i, width in enumerate(widths):
            for j in range(depth):
                blocks.append(ConvBlock(prev, width, stride=2 if (i > 0 and j == 0) else 1))
                prev = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(prev, out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(torch.relu(self.stem(x))).mean((2, 3)))
