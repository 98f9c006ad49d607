"""A run from a config: datasets, loaders, model and loss built, trained, and reported."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from satunet.checkpoint import ModelInfo, read_checkpoint
from satunet.config import RunConfig, config_from_dict
from satunet.data import create_dataset
from satunet.data.splits import (
    build_datasets,
    dataset_kwargs,
    dataset_scale,
    make_loaders,
    normalization_stats,
    split_by_group,
)
from satunet.data.transforms import compute_normalization
from satunet.errors import CheckpointError, ConfigError
from satunet.files import PathLike
from satunet.losses import create_loss
from satunet.models import create_model
from satunet.runtime import barrier, init_distributed, rank, resolve_device
from satunet.tracking import NullTracker, Tracker, create_tracker
from satunet.train.budget import Progress, fit_budget
from satunet.train.cache import CachedSamples
from satunet.train.loop import fit
from satunet.train.rundir import check_new_run_dir, finish_run, write_run_config
from satunet.train.state import TrainState, config_differences, refuse_resume

log = logging.getLogger(__name__)


def train_from_config(
    cfg: RunConfig,
    run_dir: PathLike,
    *,
    resume: bool = False,
    progress: bool = True,
    on_progress: Progress | None = None,
) -> dict[str, Any]:
    """Build datasets, loaders, model and loss from ``cfg``, train, and fill ``run_dir``.

    Returns a summary: best epoch and scores, epochs run, mean epoch times. Called by
    `satunet train` and `satunet reproduce`; works the same under torchrun. Resuming a run that
    has nothing left to train is a no-op that says so (``finished`` in the summary). With
    ``train.budget_min`` it trains for that much training time instead of epochs
    (:func:`~satunet.train.budget.fit_budget`, which calls ``on_progress``); such runs do not
    resume.
    """
    run_dir = Path(run_dir)
    created = init_distributed(cfg.train.device)
    try:
        finished = _check_run_dir(cfg, run_dir, resume)
        barrier()  # every rank checked before rank 0 writes config.toml
        if finished is not None:
            log.warning("%s has nothing left to train: %s", run_dir, finished[1])
            return _summary(cfg, run_dir, finished[0], finished=finished[1])
        device = resolve_device(cfg.train.device, cfg.train.precision)
        torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
        data_cfg = resolve_normalization(cfg)  # "dataset" -> the training images' mean/std
        train_ds, val_ds, base = _datasets(data_cfg)
        model = create_model(
            cfg.model.name,
            in_channels=base.in_channels,
            num_classes=base.num_classes,
            **cfg.model.options,
        )
        _check_crop(cfg, model)
        loss_fn = create_loss(
            cfg.train.loss,
            num_classes=base.num_classes,
            ignore_index=base.ignore_index,
            class_weights=cfg.train.class_weights,
        )
        train_loader, val_loader = make_loaders(train_ds, val_ds, cfg.train, device)
        info = model_info(data_cfg, base, model)
        if rank() == 0:
            write_run_config(run_dir, cfg)
        # Created before the first epoch, so a missing tracker package fails in second 1.
        tracker = (
            create_tracker(
                cfg.train.log, run_dir, config=cfg.to_dict(), mlflow_uri=cfg.train.mlflow_uri
            )
            if rank() == 0
            else NullTracker()
        )
        common = dict(loss_fn=loss_fn, info=info, run_dir=run_dir, config=cfg.train,
                      progress=progress, run_config=cfg.to_dict(), tracker=tracker)  # fmt: skip
        with tracker:
            if cfg.train.budget_min is not None:
                state = fit_budget(
                    model, train_loader, val_loader, on_progress=on_progress, **common
                )
            else:
                state = fit(model, train_loader, val_loader, resume=resume, **common)
            if rank() == 0:
                finish_run(run_dir, model, val_ds, info, state, device, cfg)
                log_panel(tracker, run_dir / "predictions.png", state.best_epoch)
        barrier()
        return _summary(cfg, run_dir, state)
    finally:
        if created:
            dist.destroy_process_group()


def _check_run_dir(cfg: RunConfig, run_dir: Path, resume: bool) -> tuple[TrainState, str] | None:
    """Refuse a new run over an old one, or a resume of another setup, before any work.

    Returns (state, why) when a resumed run has nothing left to train, else None.
    """
    last = run_dir / "last.pt"
    if resume and cfg.train.budget_min is not None:
        raise ConfigError(
            "a run on a time budget (train.budget_min) cannot be resumed: its clock and "
            "schedule would restart; start it again with a new --out"
        )
    if not resume:
        check_new_run_dir(run_dir)
        return None
    if not last.is_file():
        raise CheckpointError(
            f"cannot resume: {last} does not exist (no epoch of that run completed); start it "
            "again without --resume"
        )
    ckpt = read_checkpoint(last)
    refuse_resume(config_differences(ckpt.get("config") or {}, cfg.to_dict()), last)
    state = TrainState(**ckpt["train_state"]) if ckpt.get("train_state") else None
    why = state.finished(cfg.train) if state is not None else None
    return (state, why) if why else None


def resolve_normalization(cfg: RunConfig) -> RunConfig:
    """``cfg`` with ``data.normalization = "dataset"`` replaced by the per-band mean/std of the
    training images (the training side of a val_fraction carve-out), computed as `satunet data
    stats` does; other settings are returned as they are. Explicit values must fit the bands."""
    d = cfg.data
    if d.normalization == "dataset":
        dataset = create_dataset(d.name, d.root, split=d.train_split, **dataset_kwargs(d))
        if d.val_fraction > 0:
            seed = cfg.train.split_seed if cfg.train.split_seed is not None else cfg.train.seed
            train_idx, _ = split_by_group(dataset.groups, d.val_fraction, seed)
            dataset = _Reads(dataset, train_idx)
        stats = compute_normalization(dataset)
        log.info("data.normalization = dataset: mean %s, std %s", stats["mean"], stats["std"])
        return dataclasses.replace(cfg, data=dataclasses.replace(d, normalization=stats))
    return cfg


class _Reads(Dataset):
    """Untransformed samples ``indices`` of a satunet dataset (for its statistics)."""

    def __init__(self, dataset: Any, indices: list[int]) -> None:
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def read(self, i: int) -> dict[str, torch.Tensor]:
        return self.dataset.read(self.indices[i])

    __getitem__ = read


def _datasets(cfg: RunConfig) -> tuple[Dataset, Dataset, Any]:
    """build_datasets, with the carve-out seeded by ``train.split_seed`` when set, and the
    decoded tiles cached when ``train.cache_tiles``."""
    split_cfg = cfg
    if cfg.train.split_seed is not None:
        split_cfg = dataclasses.replace(
            cfg, train=dataclasses.replace(cfg.train, seed=cfg.train.split_seed)
        )
    train_ds, val_ds, base = build_datasets(split_cfg)
    if cfg.train.cache_tiles:
        train_ds, val_ds = CachedSamples(train_ds), CachedSamples(val_ds)
    return train_ds, val_ds, base


def _check_crop(cfg: RunConfig, model: torch.nn.Module) -> None:
    multiple = getattr(model, "size_multiple", 1)
    if cfg.data.crop is not None and cfg.data.crop % multiple:
        up = -(-cfg.data.crop // multiple) * multiple
        raise ConfigError(
            f"data.crop={cfg.data.crop} is not a multiple of {multiple}, which "
            f"{cfg.model.name} needs; use --crop {up}"
        )


def model_info(cfg: RunConfig, dataset: Any, model: torch.nn.Module) -> ModelInfo:
    """What the checkpoints of this run record besides the weights, incl. the pixel scale."""
    palette = getattr(dataset, "palette", None)
    return ModelInfo(
        name=cfg.model.name,
        in_channels=dataset.in_channels,
        num_classes=dataset.num_classes,
        options=dict(cfg.model.options),
        classes=tuple(dataset.classes),
        ignore_index=dataset.ignore_index,
        normalization=_fitting(normalization_stats(cfg.data.normalization), dataset.in_channels),
        scale=dataset_scale(dataset),
        bands=tuple(int(b) for b in bands) if (bands := getattr(dataset, "bands", None)) else None,
        palette=tuple(tuple(int(v) for v in c) for c in palette) if palette else None,
        size_multiple=int(getattr(model, "size_multiple", 1)),
        resolution=dataset_resolution(cfg.data.name, dataset),
    )


# Datasets whose ground resolution is fixed (metres per pixel); others are read from their files.
KNOWN_RESOLUTION_M = {"loveda": 0.3}


def dataset_resolution(name: str, dataset: Any) -> float | None:
    """Training ground resolution in m/px: known for LoveDA, else the first image's GeoTIFF
    transform (projected CRS only), else None (PNGs, geographic CRSs)."""
    if name in KNOWN_RESOLUTION_M:
        return KNOWN_RESOLUTION_M[name]
    records = getattr(dataset, "records", None)
    if not records:
        return None
    import warnings

    import rasterio

    try:
        with warnings.catch_warnings():  # PNGs: NotGeoreferencedWarning
            warnings.simplefilter("ignore")
            src = rasterio.open(records[0].image)
        with src:
            if src.crs is None or not src.crs.is_projected:
                return None
            return round(abs(src.transform.a) * src.crs.linear_units_factor[1], 6)
    except (rasterio.errors.RasterioError, OSError):
        return None


def _fitting(stats: dict[str, list[float]] | None, bands: int) -> dict[str, list[float]] | None:
    """Refuse per-band statistics for another band count than the images'."""
    if stats is not None and len(stats["mean"]) != bands:
        raise ConfigError(
            f"data.normalization has {len(stats['mean'])} mean/std values but the images have "
            f'{bands} bands: give one per band, or use "dataset"'
        )
    return stats


