"""The training loop: :func:`fit` runs epochs of :func:`train_epoch` and validation.

fit() holds the study's recipe (Adam, ReduceLROnPlateau on validation loss, early stopping) with
the study's flaws fixed: the loss is divided over accumulation steps, the best checkpoint is
kept, validation is deterministic, and every epoch is checkpointed atomically so a killed run
resumes exactly. Under ``torchrun`` it runs DistributedDataParallel; only rank 0 writes files.
Inputs, logits, loss, gradients and weights are checked every step: a diverging run stops
with a TrainingError that names the epoch, step and likely cause, and never saves NaN weights.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from satunet.checkpoint import ModelInfo, unwrap
from satunet.config import TrainConfig
from satunet.errors import ConfigError, TrainingError
from satunet.evaluate import evaluate
from satunet.files import PathLike, jsonable
from satunet.metrics import Scores
from satunet.runtime import (
    all_sum,
    autocast_context,
    barrier,
    rank,
    resolve_device,
    synchronize,
    world_size,
)
from satunet.tracking import NullTracker, Tracker
from satunet.train.finite import Check, check_forward, nonfinite_error, norm_finite, raise_if_bad
from satunet.train.recipes import check_schedule, make_optimizer, scheduled_lr, set_lr
from satunet.train.rundir import CurvePlotter, prepare_run_dir, save_epoch
from satunet.train.state import TrainState, restore, seed_epoch

log = logging.getLogger(__name__)


@dataclass
class Run:
    """The objects one training run threads through its epochs."""

    model: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    scaler: torch.amp.GradScaler
    cfg: TrainConfig
    device: torch.device
    accumulation: int
    info: ModelInfo
    run_dir: Path
    run_config: dict[str, Any] | None
    progress: bool
    tracker: Tracker = field(default_factory=NullTracker)


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader,
    *,
    loss_fn: nn.Module,
    info: ModelInfo,
    run_dir: PathLike,
    config: TrainConfig | None = None,
    resume: bool = False,
    progress: bool = True,
    run_config: dict[str, Any] | None = None,
    tracker: Tracker | None = None,
) -> TrainState:
    """Train ``model``, validating and checkpointing every epoch; returns the run's state.

    Writes ``last.pt`` every epoch and ``best.pt`` on the best validation mIoU (both atomic and
    self-describing: ``info`` plus ``run_config``, the ``RunConfig.to_dict()`` of the run), one
    ``metrics.jsonl`` line per epoch and ``curves.png``. With ``resume=True`` it continues from
    ``run_dir/last.pt`` at the next epoch with the same weights, optimizer, scheduler, scaler,
    early-stopping state and per-epoch random seeds. Under torch.distributed the model is
    wrapped in DistributedDataParallel; the loaders must already shard the data (see
    :func:`satunet.data.splits.make_loaders`).
    """
    cfg = config or TrainConfig()
    run = start_run(model, train_loader, loss_fn, info, Path(run_dir), cfg, progress, run_config)
    run.tracker = tracker or NullTracker()
    state = TrainState()
    if resume:
        barrier()  # rank 0 may still be finishing a file another rank is about to read
        state = restore(
            run.run_dir / "last.pt",
            info,
            run.model,
            run.optimizer,
            run.scheduler,
            run.scaler,
            run_config,
        )
        done = state.finished(cfg)
        if done:
            log.warning("%s has nothing left to train: %s", run.run_dir, done)
            return state
        log.info("resuming %s at epoch %d of %d", run.run_dir, state.epoch + 1, cfg.epochs)
    if rank() == 0:
        prepare_run_dir(run.run_dir, state.history)
    if world_size() > 1:
        ddp_device = [run.device.index] if run.device.type == "cuda" else None
        run.model = nn.parallel.DistributedDataParallel(run.model, device_ids=ddp_device)
    log.info(
        f"training {info.name} on {run.device}: {len(train_loader.dataset)} train / "
        f"{len(val_loader.dataset)} val samples, batch {cfg.batch_size} = "
        f"{train_loader.batch_size or 1} x {run.accumulation} step(s) x {world_size()} "
        f"process(es), {cfg.precision}"
    )
    plotter = CurvePlotter(run.run_dir / "curves.png", loss_name=cfg.loss)
    for epoch in range(state.epoch + 1, cfg.epochs + 1):
        # Checked against the current setting, so a resume may extend a stopped run.
        if state.finished(cfg):
            break
        _epoch(run, state, epoch, train_loader, val_loader, plotter)
    return state


def start_run(
    model: nn.Module,
    train_loader: DataLoader,
    loss_fn: nn.Module,
    info: ModelInfo,
    run_dir: Path,
    cfg: TrainConfig,
    progress: bool,
    run_config: dict[str, Any] | None,
) -> Run:
    """Check the batch arithmetic, move model and loss to the device, build the optimizer."""
    device = resolve_device(cfg.device, cfg.precision)
    micro, world = train_loader.batch_size or 1, world_size()
    if cfg.batch_size % (micro * world):
        raise ConfigError(
            f"train.batch_size={cfg.batch_size} is not a multiple of micro_batch_size={micro} x "
            f"{world} process(es); choose a batch size that is, or set train.micro_batch_size"
        )
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    loss_fn.to(device)
    check_schedule(cfg)
    optimizer = make_optimizer(model.parameters(), cfg)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=cfg.lr_factor, patience=cfg.lr_patience
    )
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    return Run(
        model,
        loss_fn,
        optimizer,
        scheduler,
        scaler,
        cfg,
        device,
        cfg.batch_size // (micro * world),
        info,
        run_dir,
        run_config,
        progress,
    )


def _epoch(
    run: Run,
    state: TrainState,
    epoch: int,
    train_loader: DataLoader,
    val_loader: DataLoader,
    plotter: CurvePlotter,
) -> None:
    """Train one epoch, validate, update ``state``, and (rank 0) write the run directory."""
    cfg = run.cfg
    seed_epoch(cfg.seed, epoch, rank())
    if hasattr(train_loader.sampler, "set_epoch"):
        train_loader.sampler.set_epoch(epoch)
    if cfg.schedule == "cosine":  # per epoch here; per step under a time budget
        set_lr(run.optimizer, scheduled_lr(cfg, (epoch - 1) / cfg.epochs))
    lr = run.optimizer.param_groups[0]["lr"]
    t0 = time.perf_counter()
    train_loss = train_epoch(
        run.model,
        train_loader,
        run.loss_fn,
        run.optimizer,
        run.scaler,
        cfg=cfg,
        device=run.device,
        accumulation=run.accumulation,
        epoch=epoch,
        run_dir=run.run_dir,
        progress=run.progress and rank() == 0,
        tracker=run.tracker,
    )
    synchronize(run.device)
    train_time = time.perf_counter() - t0
    scores = validate_run(run, val_loader)
    synchronize(run.device)
    epoch_time = time.perf_counter() - t0  # train + validation, as the study timed it
    is_best = _update_state(run, state, epoch, scores)
    record = {
        "epoch": epoch,
        "train_loss": train_loss,
        "val_loss": scores.loss,
        "val_miou": scores.miou,
        "val_study_miou": scores.study_miou,
        "val_micro_iou": scores.micro_iou,
        "val_pixel_accuracy": scores.pixel_accuracy,
        "val_iou": scores.iou,
        "lr": lr,
        "epoch_time_s": epoch_time,
        "train_time_s": train_time,
        "best": is_best,
    }
    state.history.append(jsonable(record))
    if rank() == 0:
        images_s = len(train_loader.dataset) / train_time if train_time > 0 else None
        scalars = epoch_scalars(record, run.info) | {"perf/train_images_per_s": images_s}
        run.tracker.log_scalars(scalars, epoch)
        _save(run, state, is_best, plotter)
        log.info(
            f"epoch {epoch}/{cfg.epochs}  train_loss {train_loss:.4f}  val_loss "
            f"{scores.loss:.4f}  val_mIoU {scores.miou:.4f} (study {scores.study_miou:.4f})  "
            f"lr {lr:.1e}  {epoch_time:.1f}s (train {train_time:.1f}s)"
            + ("  *best" if is_best else "")
        )
    barrier()
    if state.stopped_early:
        log.info(
            "early stopping after epoch %d: validation loss has not improved for %d epochs",
            epoch,
            state.bad_epochs,
        )


def validate_run(run: Run, val_loader: DataLoader) -> Scores:
    """Score the validation set with the run's model, loss, precision and memory format.

    Iterating a DataLoader draws its base seed from torch's global generator, which also
    drives the training crops and flips. Validation runs on a forked generator, so a
    validation point (which a time budget puts at a different step on a faster or slower
    machine) leaves the seed's training draws as they were.
    """
    with torch.random.fork_rng(devices=[]):
        return evaluate(
            unwrap(run.model),
            val_loader,
            num_classes=run.info.num_classes,
            ignore_index=run.info.ignore_index,
            device=run.device,
            precision=run.cfg.precision,
            loss_fn=run.loss_fn,
            channels_last=run.cfg.channels_last,
            classes=list(run.info.classes) if run.info.classes else None,
        )


def _save(run: Run, state: TrainState, is_best: bool, plotter: CurvePlotter) -> None:
    """Rank 0: checkpoints, the metrics line and (now and then) curves.png for this epoch."""
    training = {
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
    }
    save_epoch(
        run.run_dir,
        run.model,
        run.info,
        state,
        is_best=is_best,
        run_config=run.run_config,
        training=training,
    )
    plotter.update(state.history, force=state.epoch == run.cfg.epochs or state.stopped_early)


def _update_state(run: Run, state: TrainState, epoch: int, scores: Scores) -> bool:
    """Early-stopping count, LR schedule and best scores after validation; True if best."""
    val_loss = scores.loss if scores.loss is not None else math.nan
    if not math.isfinite(val_loss):
        raise TrainingError(
            nonfinite_error(f"validation loss became {val_loss}", epoch, None, 0, run.run_dir)
        )
    # The study's early stopping: count epochs without a strictly lower validation loss.
    if val_loss < state.best_val_loss:
        state.best_val_loss, state.bad_epochs = val_loss, 0
    else:
        state.bad_epochs += 1
    if run.cfg.schedule == "plateau":
        run.scheduler.step(val_loss)
    is_best = scores.miou > state.best_miou  # nan (no class seen) never counts as best
    if is_best:
        state.best_miou, state.best_epoch = scores.miou, epoch
        state.best_scores = jsonable(scores.as_dict())
    cfg = run.cfg
    state.stopped_early = cfg.early_stopping > 0 and state.bad_epochs >= cfg.early_stopping
    state.epoch = epoch
    return is_best


# --------------------------------------------------------------------------- one epoch


def epoch_scalars(record: dict[str, Any], info: ModelInfo) -> dict[str, float | None]:
    """A metrics.jsonl record as tracker scalars: losses, mIoU, per-class IoU, lr, timings."""
    scalars = {
        "train/loss": record.get("train_loss"),
        "val/loss": record.get("val_loss"),
        "val/mIoU": record.get("val_miou"),
        "val/study_mIoU": record.get("val_study_miou"),
        "val/micro_IoU": record.get("val_micro_iou"),
        "val/pixel_accuracy": record.get("val_pixel_accuracy"),
        "lr": record.get("lr"),
        "perf/epoch_time_s": record.get("epoch_time_s"),
    }
    names = info.class_names()
    for k, value in enumerate(record.get("val_iou") or []):
        scalars[f"val/IoU/{names[k] if k < len(names) else k}"] = value
    return scalars


def batches(
    loader: DataLoader, device: torch.device, channels_last: bool
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for batch in loader:
        x = batch["image"].to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        yield x, batch["mask"].to(device, non_blocking=True)


def optimizer_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    cfg: TrainConfig,
    device: torch.device,
    where: tuple[Any, ...],
) -> None:
    """Clip, step and check gradients and weights are finite, then clear the gradients."""
    if cfg.grad_clip is not None:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    # Under fp16 an inf gradient is the GradScaler's business: it skips that step.
    grads = [] if scaler.is_enabled() else [p.grad for p in params]
    grads_ok = norm_finite(grads, device)  # after clipping: a NaN clip makes them NaN too
    scaler.step(optimizer)
    scaler.update()
    lr = optimizer.param_groups[0]["lr"]
    checks: list[Check] = [
        (grads_ok, f"gradients became NaN/inf (lr {lr:g}, grad_clip {cfg.grad_clip})", grads),
        (
            norm_finite(params, device),
            f"weights became NaN/inf after the optimizer step (lr {lr:g})",
            params,
        ),
    ]
    raise_if_bad(checks, device, where)
    optimizer.zero_grad(set_to_none=True)


def train_epoch(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    *,
    cfg: TrainConfig,
    device: torch.device,
    accumulation: int,
    epoch: int,
    run_dir: Path,
    progress: bool,
    tracker: Tracker | None = None,
) -> float:
    """One pass over ``loader``; returns the mean training loss per sample over all processes.

    ``tracker`` gets the loss and learning rate of every optimizer step (global step count).
    """
    model.train()
    steps = len(loader)
    loss_sum, seen = 0.0, 0
    optimizer.zero_grad(set_to_none=True)
    bar = tqdm(
        total=steps,
        desc=f"epoch {epoch}/{cfg.epochs}",
        leave=False,
        dynamic_ncols=True,
        disable=None if progress else True,  # None: hidden when stderr is not a terminal
    )
    with bar:
        for i, (x, y) in enumerate(batches(loader, device, cfg.channels_last)):
            # Accumulation windows: divide by the micro-steps of *this* window, so the last,
            # partial window of an epoch is averaged correctly too (the study summed).
            start = i - i % accumulation
            window = min(accumulation, steps - start)
            step_now = i - start + 1 == window
            where = (epoch, i + 1, steps, run_dir)
            sync = model.no_sync() if not step_now and hasattr(model, "no_sync") else nullcontext()
            with sync:
                with autocast_context(device, cfg.precision):
                    logits = model(x)
                loss = loss_fn(logits.float(), y)
                check_forward(x, logits, loss, device, where)
                scaler.scale(loss / window).backward()
            if step_now:
                optimizer_step(model, optimizer, scaler, cfg, device, where)
            loss_value = loss.item()
            if step_now and tracker is not None:
                lr = optimizer.param_groups[0]["lr"]
                step = (epoch - 1) * -(-steps // accumulation) + i // accumulation + 1
                tracker.log_scalars({"step/train_loss": loss_value, "step/lr": lr}, step)
            loss_sum += loss_value * len(x)
            seen += len(x)
            bar.update()
            bar.set_postfix(
                loss=f"{loss_sum / seen:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.1e}"
            )
    total, count = all_sum([loss_sum, seen], device)
    return total / max(count, 1)
