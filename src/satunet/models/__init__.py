"""Model registry: every model satunet knows, by name, and the factory that builds them."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial

from torch import nn

from satunet.errors import UnknownNameError
from satunet.models.baselines import deeplabv3plus_resnet34, unetplusplus_resnet34
from satunet.models.unet import PRESETS, Level, UNet

__all__ = ["MODELS", "DESCRIPTIONS", "Level", "UNet", "create_model", "list_models"]

MODELS: dict[str, Callable[..., nn.Module]] = {
    name: partial(UNet, levels) for name, levels in PRESETS.items()
} | {
    "unetplusplus_resnet34": unetplusplus_resnet34,
    "deeplabv3plus_resnet34": deeplabv3plus_resnet34,
}

DESCRIPTIONS: dict[str, str] = {
    "unet_base": "study: classic UNet, 4 down steps, 64..1024 wide, 2 convs per block",
    "unet_short": "study: 3 down steps, 128..512 wide, 2 convs per block",
    "unet_skinny": "study: 6 down steps, 32..512 wide, 1 conv per block (fastest study UNet)",
    "unet_less_conv": "study: skinny with 3 convs in the two top levels",
    "unetplusplus_resnet34": "study baseline: smp UNet++ with a resnet34 encoder",
    "deeplabv3plus_resnet34": "study baseline: smp DeepLabV3+ with a resnet34 encoder",
}


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, in registry order."""
    return list(MODELS)


def model_options(name: str) -> list[str]:
    """The extra keyword options a model accepts beyond in_channels and num_classes."""
    if name not in MODELS:
        raise UnknownNameError("model", name, MODELS)
    builder = MODELS[name]
    bound = set(builder.keywords) if isinstance(builder, partial) else set()
    params = inspect.signature(builder).parameters
    return [
        p for p in params if p not in {"in_channels", "num_classes", "levels"} and p not in bound
    ]


def create_model(name: str, *, in_channels: int = 3, num_classes: int, **options) -> nn.Module:
    """Build a registered model by name; unknown names and options are errors, never ignored."""
    if name not in MODELS:
        raise UnknownNameError("model", name, MODELS)
    allowed = model_options(name)
    for key in options:
        if key not in allowed:
            raise UnknownNameError(f"option of model {name!r}", key, allowed)
    return MODELS[name](in_channels=in_channels, num_classes=num_classes, **options)
