"""Self-describing checkpoints: one file rebuilds the model, written atomically, read safely."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from satunet.errors import CheckpointError

PathLike = str | os.PathLike[str]
FORMAT = "satunet-checkpoint"
FORMAT_VERSION = 1


def atomic_save(obj: Any, path: PathLike) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over ``path``.

    A crash at any moment leaves either the old file or the new one, never a torn file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it owner-only; a checkpoint is a normal file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def save_checkpoint(
    path: PathLike,
    model: nn.Module,
    *,
    model_name: str,
    model_options: dict[str, Any] | None = None,
    in_channels: int,
    num_classes: int,
    classes: tuple[str, ...] | list[str] | None = None,
    ignore_index: int | None = None,
    normalization: dict[str, list[float]] | None = None,
    **extra: Any,
) -> None:
    """Write a checkpoint that :func:`load_checkpoint` can turn back into a model on its own.

    ``extra`` holds training state (epoch, optimizer, scheduler, scaler, RNG, config, metrics):
    only tensors, numbers, strings, lists and dicts, so ``weights_only=True`` loading works.
    """
    spec = getattr(unwrap(model), "spec", None)
    state = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model_name,
        "model_options": dict(model_options or {}),
        "in_channels": in_channels,
        "num_classes": num_classes,
        "classes": list(classes) if classes is not None else None,
        "ignore_index": ignore_index,
        "normalization": normalization,
        "state_dict": unwrap(model).state_dict(),
        # A UNet's design as data, so a model named by a presets file rebuilds without the file.
        "model_spec": _spec_to_dict(spec()) if callable(spec) else None,
        **extra,
    }
    atomic_save(state, path)


def _spec_to_dict(preset: Any) -> dict[str, Any]:
    from satunet.models.presets import presets_to_dict

    return presets_to_dict({"model": preset})["presets"]["model"]


def read_checkpoint(path: PathLike) -> dict[str, Any]:
    """Load and validate a checkpoint dict (weights_only: no code in a checkpoint runs)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated / foreign pickles
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated, or not written by torch.save): "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a satunet checkpoint (no '{FORMAT}' marker); "
            "use a best.pt or last.pt written by `satunet train`"
        )
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer satunet (format {state['format_version']}); upgrade"
        )
    return state


def load_checkpoint(
    path: PathLike, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model stored in a checkpoint; returns (model in eval mode, checkpoint dict)."""
    from satunet.models import create_model

    state = read_checkpoint(path)
    from satunet.models.presets import parse_preset, split_reference

    # Pretrained weights are already in the state dict: never fetch or read them again.
    options = {k: v for k, v in state["model_options"].items() if k != "encoder_weights"}
    sizes = {"in_channels": state["in_channels"], "num_classes": state["num_classes"]}
    if split_reference(state["model"]) is not None and state.get("model_spec"):
        # A presets-file model: the stored design wins (the file may have moved or changed).
        model = parse_preset(Path(path), state["model"], state["model_spec"]).build(
            **sizes, **options
        )
    else:
        model = create_model(state["model"], **sizes, **options)
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(
            f"{path}: weights do not fit model {state['model']!r}: {str(e).splitlines()[0]}"
        ) from e
    return model.to(map_location).eval(), state
