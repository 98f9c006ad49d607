"""Training on a wall-clock budget: :func:`fit_budget` stops at ``train.budget_min`` minutes.

The clock counts *training* time only: data loading, forward, backward and optimizer steps.
Validation is excluded (it is timed and recorded apart, as ``val_time_s``), so every model gets
the same time to learn however slow it is to validate. Validation runs on a fixed schedule of
that clock, every ``train.val_every`` of the budget (10 points by default, the last at the end
of the budget), with the standard confusion-matrix mIoU; each point records elapsed training
seconds, optimizer steps, images seen, val mIoU and per-class IoU.

Learning rate: the cosine schedule follows the fraction of the budget spent (warm-up
included), so it ends exactly with the budget. The study's plateau schedule and early stopping
count epochs as the study did: an epoch-end validation loss (excluded from the clock, too)
steps ReduceLROnPlateau and the early-stopping count. Budgeted runs are not resumable.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import DataLoader

from satunet.checkpoint import ModelInfo, save_checkpoint
from satunet.config import TrainConfig
from satunet.errors import ConfigError
from satunet.files import PathLike, append_json_line, jsonable
from satunet.metrics import Scores
from satunet.runtime import autocast_context, rank, synchronize
from satunet.tracking import NullTracker, Tracker
from satunet.train.finite import check_forward
from satunet.train.loop import (
    Run,
    batches,
    epoch_scalars,
    optimizer_step,
    start_run,
    validate_run,
)
from satunet.train.recipes import scheduled_lr, set_lr
from satunet.train.rundir import checkpoint_kwargs, prepare_run_dir
from satunet.train.state import TrainState, seed_epoch

log = logging.getLogger(__name__)

Progress = Callable[[float], None]  # called with the training seconds spent so far


@dataclass
class Clock:
    """Training time spent (validation excluded), what it bought, and the validation schedule."""

    budget_s: float
    marks: list[float]
    train_s: float = 0.0
    val_s: float = 0.0
    steps: int = 0
    images: int = 0
    epoch: int = 0
    loss_sum: float = 0.0
    loss_n: int = 0
    last: float = field(default_factory=time.perf_counter)

    def tick(self) -> None:
        """Add the time since the last tick (or the end of the last validation)."""
        now = time.perf_counter()
        self.train_s += now - self.last
        self.last = now

    def pause(self) -> float:
        """Start of a validation; returns its start time."""
        self.tick()
        return self.last

    def resume(self, started: float) -> None:
        """End of a validation: its time goes to ``val_s``, not to the budget."""
        self.last = time.perf_counter()
        self.val_s += self.last - started

    @property
    def done(self) -> bool:
        return self.train_s >= self.budget_s


def validation_marks(budget_s: float, every: float) -> list[float]:
    """Training seconds at which to validate: every ``every`` of the budget, the end included."""
    n = max(1, round(1 / every))
    return [budget_s * (k + 1) / n for k in range(n)]


def fit_budget(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader,
    *,
    loss_fn: nn.Module,
    info: ModelInfo,
    run_dir: PathLike,
    config: TrainConfig,
    progress: bool = True,
    run_config: dict[str, Any] | None = None,
    on_progress: Progress | None = None,
    tracker: Tracker | None = None,
) -> TrainState:
    """Train ``model`` for ``config.budget_min`` minutes of training time; returns its state.

    ``state.history`` holds one record per validation point (``scheduled``) and, under the
    plateau schedule or early stopping, one per epoch end (``scheduled: false``). Writes
    metrics.jsonl, best.pt (best scheduled mIoU) and last.pt (final weights, no optimizer
    state) in ``run_dir``. ``on_progress`` is called after every optimizer step.
    """
    cfg = config
    if cfg.budget_min is None:
        raise ConfigError("fit_budget needs train.budget_min (minutes of training time)")
    run = start_run(model, train_loader, loss_fn, info, Path(run_dir), cfg, False, run_config)
    run.tracker = tracker or NullTracker()
    budget_s = cfg.budget_min * 60
    clock = Clock(budget_s, validation_marks(budget_s, cfg.val_every))
    state = TrainState()
    if rank() == 0:
        prepare_run_dir(run.run_dir, [])
    log.info(
        f"training {info.name} for {cfg.budget_min:g} min of training time on {run.device} "
        f"({cfg.recipe} recipe: {cfg.optimizer} lr {cfg.lr:g}, {cfg.schedule}, {cfg.loss}, "
        f"{cfg.precision}{', channels_last' if cfg.channels_last else ''}); validation every "
        f"{clock.marks[0]:.1f} s of training, not counted in the budget"
    )
    clock.last = time.perf_counter()
    while not clock.done and not state.stopped_early:
        clock.epoch += 1
        _budget_epoch(run, state, clock, train_loader, val_loader, on_progress)
    _finish(run, state, clock, val_loader)
    return state


def _budget_epoch(
    run: Run,
    state: TrainState,
    clock: Clock,
    train_loader: DataLoader,
    val_loader: DataLoader,
    on_progress: Progress | None,
) -> None:
    """One pass over the loader, stopping at the budget; validations where the clock says."""
    cfg = run.cfg
    seed_epoch(cfg.seed, clock.epoch, rank())
    if hasattr(train_loader.sampler, "set_epoch"):
        train_loader.sampler.set_epoch(clock.epoch)
    run.model.train()
    steps = len(train_loader)
    run.optimizer.zero_grad(set_to_none=True)
    for i, (x, y) in enumerate(batches(train_loader, run.device, cfg.channels_last)):
        start = i - i % run.accumulation
        window = min(run.accumulation, steps - start)
        where = (clock.epoch, i + 1, steps, run.run_dir)
        if cfg.schedule == "cosine":
            set_lr(run.optimizer, scheduled_lr(cfg, clock.train_s / clock.budget_s))
        with autocast_context(run.device, cfg.precision):
            logits = run.model(x)
        loss = run.loss_fn(logits.float(), y)
        check_forward(x, logits, loss, run.device, where)
        run.scaler.scale(loss / window).backward()
        clock.loss_sum += loss.item() * len(x)
        clock.loss_n += len(x)
        clock.images += len(x)
        if i - start + 1 < window:
            continue
        optimizer_step(run.model, run.optimizer, run.scaler, cfg, run.device, where)
        synchronize(run.device)
        clock.steps += 1
        clock.tick()
        if on_progress is not None:
            on_progress(min(clock.train_s, clock.budget_s))
        if clock.marks and clock.train_s >= clock.marks[0]:
            # A step longer than the interval passes several marks: validate once for them all.
            clock.marks = [m for m in clock.marks if m > clock.train_s]
            _validate(run, state, clock, val_loader, scheduled=True)
            run.model.train()
        if clock.done:
            return
    if cfg.schedule == "plateau" or cfg.early_stopping > 0:
        _validate(run, state, clock, val_loader, scheduled=False)


def _validate(
    run: Run, state: TrainState, clock: Clock, val_loader: DataLoader, *, scheduled: bool
) -> Scores:
    """Score the validation set with the clock paused (on a forked random generator: see
    :func:`~satunet.train.loop.validate_run`); record it; plateau and early stopping."""
    started = clock.pause()
    scores = validate_run(run, val_loader)
    synchronize(run.device)
    if not scheduled:
        _epoch_end(run, state, clock, scores)
    elif scores.miou > state.best_miou:
        state.best_miou, state.best_epoch = scores.miou, len(state.history) + 1
        state.best_scores = jsonable(scores.as_dict())
        if rank() == 0:
            meta = checkpoint_kwargs(run.info) | {"epoch": clock.epoch, "config": run.run_config}
            save_checkpoint(run.run_dir / "best.pt", run.model, **meta, scores=state.best_scores)
    record = _record(run, clock, scores, scheduled, time.perf_counter() - started)
    state.history.append(jsonable(record))
    if rank() == 0:
        append_json_line(run.run_dir / "metrics.jsonl", state.history[-1])
        scalars = epoch_scalars(record, run.info) | {
            "perf/train_images_per_s": record["train_img_s"]
        }
        run.tracker.log_scalars(scalars, clock.steps)
    if scheduled:
        log.info(
            f"{record['elapsed_s']:7.1f} s  step {clock.steps}  {clock.images} images  "
            f"train_loss {record['train_loss']:.4f}  val_mIoU {scores.miou:.4f}  "
            f"lr {record['lr']:.1e}  (validation {record['val_time_s']:.1f} s, not counted)"
        )
    clock.resume(started)
    return scores


def _epoch_end(run: Run, state: TrainState, clock: Clock, scores: Scores) -> None:
    """The study's per-epoch plateau LR and early-stopping count on the validation loss."""
    val_loss = scores.loss if scores.loss is not None else math.nan
    if val_loss < state.best_val_loss:
        state.best_val_loss, state.bad_epochs = val_loss, 0
    else:
        state.bad_epochs += 1
    if run.cfg.schedule == "plateau":
        run.scheduler.step(val_loss)
    if run.cfg.early_stopping > 0 and state.bad_epochs >= run.cfg.early_stopping:
        state.stopped_early = True
        log.info(
            "early stopping at %.0f s (epoch %d): validation loss flat for %d epochs",
            clock.train_s,
            clock.epoch,
            state.bad_epochs,
        )