def _summary(
    cfg: RunConfig, run_dir: Path, state: TrainState, finished: str | None = None
) -> dict[str, Any]:
    if cfg.train.budget_min is not None:  # epochs are passes over the data; no epoch timing
        return {"run_dir": str(run_dir), "rank": rank(), "model": cfg.model.name,
                "budget_min": cfg.train.budget_min, "epochs_run": state.epoch,
                "stopped_early": state.stopped_early, "best_epoch": state.best_epoch,
                "best": state.best_scores, "mean_epoch_time_s": None,
                "mean_train_time_s": None, "history": state.history}  # fmt: skip
    times = [r["epoch_time_s"] for r in state.history]
    train_times = [r["train_time_s"] for r in state.history]
    summary = {
        "run_dir": str(run_dir),
        "rank": rank(),
        "model": cfg.model.name,
        "epochs_run": state.epoch,
        "stopped_early": state.stopped_early,
        "best_epoch": state.best_epoch,
        "best": state.best_scores,
        "mean_epoch_time_s": sum(times) / len(times) if times else None,
        "mean_train_time_s": sum(train_times) / len(train_times) if train_times else None,
        "history": state.history,
    }
    if finished is not None:
        summary["finished"] = finished
    return summary


def log_panel(tracker: Tracker, path: Path, step: int) -> None:
    """Send the run's prediction panel (predictions.png) to the tracker as an image."""
    if type(tracker) is NullTracker or not path.is_file():  # trackers subclass the null one
        return
    from PIL import Image

    with Image.open(path) as image:
        tracker.log_image("val/predictions", np.asarray(image.convert("RGB")), step)


def load_run_config(run_dir: PathLike) -> RunConfig:
    """The config a run was trained with, from its last.pt (the resume source of truth)."""
    path = Path(run_dir) / "last.pt"
    ckpt = read_checkpoint(path)
    if not ckpt.get("config"):
        raise CheckpointError(f"{path} holds no run config; it was not written by satunet train")
    return config_from_dict(ckpt["config"])
