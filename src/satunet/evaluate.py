"""Evaluation: standard scores (one confusion matrix) and the study's per-image metric together."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from satunet.checkpoint import load_checkpoint
from satunet.config import DataConfig, config_from_dict
from satunet.data import create_dataset
from satunet.data.pixels import pad_to_multiple
from satunet.data.splits import dataset_kwargs, split_by_group
from satunet.data.transforms import eval_transforms
from satunet.errors import CheckpointError, ConfigError
from satunet.files import PathLike
from satunet.infer.tta import tta_logits
from satunet.metrics import ConfusionMatrix, Scores, StudyImageIoU
from satunet.runtime import all_sum, autocast_context, rank, resolve_device

__all__ = [
    "Scores",
    "autocast_context",
    "evaluate",
    "evaluate_checkpoint",
    "predict_logits",
    "predict_samples",
]

log = logging.getLogger(__name__)


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    x: torch.Tensor,
    *,
    precision: str = "fp32",
    channels_last: bool = False,
    tta: str = "none",
) -> torch.Tensor:
    """Logits (B, C, H, W) in fp32 for any input size: padded up to the model's size multiple
    and cropped back, so validation and test tiles need not fit the architecture. ``tta``
    (none, flip, d4) averages the logits over flips/rotations (:mod:`satunet.infer.tta`)."""
    h, w = x.shape[-2:]
    x = pad_to_multiple(x, getattr(model, "size_multiple", 1))

    def run(t: torch.Tensor) -> torch.Tensor:
        if channels_last:
            t = t.contiguous(memory_format=torch.channels_last)
        return model(t).float()

    with autocast_context(x.device, precision):
        logits = tta_logits(run, x, tta)
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
    progress: bool | None = None,
    tta: str = "none",
) -> Scores:
    """Score ``model`` on every sample of ``loader`` (summed over processes under DDP).

    Args:
        loss_fn: if given, also the mean loss per sample (the validation loss of training).
        progress: show a progress bar; None (the default, e.g. training's validation): on rank
            0 only. It is always hidden when stderr is not a terminal.
        tta: test-time augmentation of the logits: none, flip or d4.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    matrix = ConfusionMatrix(num_classes, ignore_index, device=device)
    study = StudyImageIoU(num_classes, ignore_index)
    loss_sum, seen = 0.0, 0
    show = progress if progress is not None else rank() == 0
    for batch in tqdm(loader, desc="evaluate", leave=False, disable=None if show else True):
        x = batch["image"].to(device, non_blocking=True)
        y = batch["mask"].to(device, non_blocking=True)
        logits = predict_logits(model, x, precision=precision, channels_last=channels_last, tta=tta)
        if loss_fn is not None:
            loss_sum += float(loss_fn(logits, y)) * len(x)
        pred = logits.argmax(1)
        matrix.update(pred, y)
        study.update(pred, y)
        seen += len(x)
    model.train(was_training)
    matrix.all_reduce()
    study.all_reduce()
    loss_sum, seen_all = all_sum([loss_sum, seen], device)
    return Scores.from_counts(
        matrix,
        study,
        classes=classes,
        loss=loss_sum / seen_all if loss_fn is not None and seen_all else None,
        num_samples=int(seen_all),
    )


@torch.no_grad()
def predict_samples(
    model: nn.Module,
    dataset: Dataset,
    *,
    count: int = 4,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """(images, masks, predicted class ids) of the first ``count`` samples, as numpy arrays.

    What :func:`satunet.report.plot_predictions` draws; the model's train/eval mode is restored.
    """
    was_training = model.training
    model.eval()
    images, masks, preds = [], [], []
    for i in range(min(count, len(dataset))):
        sample = dataset[i]
        x = sample["image"].unsqueeze(0).to(device)
        pred = predict_logits(model, x, precision=precision).argmax(1)[0]
        images.append(sample["image"].float().cpu().numpy())
        masks.append(sample["mask"].cpu().numpy())
        preds.append(pred.cpu().numpy())
    model.train(was_training)
    return images, masks, preds


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
    tta: str = "none",
) -> Scores:
    """Rebuild the model of ``checkpoint`` and score it on a dataset split (``tta``: none,
    flip or d4 test-time augmentation).

    Dataset name, root, scene, normalisation and the validation carve-out default to those the
    checkpoint was trained with (``options`` are extra dataset arguments, e.g. tile_size).
    ``split="val"`` on a run trained with ``val_fraction > 0``
    rebuilds the same carve-out of the training split (same fraction and seed), since datasets
    such as the shared LoveDA tiles ship no validation split; pass ``val_fraction=0`` to use the
    dataset's own val split instead.
    """
    dev = resolve_device(device, precision)
    model, state = load_checkpoint(checkpoint, map_location=dev)
    cfg = config_from_dict(state["config"]) if state.get("config") else None
    d, val_fraction, seed = _data_setting(
        cfg, checkpoint, data, root, split, scene, options, val_fraction, seed
    )
    dataset, base, where = _scored_dataset(d, split, val_fraction, seed, state, checkpoint)
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
        tta=tta,
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
        "tta": tta,
    }
    return scores


def _data_setting(
    cfg: Any,
    checkpoint: PathLike,
    data: str | None,
    root: PathLike | None,
    split: str,
    scene: str | None,
    options: dict[str, Any] | None,
    val_fraction: float | None,
    seed: int | None,
) -> tuple[DataConfig, float, int]:
    """The dataset to score on: what was asked, else what the checkpoint was trained with."""
    d, trained, same_data = trained_dataset(cfg, data, root, scene, options, checkpoint)
    if val_fraction is None:
        val_fraction = trained.val_fraction if same_data and split == trained.val_split else 0.0
    return d, val_fraction, carve_out_seed(cfg) if seed is None else seed


def trained_dataset(
    cfg: Any,
    data: str | None,
    root: PathLike | None,
    scene: str | None,
    options: dict[str, Any] | None,
    checkpoint: PathLike,
) -> tuple[DataConfig, DataConfig, bool]:
    """(dataset to use, dataset trained on, whether they are the same dataset).

    Arguments win; anything not given comes from the run config the checkpoint records
    (``cfg``, or None when it records none).
    """
    trained = cfg.data if cfg is not None else DataConfig()
    same = cfg is not None and data in (None, trained.name)
    d = DataConfig(
        name=data or trained.name,
        root=str(root) if root is not None else (trained.root if same else ""),
        scene=scene if scene is not None else (trained.scene if same else None),
        train_split=trained.train_split,
        val_split=trained.val_split,
        val_fraction=trained.val_fraction if same else 0.0,
        options=dict(options if options is not None else trained.options if same else {}),
    )
    if not d.root:
        raise ConfigError(f"give the dataset root (--root); {checkpoint} does not record one")
    return d, trained, same


def carve_out_seed(cfg: Any) -> int:
    """Seed of a run's validation carve-out: ``train.split_seed`` (race runs share one), else
    the run's seed."""
    if cfg is None:
        return 0
    split_seed = getattr(cfg.train, "split_seed", None)
    return split_seed if split_seed is not None else cfg.train.seed


def _scored_dataset(
    d: DataConfig,
    split: str,
    val_fraction: float,
    seed: int,
    state: dict[str, Any],
    checkpoint: PathLike,
) -> tuple[Any, Any, str]:
    """(dataset to score, the dataset it comes from, a description of the split), checked."""
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
    return dataset, base, where
