"""Evaluation: standard scores (one confusion matrix) and the study's per-image metric together."""

from __future__ import annotations

import logging
import math
import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from satunet.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Scores:
    """Scores of one model on one split.

    ``miou``, ``iou``, ``f1``, ``micro_iou`` and ``pixel_accuracy`` are the standard scores from
    one confusion matrix over every pixel (comparable with published results); ``study_miou``
    and ``study_iou`` are the study's per-image metric (seed spec section 6), kept to reproduce
    its tables, not to compare. Per-class values are nan (None in JSON) where undefined.
    """

    classes: list[str]
    miou: float
    iou: list[float]
    f1: list[float]
    micro_iou: float
    pixel_accuracy: float
    study_miou: float
    study_iou: list[float]
    loss: float | None = None
    num_samples: int = 0
    ignore_index: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict with nan written as None, ready for strict JSON."""
        return _none_for_nan(asdict(self))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Scores:
        """Inverse of :meth:`as_dict` (None back to nan)."""
        known = {f for f in cls.__dataclass_fields__}
        values = {k: _nan_for_none(v) for k, v in raw.items() if k in known}
        for key in ("loss", "ignore_index"):
            if key in raw:
                values[key] = raw[key]
        return cls(**values)


def _none_for_nan(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_none_for_nan(v) for v in value]
    if isinstance(value, dict):
        return {k: _none_for_nan(v) for k, v in value.items()}
    return value


def _nan_for_none(value: Any) -> Any:
    if value is None:
        return math.nan
    if isinstance(value, list):
        return [_nan_for_none(v) for v in value]
    return value


def autocast_context(device: torch.device, precision: str) -> AbstractContextManager:
    """Mixed-precision context for ``precision`` (fp32: none; bf16 on CPU/CUDA; fp16 on CUDA)."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, int, int]:
    """Pad H and W up to ``multiple`` (reflected, or replicated when too small to reflect)."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, h, w


@torch.no_grad()
def predict_logits(
    model: nn.Module, x: torch.Tensor, *, precision: str = "fp32", channels_last: bool = False
) -> torch.Tensor:
    """Logits (B, C, H, W) in fp32 for any input size: padded up to the model's size multiple
    and cropped back, so validation and test tiles need not fit the architecture."""
    x, h, w = _pad_to_multiple(x, getattr(model, "size_multiple", 1))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast_context(x.device, precision):
        logits = model(x)
    return logits[..., :h, :w].float()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    *,
    num_classes: int,
    ignore_index: int | None,
    device: torch.device | str,
    precision: str = "fp32",
    loss_fn: nn.Module | None = None,
    channels_last: bool = False,
    classes: list[str] | None = None,
    progress: bool = False,
) -> Scores:
    """Score ``model`` on every sample of ``loader`` (summed over processes under DDP).

    Args:
        loss_fn: if given, also the mean loss per sample (the validation loss of training).
        progress: show a progress bar (hidden when stderr is not a terminal).
    """
    from tqdm.auto import tqdm

    from satunet.metrics import ConfusionMatrix, StudyImageIoU
    from satunet.train import _all_sum

    device = torch.device(device)
    was_training = model.training
    model.eval()
    matrix = ConfusionMatrix(num_classes, ignore_index, device=device)
    study = StudyImageIoU(num_classes, ignore_index)
    loss_sum, seen = 0.0, 0
    for batch in tqdm(loader, desc="evaluate", leave=False, disable=None if progress else True):
        x = batch["image"].to(device, non_blocking=True)
        y = batch["mask"].to(device, non_blocking=True)
        logits = predict_logits(model, x, precision=precision, channels_last=channels_last)
        if loss_fn is not None:
            loss_sum += float(loss_fn(logits, y)) * len(x)
        pred = logits.argmax(1)
        matrix.update(pred, y)
        study.update(pred, y)
        seen += len(x)
    model.train(was_training)
    matrix.all_reduce()
    study.all_reduce()
    loss_sum, seen_all = _all_sum([loss_sum, seen], device)
    standard, theirs = matrix.compute(), study.compute()
    return Scores(
        classes=list(classes) if classes is not None else [str(i) for i in range(num_classes)],
        miou=standard["miou"],
        iou=standard["iou"],
        f1=standard["f1"],
        micro_iou=standard["micro_iou"],
        pixel_accuracy=standard["pixel_accuracy"],
        study_miou=theirs["study_miou"],
        study_iou=theirs["study_iou"],
        loss=loss_sum / seen_all if loss_fn is not None and seen_all else None,
        num_samples=int(seen_all),
        ignore_index=ignore_index,
    )


def evaluate_checkpoint(
    checkpoint: PathLike,
    *,
    data: str | None = None,
    root: PathLike | None = None,
    split: str = "val",
    scene: str | None = None,
    options: dict[str, Any] | None = None,
    val_fraction: float | None = None,
    seed: int | None = None,
    batch_size: int = 4,
    num_workers: int = 0,
    device: str = "auto",
    precision: str = "fp32",
    progress: bool = True,
) -> Scores:
    """Rebuild the model of ``checkpoint`` and score it on a dataset split.

    Dataset name, root, scene, normalisation and the validation carve-out default to those the
    checkpoint was trained with (``options`` are extra dataset arguments, e.g. tile_size).
    ``split="val"`` on a run trained with ``val_fraction > 0``
    rebuilds the same carve-out of the training split (same fraction and seed), since datasets
    such as the shared LoveDA tiles ship no validation split; pass ``val_fraction=0`` to use the
    dataset's own val split instead.
    """
    from torch.utils.data import Subset

    from satunet.checkpoint import load_checkpoint
    from satunet.config import DataConfig, config_from_dict
    from satunet.data import create_dataset
    from satunet.data.transforms import eval_transforms
    from satunet.train import dataset_kwargs, resolve_device, split_by_group

    dev = resolve_device(device, precision)
    model, state = load_checkpoint(checkpoint, map_location=dev)
    cfg = config_from_dict(state["config"]) if state.get("config") else None
    trained = cfg.data if cfg is not None else DataConfig()
    same_data = cfg is not None and data in (None, trained.name)
    d = DataConfig(
        name=data or trained.name,
        root=str(root) if root is not None else (trained.root if same_data else ""),
        scene=scene if scene is not None else (trained.scene if same_data else None),
        train_split=trained.train_split,
        options=dict(options if options is not None else trained.options if same_data else {}),
    )
    if not d.root:
        raise ConfigError(f"give the dataset root (--root); {checkpoint} does not record one")
    if val_fraction is None:
        val_fraction = trained.val_fraction if same_data and split == trained.val_split else 0.0
    if seed is None:
        seed = cfg.train.seed if cfg is not None else 0
    transforms = eval_transforms(state.get("normalization"))
    kwargs = dataset_kwargs(d)
    if val_fraction > 0:
        base = create_dataset(d.name, d.root, split=d.train_split, transforms=transforms, **kwargs)
        _, val_idx = split_by_group(base.groups, val_fraction, seed)
        dataset: Any = Subset(base, val_idx)
        where = f"{split} = {val_fraction:g} of {d.train_split} by source image, seed {seed}"
    else:
        base = dataset = create_dataset(
            d.name, d.root, split=split, transforms=transforms, **kwargs
        )
        where = split
    if not getattr(base, "labeled", True):
        raise ConfigError(
            f"the {split} split of {d.name} at {d.root} has no masks to score against (LoveDA "
            "withholds its test labels); evaluate on val, or use `satunet predict` for maps"
        )
    if base.num_classes != state["num_classes"]:
        raise CheckpointError(
            f"{checkpoint} predicts {state['num_classes']} classes but {d.name} at {d.root} has "
            f"{base.num_classes} ({', '.join(base.classes)}); evaluate it on the dataset (and "
            "labels setting) it was trained for"
        )
    loader = DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, pin_memory=dev.type == "cuda"
    )
    log.info("evaluating %s on %s %s (%d samples)", checkpoint, d.name, where, len(dataset))
    scores = evaluate(
        model,
        loader,
        num_classes=state["num_classes"],
        ignore_index=base.ignore_index,
        device=dev,
        precision=precision,
        classes=state.get("classes") or list(base.classes),
        progress=progress,
    )
    scores.extra = {
        "checkpoint": str(checkpoint),
        "model": state["model"],
        "epoch": state.get("epoch"),
        "dataset": d.name,
        "root": str(d.root),
        "scene": d.scene,
        "split": where,
        "precision": precision,
    }
    return scores
