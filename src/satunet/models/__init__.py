"""Model registry: every model satunet knows, by name, and the factory that builds them."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial

from torch import nn

from satunet.errors import UnknownNameError
from satunet.models.baselines import deeplabv3plus_resnet34, unetplusplus_resnet34
from satunet.models.presets import (
    load_presets,
    preset_from_file,
    save_presets,
    split_reference,
    unet_option_names,
)
from satunet.models.unet import PRESETS, Level, Preset, UNet

__all__ = [
    "MODELS",
    "DESCRIPTIONS",
    "PRESETS",
    "Level",
    "Preset",
    "UNet",
    "create_model",
    "list_models",
    "load_presets",
    "model_options",
    "save_presets",
]

MODELS: dict[str, Callable[..., nn.Module]] = {
    name: partial(UNet, p.levels, **p.options) for name, p in PRESETS.items()
} | {
    "unetplusplus_resnet34": unetplusplus_resnet34,
    "deeplabv3plus_resnet34": deeplabv3plus_resnet34,
}

DESCRIPTIONS: dict[str, str] = {
    "unet_base": "study: classic UNet, 4 down steps, 64..1024 wide, 2 convs per block",
    "unet_short": "study: 3 down steps, 128..512 wide, 2 convs per block",
    "unet_skinny": "study: 6 down steps, 32..512 wide, 1 conv per block (fastest study UNet)",
    "unet_less_conv": "study: skinny with 3 convs in the two top levels",
    "unet_fast": "satunet: stride-2 stem, 32..512 wide, bilinear up, PPM context (<= 12 GMACs)",
    "unet_v2": "satunet: unet_fast with UNet v2 semantic-detail infusion (SDI) skips",
    "unetplusplus_resnet34": "study baseline: smp UNet++ with a resnet34 encoder",
    "deeplabv3plus_resnet34": "study baseline: smp DeepLabV3+ with a resnet34 encoder",
}


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, in registry order."""
    return list(MODELS)


def model_options(name: str) -> list[str]:
    """The extra keyword options a model accepts beyond in_channels and num_classes.

    A UNet preset's own options (e.g. ``upsample``) can be overridden, so they are listed too.
    """
    if name not in MODELS:
        raise UnknownNameError("model", name, MODELS)
    params = inspect.signature(
        MODELS[name].func if isinstance(MODELS[name], partial) else MODELS[name]
    ).parameters
    return [p for p in params if p not in {"self", "in_channels", "num_classes", "levels"}]


def create_model(name: str, *, in_channels: int = 3, num_classes: int, **options) -> nn.Module:
    """Build a model by registry name or presets-file reference (``"my.toml:NAME"``).

    Unknown names and options are errors, never ignored.
    """
    reference = split_reference(name) if name not in MODELS else None
    if reference is not None:
        preset = preset_from_file(*reference)
        allowed = unet_option_names()
    elif name in MODELS:
        allowed = model_options(name)
    else:
        raise UnknownNameError("model", name, MODELS)
    for key in options:
        if key not in allowed:
            raise UnknownNameError(f"option of model {name!r}", key, allowed)
    if reference is not None:
        return preset.build(in_channels=in_channels, num_classes=num_classes, **options)
    return MODELS[name](in_channels=in_channels, num_classes=num_classes, **options)
