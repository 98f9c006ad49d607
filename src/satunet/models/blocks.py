"""The UNet's building blocks: conv block, down and up steps, skip fusion and bottleneck context.

With default options the module tree mirrors the study's code (a ConvBlock wrapping an
``nn.Sequential``, a Down that returns ``(skip, pooled)``, an Up module) so that the study's
torchsummary "memory footprint" can be reproduced exactly (``satunet.profile.study_footprint_mb``).
Every other option only adds modules where it is switched on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Upsample = Literal["transpose", "bilinear"]
Conv = Literal["standard", "separable"]
Skip = Literal["concat", "add", "sdi"]
Context = Literal["none", "ppm", "aspp"]
SdiInit = Literal["product", "identity"]


def conv3x3(
    in_channels: int, out_channels: int, conv: Conv = "standard", groups: int = 1, dilation: int = 1
) -> nn.Module:
    """A 3x3 conv (with bias, as in the study): dense, grouped, or depthwise-separable.

    ``groups`` only applies where it divides ``in_channels``: the UNet checks its widths, so the
    one conv it skips is the first, which reads the input bands.
    """
    if conv == "separable":
        return nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 3, padding=dilation, dilation=dilation,
                      groups=in_channels, bias=False),
            nn.Conv2d(in_channels, out_channels, 1),
        )  # fmt: skip
    g = groups if in_channels % groups == 0 and out_channels % groups == 0 else 1
    return nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation, groups=g)


class ConvBlock(nn.Module):
    """``convs`` x [3x3 conv -> BatchNorm -> ReLU], optionally with a residual shortcut."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        convs: int = 2,
        *,
        conv: Conv = "standard",
        groups: int = 1,
        residual: bool = False,
    ):
        super().__init__()
        if convs < 1:
            raise ValueError(f"a ConvBlock needs at least 1 conv, got convs={convs}")
        layers: list[nn.Module] = []
        for i in range(convs):
            layers += [
                conv3x3(in_channels if i == 0 else out_channels, out_channels, conv, groups),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(),
            ]
        self.layers = nn.Sequential(*layers)
        self.shortcut: nn.Module | None = None
        if residual:  # a 1x1 projection where the width changes, as in ResNet
            self.shortcut = (
                nn.Identity()
                if in_channels == out_channels
                else nn.Conv2d(in_channels, out_channels, 1, bias=False)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(x)
        return y if self.shortcut is None else y + self.shortcut(x)


class Down(nn.Module):
    """Conv block then 2x2 max-pool; returns (pre-pool features for the skip, pooled features)."""

    def __init__(self, in_channels: int, out_channels: int, convs: int = 2, **block: object):
        super().__init__()
        self.block = ConvBlock(in_channels, out_channels, convs, **block)
        self.pool = nn.MaxPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skip = self.block(x)
        return skip, self.pool(skip)


class Up(nn.Module):
    """x2 upsampling to this level's width, fusion with the skip, then a conv block.

    ``upsample="transpose"`` is the study's learned 2x2 stride-2 transposed conv; ``"bilinear"``
    is a 1x1 conv to the level's width followed by a parameter-free bilinear resize (the two
    commute, and running the conv at the low resolution costs 4x less). ``fusion="concat"``
    concatenates [upsampled, skip] as the study does; ``"add"`` sums them, halving the block's
    input width.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        convs: int = 2,
        upsample: Upsample = "transpose",
        *,
        skip_channels: int | None = None,
        fusion: Literal["concat", "add"] = "concat",
        **block: object,
    ):
        super().__init__()
        skip_channels = out_channels if skip_channels is None else skip_channels
        if upsample == "transpose":
            self.up: nn.Module = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        elif upsample == "bilinear":
            self.up = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1),
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            )
        else:
            raise ValueError(f"upsample must be 'transpose' or 'bilinear', got {upsample!r}")
        if fusion == "add" and skip_channels != out_channels:
            raise ValueError(
                f"fusion='add' needs equal widths, got {skip_channels} and {out_channels}"
            )
        self.fusion = fusion
        width = out_channels + skip_channels if fusion == "concat" else out_channels
        self.block = ConvBlock(width, out_channels, convs, **block)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        return self.block(torch.cat([x, skip], dim=1) if self.fusion == "concat" else x + skip)


def _conv_bn_relu(in_channels: int, out_channels: int, norm: bool = True) -> nn.Sequential:
    """1x1 conv -> BatchNorm -> ReLU; ``norm=False`` for 1x1 maps (BN needs > 1 value per channel
    in training, so a globally pooled branch would fail at batch 1)."""
    if not norm:
        return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), nn.ReLU())
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU()
    )


class SDI(nn.Module):
    """UNet v2's semantic and detail infusion (arXiv 2311.17791) for all skips at once.

    Each encoder level is projected to ``width`` channels (1x1 conv); the new skip of level i is
    the Hadamard product, over all levels j, of a 3x3 conv of level j resized to level i (average
    pooling from finer levels, bilinear upsampling from coarser ones). Every skip thus carries the
    semantics of the deep levels and the detail of the shallow ones.

    ``init="product"`` starts every factor as unit-variance noise (BatchNorm weight 1, bias 0):
    a product of several such factors is spiky (kurtosis ~100 at init for unet_v2's four
    levels, half the values near zero), which is why unet_v2 learns slowly at first.
    ``init="identity"`` starts each factor near 1 (weight 0.1, bias 1), so the product starts
    as 1 plus a scaled sum of the levels (kurtosis ~3.4) and becomes a product as it trains.
    """

    def __init__(
        self,
        channels: Sequence[int],
        width: int,
        conv: Conv = "standard",
        groups: int = 1,
        init: SdiInit = "product",
    ):
        super().__init__()
        self.project = nn.ModuleList(_conv_bn_relu(c, width) for c in channels)
        # BatchNorm keeps each factor near unit scale, so the product neither explodes nor vanishes.
        self.smooth = nn.ModuleList(
            nn.ModuleList(
                nn.Sequential(conv3x3(width, width, conv, groups), nn.BatchNorm2d(width))
                for _ in channels
            )
            for _ in channels
        )
        if init == "identity":
            for row in self.smooth:
                for factor in row:
                    nn.init.constant_(factor[1].weight, 0.1)
                    nn.init.constant_(factor[1].bias, 1.0)

    def forward(self, skips: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        projected = [project(s) for project, s in zip(self.project, skips, strict=True)]
        fused = []
        for i, target in enumerate(skips):
            out = None
            for j, g in enumerate(projected):
                if j < i:  # finer level: exact average pooling (levels halve in size)
                    g = F.avg_pool2d(g, 2 ** (i - j))
                elif j > i:
                    g = F.interpolate(
                        g, size=target.shape[-2:], mode="bilinear", align_corners=False
                    )
                g = self.smooth[i][j](g)
                out = g if out is None else out * g
            fused.append(out)
        return fused


class PPM(nn.Module):
    """A light pyramid pooling module (after PSPNet) for global context at the bottleneck.

    Branches average the bottleneck globally and over 2x2 and 4x4 windows, project to a quarter
    of the width, resize back and are fused with the input by a 1x1 conv. Fixed windows rather
    than PSPNet's fixed output bins keep it exportable to ONNX with dynamic input sizes.
    """

    def __init__(self, channels: int, windows: Sequence[int] = (2, 4)):
        super().__init__()
        branch = max(channels // 4, 8)
        self.windows = (0, *windows)  # 0: global average
        # No BN on pooled maps: they can be 1x1, where BN cannot train at batch 1.
        self.branches = nn.ModuleList(
            _conv_bn_relu(channels, branch, norm=False) for _ in self.windows
        )
        self.fuse = _conv_bn_relu(channels + branch * len(self.windows), channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = []
        for window, branch in zip(self.windows, self.branches, strict=True):
            p = (
                x.mean((2, 3), keepdim=True)
                if window == 0
                else F.avg_pool2d(x, window, ceil_mode=True)
            )
            pooled.append(F.interpolate(branch(p), size=size, mode="bilinear", align_corners=False))
        return self.fuse(torch.cat([x, *pooled], dim=1))


class ASPP(nn.Module):
    """A light atrous spatial pyramid pooling (DeepLab) for context at the bottleneck.

    Dilations 2 and 4 suit the bottleneck's small maps (8x8 to 32x32 at 512x512 input).
    """

    def __init__(self, channels: int, conv: Conv = "standard", dilations: Sequence[int] = (2, 4)):
        super().__init__()
        branch = max(channels // 4, 8)
        self.point = _conv_bn_relu(channels, branch)
        self.atrous = nn.ModuleList(
            nn.Sequential(conv3x3(channels, branch, conv, dilation=d), nn.BatchNorm2d(branch),
                          nn.ReLU())
            for d in dilations
        )  # fmt: skip
        self.image = _conv_bn_relu(channels, branch, norm=False)
        self.fuse = _conv_bn_relu(channels + branch * (2 + len(self.atrous)), channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image = self.image(x.mean((2, 3), keepdim=True)).expand(-1, -1, *x.shape[-2:])
        return self.fuse(torch.cat([x, self.point(x), *(a(x) for a in self.atrous), image], 1))
