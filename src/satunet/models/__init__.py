"""Model registry: every model satunet knows, by name, and the factory that builds them."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial

from torch import nn

from satunet.errors import UnknownNameError
from satunet.models.baselines import (
    SMP_PREFIX,
    build_smp,
    deeplabv3plus_resnet34,
    parse_smp_name,
    smp_architectures,
    smp_default_encoder,
    smp_encoders,
    smp_options,
    unetplusplus_resnet34,
)
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
    "SMP_PREFIX",
    "check_model_name",
    "create_model",
    "describe_model",
    "find_preset",
    "list_models",
    "load_presets",
    "model_design",
    "model_options",
    "save_presets",
    "smp_architectures",
    "smp_default_encoder",
    "smp_encoders",
]

MODELS: dict[str, Callable[..., nn.Module]] = {
    name: partial(UNet, p.levels, **p.options) for name, p in PRESETS.items()
} | {
    "unetplusplus_resnet34": unetplusplus_resnet34,
    "deeplabv3plus_resnet34": deeplabv3plus_resnet34,
}

# A preset's description lives with its design in unet.PRESETS; baselines describe themselves here.
DESCRIPTIONS: dict[str, str] = {name: p.description for name, p in PRESETS.items()} | {
    "unetplusplus_resnet34": "study baseline: smp UNet++ with a resnet34 encoder",
    "deeplabv3plus_resnet34": "study baseline: smp DeepLabV3+ with a resnet34 encoder",
}


def list_models() -> list[str]:
    """The registry's names, in registry order.

    :func:`create_model` also takes ``smp:ARCH:ENCODER`` (any smp architecture and encoder; see
    :func:`smp_architectures`, :func:`smp_encoders`) and ``FILE:NAME`` presets-file references.
    """
    return list(MODELS)


def check_model_name(name: str) -> None:
    """Raise :class:`UnknownNameError` (with close matches) unless create_model takes ``name``.

    Cheap: builds nothing. Presets-file references are only checked for their form here.
    """
    if name in MODELS or split_reference(name) is not None:
        return
    if parse_smp_name(name) is None:
        raise UnknownNameError("model", name, MODELS)


def describe_model(name: str) -> str:
    """One line about a model, for tables (``""`` for a presets-file reference)."""
    smp_name = parse_smp_name(name) if name not in MODELS else None
    if smp_name is not None:
        return f"smp {smp_name[0]} with a {smp_name[1]} encoder"
    return DESCRIPTIONS.get(name, "")


def model_options(name: str) -> list[str]:
    """The extra keyword options a model accepts beyond in_channels and num_classes.

    A UNet preset's own options (e.g. ``upsample``) can be overridden, so they are listed too;
    ``smp:ARCH:ENCODER`` models take ``encoder_weights`` and the smp class's own arguments.
    """
    smp_name = parse_smp_name(name) if name not in MODELS else None
    if smp_name is not None:
        return smp_options(smp_name[0])
    if name not in MODELS:
        raise UnknownNameError("model", name, MODELS)
    params = inspect.signature(
        MODELS[name].func if isinstance(MODELS[name], partial) else MODELS[name]
    ).parameters
    return [p for p in params if p not in {"self", "in_channels", "num_classes", "levels"}]


def find_preset(name: str) -> Preset | None:
    """The UNet design a model name means: a registry preset or a presets-file entry (None for
    baselines, smp models and a presets file that is not there)."""
    if name in PRESETS:
        return PRESETS[name]
    reference = split_reference(name)
    if reference is not None and reference[0].is_file():
        return preset_from_file(*reference)
    return None


def model_design(name: str) -> dict | None:
    """A UNet design's levels and options as data, to tell whether a name still means the same
    model (see :func:`find_preset`)."""
    preset = find_preset(name)
    if preset is None:
        return None
    return {k: v for k, v in preset.to_dict().items() if k not in {"description", "recipe"}}


def create_model(name: str, *, in_channels: int = 3, num_classes: int, **options) -> nn.Module:
    """Build a model by registry name or presets-file reference (``"my.toml:NAME"``).

    Also takes ``"smp:ARCH:ENCODER"`` (e.g. ``"smp:FPN:mobilenet_v2"``). Unknown names and
    options are errors, never ignored.
    """
    smp_name = parse_smp_name(name) if name not in MODELS else None
    reference = split_reference(name) if name not in MODELS and smp_name is None else None
    if smp_name is not None:
        allowed = smp_options(smp_name[0])
    elif reference is not None:
        preset = preset_from_file(*reference)
        allowed = unet_option_names()
    elif name in MODELS:
        allowed = model_options(name)
    else:
        raise UnknownNameError("model", name, MODELS)
    for key in options:
        if key not in allowed:
            raise UnknownNameError(f"option of model {name!r}", key, allowed)
    if smp_name is not None:
        return build_smp(*smp_name, in_channels=in_channels, num_classes=num_classes, **options)
    if reference is not None:
        return preset.build(in_channels=in_channels, num_classes=num_classes, **options)
    return MODELS[name](in_channels=in_channels, num_classes=num_classes, **options)
