"""Models from segmentation-models-pytorch: the study's two references and any ``smp:ARCH:ENCODER``.

smp is imported lazily (it is slow to import). Every smp model satunet builds gets the same
contract as satunet's own UNets: ``in_channels``, ``num_classes`` and ``size_multiple``
attributes, an :class:`~satunet.errors.InputSizeError` for inputs it cannot take, and
``encoder_weights`` that is None (random), ``"imagenet"`` (fetched by smp; fails fast offline
with :class:`~satunet.errors.WeightsUnavailableError`) or the path of a local state dict.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from satunet.errors import ConfigError, InputSizeError, UnknownNameError, WeightsUnavailableError
from satunet.models.unet import check_input

log = logging.getLogger(__name__)

SMP_PREFIX = "smp:"
# Arguments satunet sets itself, or that would change what forward() returns (activation,
# aux_params' classification head): not user options.
_NOT_OPTIONS = frozenset(
    {
        "self",
        "encoder_name",
        "encoder_weights",
        "in_channels",
        "classes",
        "activation",
        "aux_params",
        "kwargs",
    }  # fmt: skip
)
# Encoder keyword arguments an architecture needs to be usable at satunet's tile sizes.
_ARCH_DEFAULTS: dict[str, dict[str, Any]] = {"DPT": {"dynamic_img_size": True}}
# H and W must be divisible by the encoder's output stride times this (measured per arch):
# DPT's reassemble stage halves the token grid once more.
_STRIDE_FACTOR: dict[str, int] = {"DPT": 2}
# The smallest H and W, in output strides: PAN's pyramid attention halves the map 3 more times.
_MIN_STRIDES: dict[str, int] = {"PAN": 8}


def _smp() -> Any:
    import segmentation_models_pytorch as smp

    return smp


def smp_architectures() -> list[str]:
    """smp's segmentation architectures by class name (Unet, FPN, ..., Segformer, DPT)."""
    return [cls.__name__ for cls in _smp().MODEL_ARCHITECTURES_MAPPING.values()]


def smp_encoders() -> list[str]:
    """smp's own encoder names; any timm model also works as ``tu-<timm name>``."""
    return list(_smp().encoders.get_encoder_names())


def smp_default_encoder(arch: str) -> str:
    """The encoder smp itself uses for ``arch`` when none is given (resnet34 for most)."""
    cls = getattr(_smp(), arch)
    return str(inspect.signature(cls.__init__).parameters["encoder_name"].default)


def smp_options(arch: str) -> list[str]:
    """Keyword options of ``smp:ARCH:...`` models: ``encoder_weights`` and the arch's own."""
    cls = getattr(_smp(), arch)
    params = [p for p in inspect.signature(cls.__init__).parameters if p not in _NOT_OPTIONS]
    return ["encoder_weights", *params, *_ARCH_DEFAULTS.get(arch, {})]


def _check_encoder(encoder: str) -> None:
    if encoder.startswith("tu-"):
        import timm

        if not timm.is_model(encoder[3:]):
            names = ["tu-" + m for m in timm.list_models()]
            close = difflib.get_close_matches(encoder, names, n=5, cutoff=0.5)
            raise UnknownNameError("timm encoder (tu- + a timm.list_models() name)", encoder, close)
    elif encoder not in smp_encoders():
        raise UnknownNameError("smp encoder (or tu-<timm model>)", encoder, smp_encoders())


def parse_smp_name(name: str) -> tuple[str, str] | None:
    """``"smp:Unet:resnet18"`` -> ``("Unet", "resnet18")``; None for a name without ``smp:``.

    The architecture is matched case-insensitively; unknown architectures and encoders raise
    :class:`~satunet.errors.UnknownNameError` with the closest names.
    """
    if not name.startswith(SMP_PREFIX):
        return None
    parts = name[len(SMP_PREFIX) :].split(":")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(
            f"smp model names are smp:ARCH:ENCODER (e.g. smp:Unet:resnet18), got {name!r}; "
            "`satunet models --all-smp` lists the architectures and encoders"
        )
    arch, encoder = parts
    by_lower = {a.lower(): a for a in smp_architectures()}
    if arch.lower() not in by_lower:
        raise UnknownNameError("smp architecture", arch, smp_architectures())
    _check_encoder(encoder)
    return by_lower[arch.lower()], encoder


def _load_encoder_file(encoder: nn.Module, path: Path, encoder_name: str) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt, truncated or foreign files
        # Never repeat torch's advice to retry with weights_only=False: that runs pickled code.
        raise WeightsUnavailableError(
            f"{path} is not a readable {encoder_name} state dict (corrupt, truncated, or not "
            f"written by torch.save): {type(e).__name__}. Save one with "
            "torch.save(encoder.state_dict(), path), or use torchvision's resnet*.pth file"
        ) from e
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsUnavailableError(
            f"{path} does not hold a state dict of a {encoder_name} encoder"
        )
    target = encoder
    inner = getattr(encoder, "model", None)  # smp's timm wrapper keeps timm's model as .model
    if isinstance(inner, nn.Module) and not set(state) & set(encoder.state_dict()):
        target = inner
    wanted = target.state_dict()
    extra = sorted(set(state) - set(wanted))
    if extra:  # a classifier file (torchvision's fc.*, timm's head.*): the encoder has none
        log.debug("%s: ignoring %d keys the encoder does not have: %s", path, len(extra), extra[:5])
    try:
        target.load_state_dict({k: v for k, v in state.items() if k in wanted})
    except RuntimeError as e:
        hint = (
            "torchvision's resnet34-*.pth layout"
            if encoder_name == "resnet34"
            else ("a state dict of this encoder, e.g. torch.save(model.encoder.state_dict(), path)")
        )
        raise WeightsUnavailableError(
            f"{path} does not match the {encoder_name} encoder ({hint} is expected): "
            f"{str(e).splitlines()[0]}"
        ) from e


