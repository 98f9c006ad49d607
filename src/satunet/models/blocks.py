"""The UNet's three building blocks: a conv block, a down step and an up step.

The module tree mirrors the study's code (a ConvBlock wrapping an ``nn.Sequential``, a Down that
returns ``(skip, pooled)``, an Up module) so that the study's torchsummary "memory footprint"
can be reproduced exactly from this implementation (see ``satunet.profile.study_footprint_mb``).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Upsample = Literal["transpose", "bilinear"]


class ConvBlock(nn.Module):
    """``convs`` x [3x3 conv (with bias, as in the study) -> BatchNorm -> ReLU]."""

    def __init__(self, in_channels: int, out_channels: int, convs: int = 2):
        super().__init__()
        if convs < 1:
            raise ValueError(f"a ConvBlock needs at least 1 conv, got convs={convs}")
        layers: list[nn.Module] = []
        for i in range(convs):
            layers += [
                nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(),
            ]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Down(nn.Module):
    """Conv block then 2x2 max-pool; returns (pre-pool features for the skip, pooled features)."""

    def __init__(self, in_channels: int, out_channels: int, convs: int = 2):
        super().__init__()
        self.block = ConvBlock(in_channels, out_channels, convs)
        self.pool = nn.MaxPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skip = self.block(x)
        return skip, self.pool(skip)


class Up(nn.Module):
    """x2 upsampling to the skip's width, concatenation [upsampled, skip], then a conv block.

    ``upsample="transpose"`` is the study's learned 2x2 stride-2 transposed conv;
    ``"bilinear"`` is a parameter-free bilinear resize followed by a 1x1 conv to the skip width,
    cheaper and free of checkerboard artefacts.
    """

    def __init__(
        self, in_channels: int, out_channels: int, convs: int = 2, upsample: Upsample = "transpose"
    ):
        super().__init__()
        if upsample == "transpose":
            self.up: nn.Module = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        elif upsample == "bilinear":
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(in_channels, out_channels, 1),
            )
        else:
            raise ValueError(f"upsample must be 'transpose' or 'bilinear', got {upsample!r}")
        self.block = ConvBlock(2 * out_channels, out_channels, convs)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([self.up(x), skip], dim=1))
