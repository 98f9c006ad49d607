"""One parameterized UNet; every UNet of the study (and satunet's own) is levels + a few options."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, get_args

import torch
import torch.nn.functional as F
from torch import nn

from satunet.errors import ConfigError, InputSizeError
from satunet.models.blocks import (
    ASPP,
    PPM,
    SDI,
    Context,
    Conv,
    ConvBlock,
    Down,
    SdiInit,
    Skip,
    Up,
    Upsample,
)


@dataclass(frozen=True)
class Level:
    """One resolution of the UNet: its width and how many 3x3 convs it runs (encoder and decoder).

    The last level of a tuple is the bottleneck.
    """

    channels: int
    convs: int = 2


@dataclass(frozen=True)
class Preset:
    """A named UNet design as data: its levels and the options that differ from UNet's."""

    levels: tuple[Level, ...]
    options: Mapping[str, Any] = field(default_factory=dict)
    description: str = field(default="", compare=False)  # words, not part of the design
    # The recipe `satunet train` uses for it unless told (satunet.train.recipes): the study's
    # models keep the study's; satunet's own train with the one the race measured faster.
    recipe: str = field(default="study", compare=False)

    def build(self, *, in_channels: int = 3, num_classes: int, **options: Any) -> UNet:
        """The UNet of this design; ``options`` override the preset's own."""
        return UNet(self.levels, in_channels=in_channels, num_classes=num_classes,
                    **{**self.options, **options})  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """The design as plain data (a presets-file table, and what checkpoints store)."""
        entry: dict[str, Any] = {"description": self.description} if self.description else {}
        entry["levels"] = [[lv.channels, lv.convs] for lv in self.levels]
        entry.update({k: v for k, v in self.options.items() if v is not None})
        if self.recipe != "study":
            entry["recipe"] = self.recipe
        return entry

    @classmethod
    def from_dict(cls, entry: object, where: str = "preset") -> Preset:
        """A design from plain data, checked: a bad level or option is a ConfigError naming it."""
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where} must be a table of levels and options, got {entry!r}")
        entry = dict(entry)
        description = entry.pop("description", "")
        recipe = entry.pop("recipe", "study")
        if not isinstance(recipe, str) or not recipe:
            raise ConfigError(f"{where}: recipe must be a recipe name such as \"fast\", got "
                              f"{recipe!r}")  # fmt: skip
        levels = _parse_levels(entry.pop("levels", None), where)
        allowed = unet_option_names()
        for key in entry:
            if key not in allowed:
                raise ConfigError(
                    f"{where}: unknown option {key!r}; options are {', '.join(allowed)}"
                )
        preset = cls(levels, entry, str(description), recipe)
        try:  # build it once on the meta device so a bad value fails here, naming the source
            with torch.device("meta"):
                UNet(preset.levels, num_classes=1, **preset.options)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from e
        return preset


def _parse_levels(raw: object, where: str) -> tuple[Level, ...]:
    if not isinstance(raw, list) or len(raw) < 2:
        raise ConfigError(f"{where} needs levels = [[channels, convs], ...] with >= 2 levels")
    levels = []
    for item in raw:
        if isinstance(item, int):
            item = [item]
        if isinstance(item, Mapping):
            item = [item.get("channels"), item.get("convs", 2)]
        if (
            not isinstance(item, list)
            or not 1 <= len(item) <= 2
            or not all(isinstance(v, int) and v >= 1 for v in item)
        ):
            raise ConfigError(f"{where}: level {item!r} is not [channels, convs] of positive ints")
        levels.append(Level(*item))
    return tuple(levels)


def unet_option_names() -> list[str]:
    """The model-wide options a preset may set (UNet's keyword arguments)."""
    params = inspect.signature(UNet.__init__).parameters
    return [p for p in params if p not in {"self", "levels", "in_channels", "num_classes"}]