def _weights_argument(encoder: str, encoder_weights: str | os.PathLike | None) -> Any:
    """What to hand smp for ``encoder_weights`` (local files are loaded after building)."""
    if encoder_weights is None:
        return None
    named = _smp().encoders.encoders.get(encoder, {}).get("pretrained_settings", {})
    if encoder_weights == "imagenet" or (
        isinstance(encoder_weights, str) and encoder_weights in named
    ):
        return True if encoder.startswith("tu-") else encoder_weights
    if not Path(encoder_weights).is_file():
        others = f" (or another smp weight name of {encoder}: {', '.join(named)})" if named else ""
        raise WeightsUnavailableError(
            f"encoder_weights={str(encoder_weights)!r} is neither 'imagenet' nor an existing "
            f"file{others}; pass None, 'imagenet', or the path to a {encoder} state dict"
        )
    return None


def _construct(cls: type, kwargs: dict[str, Any]) -> nn.Module:
    try:
        return cls(**kwargs)
    except RuntimeError as e:
        # Some encoders (mit_b*) call .item() while building: build on the CPU, then move.
        if torch.get_default_device().type != "meta" or "meta" not in str(e):
            raise
        with torch.device("cpu"):
            return cls(**kwargs).to("meta")


def _build(
    arch: str, encoder: str, kwargs: dict[str, Any], weights: Any, options: dict[str, Any]
) -> nn.Module:
    cls = getattr(_smp(), arch)
    label = f"smp:{arch}:{encoder}"
    try:
        return _construct(cls, {"encoder_name": encoder, "encoder_weights": weights, **kwargs})
    except OSError as e:  # offline: huggingface_hub / urllib errors are all OSError subclasses
        raise WeightsUnavailableError(
            f"could not fetch the ImageNet {encoder} encoder weights (no network?). Download "
            f"them on a machine with internet (for resnet34: torchvision's resnet34-b627a593.pth "
            f"or smp's resnet34 imagenet weights; for any encoder: torch.save(model.encoder."
            f"state_dict(), path)) and pass encoder_weights='/path/to/{encoder}.pth', or use "
            f"encoder_weights=None to train from scratch. Cause: {type(e).__name__}"
        ) from e
    except KeyError as e:  # smp: "Wrong pretrained weights `x` for encoder `y`..."
        raise WeightsUnavailableError(f"{label}: {e.args[0] if e.args else e}") from e
    except (ValueError, TypeError, AssertionError) as e:
        shown = f" with options {options}" if options else ""
        raise ConfigError(
            f"smp cannot build {label}{shown}: {e}. Try another encoder or architecture "
            "(`satunet models --all-smp`)" + (" or other options" if options else "")
        ) from e


def check_smp_input(model: nn.Module, args: tuple) -> None:
    """Forward pre-hook: the band count, divisibility and smallest size, explained."""
    check_input(args[0], model.in_channels, model.size_multiple, model.satunet_label)
    h, w = int(args[0].shape[-2]), int(args[0].shape[-1])
    if min(h, w) < model.min_size:
        raise InputSizeError(
            f"{model.satunet_label} needs height and width of at least {model.min_size}, got "
            f"{h}x{w}; use tiles of {model.min_size} or larger"
        )


def build_smp(
    arch: str,
    encoder: str,
    *,
    in_channels: int = 3,
    num_classes: int,
    encoder_weights: str | os.PathLike | None = None,
    label: str | None = None,
    **options: Any,
) -> nn.Module:
    """Build smp's ``arch`` with ``encoder``; ``options`` go to the smp class (see smp_options)."""
    weights = _weights_argument(encoder, encoder_weights)
    kwargs = {**_ARCH_DEFAULTS.get(arch, {}), **options}
    kwargs |= {"in_channels": in_channels, "classes": num_classes}
    model = _build(arch, encoder, kwargs, weights, options)
    if encoder_weights is not None and weights is None:
        _load_encoder_file(model.encoder, Path(encoder_weights), encoder)
    stride = int(model.encoder.output_stride)
    model.size_multiple = stride * _STRIDE_FACTOR.get(arch, 1)
    model.min_size = max(model.size_multiple, stride * _MIN_STRIDES.get(arch, 1))
    model.in_channels = in_channels
    model.num_classes = num_classes
    model.satunet_label = label or f"smp:{arch}:{encoder}"
    model.register_forward_pre_hook(check_smp_input)
    return model


def unetplusplus_resnet34(
    *, in_channels: int = 3, num_classes: int, encoder_weights: str | os.PathLike | None = None
) -> nn.Module:
    """smp UnetPlusPlus(resnet34) with smp defaults, as in the study."""
    return build_smp(
        "UnetPlusPlus", "resnet34", in_channels=in_channels, num_classes=num_classes,
        encoder_weights=encoder_weights, label="UnetPlusPlus",
    )  # fmt: skip


def deeplabv3plus_resnet34(
    *, in_channels: int = 3, num_classes: int, encoder_weights: str | os.PathLike | None = None
) -> nn.Module:
    """smp DeepLabV3Plus(resnet34) with smp defaults (output stride 16), as in the study."""
    return build_smp(
        "DeepLabV3Plus", "resnet34", in_channels=in_channels, num_classes=num_classes,
        encoder_weights=encoder_weights, label="DeepLabV3Plus",
    )  # fmt: skip
