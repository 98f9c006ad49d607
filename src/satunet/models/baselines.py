"""The study's reference models from segmentation-models-pytorch (imported lazily: it is slow)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from satunet.errors import WeightsUnavailableError
from satunet.models.unet import check_input


def _load_encoder_file(model: nn.Module, path: Path) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as e:
        raise WeightsUnavailableError(f"could not read encoder weights from {path}: {e}") from e
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsUnavailableError(f"{path} does not hold a state dict of a resnet34 encoder")
    try:
        model.encoder.load_state_dict(state)  # smp's ResNetEncoder drops the fc.* keys itself
    except RuntimeError as e:
        raise WeightsUnavailableError(
            f"{path} does not match the resnet34 encoder (torchvision's resnet34-*.pth layout "
            f"is expected): {str(e).splitlines()[0]}"
        ) from e


def _build_smp(
    cls_name: str, in_channels: int, num_classes: int, encoder_weights: str | os.PathLike | None
) -> nn.Module:
    import segmentation_models_pytorch as smp

    cls = getattr(smp, cls_name)
    local = None
    if encoder_weights is not None and encoder_weights != "imagenet":
        local = Path(encoder_weights)
        if not local.is_file():
            raise WeightsUnavailableError(
                f"encoder_weights={str(encoder_weights)!r} is neither 'imagenet' nor an existing "
                f"file; pass None, 'imagenet', or the path to a resnet34 state dict"
            )
    try:
        model = cls(
            encoder_name="resnet34",
            encoder_weights="imagenet" if encoder_weights == "imagenet" else None,
            in_channels=in_channels,
            classes=num_classes,
        )
    except OSError as e:  # offline: huggingface_hub / urllib errors are all OSError subclasses
        raise WeightsUnavailableError(
            "could not fetch the ImageNet resnet34 encoder weights (no network?). Download "
            "torchvision's resnet34-b627a593.pth (or smp's resnet34 imagenet weights) on a "
            "machine with internet and pass encoder_weights='/path/to/resnet34.pth', or use "
            f"encoder_weights=None to train from scratch. Cause: {type(e).__name__}"
        ) from e
    if local is not None:
        _load_encoder_file(model, local)
    # Both need H, W divisible by the encoder's output stride; check up front for a clear error.
    model.size_multiple = 32 if cls_name == "UnetPlusPlus" else 16
    model.in_channels = in_channels
    model.num_classes = num_classes
    model.register_forward_pre_hook(
        lambda m, args: check_input(args[0], m.in_channels, m.size_multiple, cls_name)
    )
    return model


def unetplusplus_resnet34(
    *, in_channels: int = 3, num_classes: int, encoder_weights: str | os.PathLike | None = None
) -> nn.Module:
    """smp UnetPlusPlus(resnet34) with smp defaults, as in the study."""
    return _build_smp("UnetPlusPlus", in_channels, num_classes, encoder_weights)


def deeplabv3plus_resnet34(
    *, in_channels: int = 3, num_classes: int, encoder_weights: str | os.PathLike | None = None
) -> nn.Module:
    """smp DeepLabV3Plus(resnet34) with smp defaults (output stride 16), as in the study."""
    return _build_smp("DeepLabV3Plus", in_channels, num_classes, encoder_weights)