PRESETS: dict[str, Preset] = {
    # Classic UNet with padding, 4 down steps: 31,043,781 params at 5 classes.
    "unet_base": Preset(
        (Level(64), Level(128), Level(256), Level(512), Level(1024)),
        description="study: classic UNet, 4 down steps, 64..1024 wide, 2 convs per block",
    ),
    # 3 down steps, wider top: fewer params but the most work at full resolution.
    "unet_short": Preset(
        (Level(128), Level(128), Level(256), Level(512)),
        description="study: 3 down steps, 128..512 wide, 2 convs per block",
    ),
    # One level deeper than base and thinner, 1 conv per block: the study's winner.
    "unet_skinny": Preset(
        tuple(Level(c, 1) for c in (32, 64, 128, 256, 512, 512, 512)),
        description="study: 6 down steps, 32..512 wide, 1 conv per block (fastest study UNet)",
    ),
    # Skinny with 3 convs in the two full-resolution-most levels ("modified convolution").
    "unet_less_conv": Preset(
        (Level(32, 3), Level(64, 3)) + tuple(Level(c, 1) for c in (128, 256, 512, 512, 512)),
        description="study: skinny with 3 convs in the two top levels",
    ),
    # satunet's own, found with `satunet search` (README: "Finding a faster UNet"). A stride-2
    # stem runs the first level at 1/2 resolution (full-resolution levels dominate the cost),
    # one conv in the two wide-map levels, two in the deep ones, bilinear upsampling and a
    # small pyramid pooling module for the global context DeepLabV3+ gets from its ASPP.
    "unet_fast": Preset(
        (Level(32, 1), Level(64, 1), Level(128, 2), Level(256, 2), Level(512, 2)),
        {"upsample": "bilinear", "context": "ppm", "stem_stride": 2},
        "satunet: stride-2 stem, 32..512 wide, bilinear up, PPM context (<= 12 GMACs)",
        recipe="fast",  # README, "Accuracy at equal training time": 0.296 against 0.183 mIoU
    ),
    # unet_fast from 1/4 resolution, as DeepLabV3+ works: a quarter of the GMACs, 1.7x the
    # training images/s on a CPU, and 0.315 against unet_fast's 0.300 mIoU after 20 minutes
    # (README, "Accuracy at equal training time"); the logits are resized back to full size.
    "unet_fast_stride4": Preset(
        (Level(32, 1), Level(64, 1), Level(128, 2), Level(256, 2), Level(512, 2)),
        {"upsample": "bilinear", "context": "ppm", "stem_stride": 4},
        "satunet: unet_fast with a stride-4 stem (levels from 1/4 resolution)",
        recipe="fast",
    ),
    # unet_fast with UNet v2's semantic and detail infusion (arXiv 2311.17791) in every skip.
    "unet_v2": Preset(
        (Level(32, 1), Level(64, 1), Level(128, 2), Level(256, 2), Level(512, 2)),
        {"upsample": "bilinear", "context": "ppm", "stem_stride": 2, "skip": "sdi"},
        "satunet: unet_fast with UNet v2 semantic-detail infusion (SDI) skips",
        recipe="fast",
    ),
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


def _choice(name: str, value: object, literal: object) -> None:
    choices = get_args(literal)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def option_defaults() -> dict[str, Any]:
    """UNet's option defaults, read from its signature (the one place they are written)."""
    params = inspect.signature(UNet.__init__).parameters
    return {name: params[name].default for name in unet_option_names()}


def _check_design(
    levels: tuple[Level, ...], in_channels: int, num_classes: int, options: dict[str, Any]
) -> None:
    if len(levels) < 2:
        raise ValueError(f"a UNet needs at least 2 levels (one down step), got {len(levels)}")
    if in_channels < 1 or num_classes < 1:
        raise ValueError(
            f"in_channels and num_classes must be >= 1, got {in_channels}, {num_classes}"
        )
    for name, literal in (("upsample", Upsample), ("conv", Conv), ("skip", Skip),
                          ("context", Context), ("sdi_init", SdiInit)):  # fmt: skip
        _choice(name, options[name], literal)
    if options["stem_stride"] not in (1, 2, 4):
        raise ValueError(f"stem_stride must be 1, 2 or 4, got {options['stem_stride']!r}")
    groups = options["groups"]
    if groups < 1 or any(lv.channels % groups for lv in levels):
        raise ValueError(
            f"groups={groups} must divide every level's width "
            f"{[lv.channels for lv in levels]}; pick widths that are multiples of it"
        )
    if options["skip"] == "sdi" and options["sdi_channels"] is not None:
        if options["sdi_channels"] < 1:
            raise ValueError(f"sdi_channels must be >= 1, got {options['sdi_channels']}")


def _stem(in_channels: int, width: int, stride: int) -> nn.Sequential:
    """Strided 3x3 conv + BN + ReLU steps that take the input to 1/stride resolution."""
    steps = [in_channels] + [width] * (stride.bit_length() - 1)
    return nn.Sequential(
        *(
            nn.Sequential(nn.Conv2d(a, b, 3, stride=2, padding=1), nn.BatchNorm2d(b), nn.ReLU())
            for a, b in zip(steps[:-1], steps[1:], strict=True)
        )
    )


class UNet(nn.Module):
    """UNet built from a tuple of :class:`Level` (shallowest first, bottleneck last) and options.

    The defaults are the study's UNet. The options span the design space ``satunet search``
    explores:

    - ``upsample``: learned 2x2 transposed conv, or 1x1 conv + bilinear resize.
    - ``conv``: dense 3x3 convs, or depthwise-separable ones (3x3 depthwise + 1x1);
      ``groups`` > 1 makes the dense ones grouped.
    - ``residual``: a shortcut around every conv block.
    - ``skip``: how a decoder level takes its encoder skip: ``"concat"`` (study), ``"add"``, or
      ``"sdi"``, UNet v2's semantic and detail infusion of all levels into every skip, with
      ``sdi_channels`` channels (default: the first level's width), then concatenated;
      ``sdi_init="identity"`` starts its Hadamard product near a sum (see :class:`SDI`).
    - ``context``: a light PPM or ASPP after the bottleneck.
    - ``stem_stride``: 1, 2 or 4. Above 1, strided 3x3 convs take the input to 1/stem_stride
      resolution before the first level, and the logits are resized back bilinearly, as
      DeepLabV3+ does at 1/4: full-resolution levels dominate the cost.

    Shape: (B, in_channels, H, W) -> (B, num_classes, H, W) logits; H and W must be divisible by
    ``size_multiple`` = stem_stride * 2 ** (len(levels) - 1), otherwise an
    :class:`InputSizeError` says which sizes work.
    """

    def __init__(
        self,
        levels: Sequence[Level | Sequence[int]],
        *,
        in_channels: int = 3,
        num_classes: int,
        upsample: Upsample = "transpose",
        conv: Conv = "standard",
        groups: int = 1,
        residual: bool = False,
        skip: Skip = "concat",
        sdi_channels: int | None = None,
        sdi_init: SdiInit = "product",
        context: Context = "none",
        stem_stride: int = 1,
    ):
        super().__init__()
        levels = tuple(lv if isinstance(lv, Level) else Level(*lv) for lv in levels)
        given = {"upsample": upsample, "conv": conv, "groups": groups, "residual": residual,
                 "skip": skip, "sdi_channels": sdi_channels, "sdi_init": sdi_init,
                 "context": context,
                 "stem_stride": stem_stride}  # fmt: skip
        _check_design(levels, in_channels, num_classes, given)
        self.levels = levels
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.stem_stride = stem_stride
        self.size_multiple = stem_stride * 2 ** (len(levels) - 1)
        block: dict[str, Any] = {}
        if conv != "standard" or groups != 1 or residual:  # keep the study's tree unchanged
            block = {"conv": conv, "groups": groups, "residual": residual}
        # Only options that differ from the study's defaults, so presets and files stay short.
        defaults = option_defaults()
        self.options = {k: v for k, v in given.items() if v != defaults[k]}
        self.context: nn.Module | None = None
        self.sdi: SDI | None = None

        c0 = levels[0].channels
        self.stem = _stem(in_channels, c0, stem_stride) if stem_stride > 1 else None
        widths = [c0 if stem_stride > 1 else in_channels] + [lv.channels for lv in levels]
        self.encoder = nn.ModuleList(
            Down(widths[i], lv.channels, lv.convs, **block) for i, lv in enumerate(levels[:-1])
        )
        self.bottleneck = ConvBlock(widths[-2], levels[-1].channels, levels[-1].convs, **block)
        if context == "ppm":
            self.context = PPM(levels[-1].channels)
        elif context == "aspp":
            self.context = ASPP(levels[-1].channels, conv)
        skip_widths = [lv.channels for lv in levels[:-1]]
        fusion = "add" if skip == "add" else "concat"
        if skip == "sdi":
            width = sdi_channels or c0
            self.sdi = SDI(skip_widths, width, conv, groups if width % groups == 0 else 1,
                           init=sdi_init)  # fmt: skip
            skip_widths = [width] * len(skip_widths)
        self.decoder = nn.ModuleList(
            Up(deeper.channels, lv.channels, lv.convs, upsample, skip_channels=sw, fusion=fusion,
               **block)
            for lv, deeper, sw in zip(
                reversed(levels[:-1]), reversed(levels[1:]), reversed(skip_widths), strict=True
            )
        )  # fmt: skip
        self.head = nn.Conv2d(c0, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, self.size_multiple, type(self).__name__)
        size = x.shape[-2:]
        if self.stem is not None:
            x = self.stem(x)
        skips = []
        for down in self.encoder:
            skip, x = down(x)
            skips.append(skip)
        x = self.bottleneck(x)
        if self.context is not None:
            x = self.context(x)
        if self.sdi is not None:
            skips = self.sdi(skips)
        for up in self.decoder:
            x = up(x, skips.pop())
        x = self.head(x)
        if self.stem is not None:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x

    def spec(self) -> Preset:
        """This model's design as data: what a presets file stores to rebuild it."""
        return Preset(self.levels, dict(self.options))