def _record(
    run: Run, clock: Clock, scores: Scores, scheduled: bool, val_time: float
) -> dict[str, Any]:
    train_loss = clock.loss_sum / clock.loss_n if clock.loss_n else math.nan
    if scheduled:
        clock.loss_sum, clock.loss_n = 0.0, 0
    return {
        "scheduled": scheduled,
        "elapsed_s": round(clock.train_s, 3),
        "steps": clock.steps,
        "images_seen": clock.images,
        "epoch": clock.epoch,
        "train_img_s": clock.images / clock.train_s if clock.train_s > 0 else None,
        "train_loss": train_loss,
        "val_loss": scores.loss,
        "val_miou": scores.miou,
        "val_iou": scores.iou,
        "val_pixel_accuracy": scores.pixel_accuracy,
        "lr": run.optimizer.param_groups[0]["lr"],
        "val_time_s": round(val_time, 3),
        "wall_s": round(clock.train_s + clock.val_s + val_time, 3),
    }


def _finish(run: Run, state: TrainState, clock: Clock, val_loader: DataLoader) -> None:
    """A last validation if the run stopped between marks; last.pt with the final weights."""
    scheduled = [r for r in state.history if r["scheduled"]]
    if not scheduled or scheduled[-1]["steps"] != clock.steps:
        _validate(run, state, clock, val_loader, scheduled=True)
    state.epoch = clock.epoch
    if rank() == 0:
        meta = checkpoint_kwargs(run.info) | {"epoch": clock.epoch, "config": run.run_config}
        save_checkpoint(
            run.run_dir / "last.pt", run.model, **meta, train_state=dataclasses.asdict(state)
        )
    log.info(
        "%s: %.0f s of training (%d steps, %d images, %.1f images/s), %.0f s of validation",
        run.info.name,
        clock.train_s,
        clock.steps,
        clock.images,
        clock.images / max(clock.train_s, 1e-9),
        clock.val_s,
    )
