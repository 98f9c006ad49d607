"""One parameterized UNet; every UNet of the study (and satunet's own) is a tuple of levels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from satunet.errors import InputSizeError
from satunet.models.blocks import ConvBlock, Down, Up, Upsample


@dataclass(frozen=True)
class Level:
    """One resolution of the UNet: its width and how many 3x3 convs it runs (encoder and decoder).

    The last level of a tuple is the bottleneck.
    """

    channels: int
    convs: int = 2


PRESETS: dict[str, tuple[Level, ...]] = {
    # Classic UNet with padding, 4 down steps: 31,043,781 params at 5 classes.
    "unet_base": (Level(64), Level(128), Level(256), Level(512), Level(1024)),
    # 3 down steps, wider top: fewer params but the most work at full resolution.
    "unet_short": (Level(128), Level(128), Level(256), Level(512)),
    # One level deeper than base and thinner, 1 conv per block: the study's winner.
    "unet_skinny": tuple(Level(c, 1) for c in (32, 64, 128, 256, 512, 512, 512)),
    # Skinny with 3 convs in the two full-resolution-most levels ("modified convolution").
    "unet_less_conv": (Level(32, 3), Level(64, 3))
    + tuple(Level(c, 1) for c in (128, 256, 512, 512, 512)),
}


def check_input(x: torch.Tensor, in_channels: int, multiple: int, name: str = "model") -> None:
    """Check x is (B, in_channels, H, W) with H and W divisible by multiple; explain if not."""
    if x.ndim != 4:
        raise InputSizeError(f"{name} expects a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    if x.shape[1] != in_channels:
        raise InputSizeError(
            f"{name} was built for {in_channels} input bands but got {x.shape[1]}; "
            f"create it with in_channels={x.shape[1]} or select {in_channels} bands"
        )
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if h % multiple or w % multiple:

        def near(n: int) -> str:
            lo, hi = n // multiple * multiple, -(-n // multiple) * multiple
            return f"{lo} or {hi}" if lo else f"{hi}"

        raise InputSizeError(
            f"{name} needs height and width divisible by {multiple}, got {h}x{w}; "
            f"crop or pad to height {near(h)} and width {near(w)} "
            f"(satunet predict pads whole scenes for you)"
        )


class UNet(nn.Module):
    """UNet built from a tuple of :class:`Level` (shallowest first, bottleneck last).

    Shape: (B, in_channels, H, W) -> (B, num_classes, H, W) logits; H and W must be divisible by
    ``size_multiple`` = 2 ** (len(levels) - 1), otherwise an :class:`InputSizeError` says which
    sizes work.
    """

    def __init__(
        self,
        levels: Sequence[Level],
        *,
        in_channels: int = 3,
        num_classes: int,
        upsample: Upsample = "transpose",
    ):
        super().__init__()
        levels = tuple(levels)
        if len(levels) < 2:
            raise ValueError(f"a UNet needs at least 2 levels (one down step), got {len(levels)}")
        if in_channels < 1 or num_classes < 1:
            raise ValueError(
                f"in_channels and num_classes must be >= 1, got {in_channels}, {num_classes}"
            )
        self.levels = levels
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.size_multiple = 2 ** (len(levels) - 1)

        widths = [in_channels] + [level.channels for level in levels]
        self.encoder = nn.ModuleList(
            Down(widths[i], level.channels, level.convs) for i, level in enumerate(levels[:-1])
        )
        self.bottleneck = ConvBlock(widths[-2], levels[-1].channels, levels[-1].convs)
        self.decoder = nn.ModuleList(
            Up(deeper.channels, level.channels, level.convs, upsample)
            for level, deeper in zip(reversed(levels[:-1]), reversed(levels[1:]), strict=True)
        )
        self.head = nn.Conv2d(levels[0].channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, self.size_multiple, type(self).__name__)
        skips = []
        for down in self.encoder:
            skip, x = down(x)
            skips.append(skip)
        x = self.bottleneck(x)
        for up in self.decoder:
            x = up(x, skips.pop())
        return self.head(x)
