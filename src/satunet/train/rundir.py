"""The run directory: checkpoints, metrics.jsonl, config.toml, scores and figures.

Every file is written atomically (or appended in one flushed write), so a kill at any moment
leaves a directory that ``--resume`` continues exactly. Only rank 0 calls these.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from satunet.checkpoint import ModelInfo, read_checkpoint, save_checkpoint, unwrap
from satunet.config import RunConfig, dump_toml
from satunet.errors import ConfigError, TrainingError
from satunet.evaluate import predict_samples
from satunet.files import (
    PathLike,
    append_json_line,
    atomic_write_text,
    check_output_dir,
    clean_temporaries,
)
from satunet.metrics import Scores
from satunet.report import plot_curves, plot_predictions, write_scores
from satunet.train.state import TrainState, rng_state

log = logging.getLogger(__name__)

# Files that mark a folder as holding a run: `train --out` refuses to write over any of them.
RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "scores.json", "config.toml")
PLOT_EVERY_S = 30.0  # curves.png costs ~0.5 s: refresh it at most this often, and at the end


def check_new_run_dir(run_dir: PathLike) -> Path:
    """Refuse an ``--out`` that is a file or already holds a run (never overwrite results).

    A folder whose run never finished an epoch (only config.toml, an empty metrics.jsonl) holds
    nothing to lose and may be started again; anything more is refused.
    """
    run_dir = check_output_dir(run_dir, what="run directory")
    found = [name for name in RUN_FILES if (run_dir / name).exists()]
    metrics = run_dir / "metrics.jsonl"
    never_started = set(found) <= {"config.toml", "metrics.jsonl"} and (
        not metrics.exists() or metrics.stat().st_size == 0
    )
    if found and never_started:
        log.warning("%s holds a run that never finished an epoch; starting it again", run_dir)
    elif found:
        raise ConfigError(
            f"{run_dir} already holds a run ({', '.join(found)}); continue it with "
            f"--resume {run_dir}, or choose a new --out name"
        )
    return run_dir


def prepare_run_dir(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """Create the folder, drop a killed process's temporaries, rewrite metrics.jsonl.

    The checkpoint's history is the truth: rewriting metrics.jsonl from it drops a line from an
    epoch whose checkpoint a kill prevented.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    clean_temporaries(run_dir)
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))


def write_run_config(run_dir: Path, cfg: RunConfig) -> None:
    """config.toml: the resolved config, readable and reusable with ``-c``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.toml", dump_toml(cfg))


def checkpoint_kwargs(info: ModelInfo) -> dict[str, Any]:
    """``save_checkpoint`` keyword arguments for ``info`` (scale and palette go as extras)."""
    fields = info.checkpoint_fields()
    fields["model_name"] = fields.pop("model")
    fields.pop("model_spec")  # save_checkpoint derives the design from the model itself
    if fields.get("palette") is not None:
        fields["palette"] = [list(c) for c in fields["palette"]]
    return fields


def nonfinite_parameters(model: nn.Module) -> list[str]:
    """Names of parameters and float buffers holding NaN or inf (one host sync in all).

    Buffers count: with a huge learning rate the weights can stay finite while a BatchNorm
    ``running_var`` overflows, and that checkpoint predicts garbage.
    """
    plain = unwrap(model)
    named = list(plain.named_parameters()) + [
        (name, b) for name, b in plain.named_buffers() if b.is_floating_point()
    ]
    if not named:
        return []
    flags = torch.stack([torch.isfinite(p.detach()).all() for _, p in named]).cpu().tolist()
    return [name for (name, _), ok in zip(named, flags, strict=True) if not ok]


def save_epoch(
    run_dir: Path,
    model: nn.Module,
    info: ModelInfo,
    state: TrainState,
    *,
    is_best: bool,
    run_config: dict[str, Any] | None,
    training: dict[str, Any],
) -> None:
    """best.pt (when ``is_best``) and last.pt for the epoch just finished; never non-finite.

    ``training`` holds the optimizer, scheduler and scaler state dicts for last.pt.
    """
    bad = nonfinite_parameters(model)
    if bad:
        raise TrainingError(
            f"weights became NaN/inf by the end of epoch {state.epoch} ({', '.join(bad[:3])}"
            f"{', ...' if len(bad) > 3 else ''}); the checkpoints were not overwritten. Likely "
            "causes: a learning rate too high (try --set train.lr=3e-4 or train.grad_clip=1.0) "
            "or NaN/inf values in the input images"
        )
    meta = checkpoint_kwargs(info) | {"epoch": state.epoch, "config": run_config}
    if is_best:
        save_checkpoint(run_dir / "best.pt", model, **meta, scores=state.best_scores)
    # last.pt before the metrics line: a line in metrics.jsonl means its epoch is saved.
    save_checkpoint(
        run_dir / "last.pt",
        model,
        **meta,
        **training,
        rng=rng_state(),
        train_state=dataclasses.asdict(state),
    )
    append_json_line(run_dir / "metrics.jsonl", state.history[-1])


class CurvePlotter:
    """Redraws curves.png from the history, at most every PLOT_EVERY_S seconds or when told."""

    def __init__(self, path: Path, loss_name: str | None = None) -> None:
        self.path, self.loss_name, self.last = path, loss_name, -float("inf")

    def update(self, history: list[dict[str, Any]], *, force: bool = False) -> None:
        if force or time.monotonic() - self.last > PLOT_EVERY_S:
            plot_curves(history, self.path, loss_name=self.loss_name)
            self.last = time.monotonic()


def finish_run(
    run_dir: Path,
    model: nn.Module,
    val_ds: Dataset,
    info: ModelInfo,
    state: TrainState,
    device: torch.device,
    cfg: RunConfig,
) -> None:
    """Restore the best weights, then write scores.json/md and predictions.png for them."""
    best = run_dir / "best.pt"
    if not best.is_file() or state.best_scores is None:
        log.warning("no best.pt in %s (no epoch had a defined mIoU); no scores written", run_dir)
        return
    model = unwrap(model)
    model.load_state_dict(read_checkpoint(best)["state_dict"])
    scores = Scores.from_dict(state.best_scores)
    split = "val (carved from train)" if cfg.data.val_fraction > 0 else cfg.data.val_split
    meta = {
        "checkpoint": str(best),
        "epoch": state.best_epoch,
        "dataset": cfg.data.name,
        "split": split,
        "model": info.name,
    }
    write_scores(scores, run_dir, meta=meta)
    images, masks, preds = predict_samples(
        model, val_ds, device=device, precision=cfg.train.precision
    )
    plot_predictions(
        images,
        masks,
        preds,
        run_dir / "predictions.png",
        classes=list(info.class_names()),
        palette=info.palette,
        normalization=info.normalization,
        ignore_index=info.ignore_index,
        ids=tile_ids(val_ds, len(images)),
    )
    log.info(
        "best epoch %d: val mIoU %.4f (study metric %.4f); wrote %s",
        state.best_epoch,
        scores.miou,
        scores.study_miou,
        run_dir,
    )


def tile_ids(dataset: Dataset, count: int) -> list[str]:
    """Names of the first ``count`` samples: source image stem and tile corner (row, col)."""
    indices = list(range(count))
    while isinstance(dataset, Subset):  # val carve-outs are Subsets of the dataset
        indices = [dataset.indices[i] for i in indices]
        dataset = dataset.dataset
    records = getattr(dataset, "records", None)
    if records is None:
        return [f"sample {i}" for i in range(count)]
    names = []
    for i in indices:
        record = records[i]
        window = f" @ {record.window.row},{record.window.col}" if record.window else ""
        names.append(f"{Path(record.image).stem}{window}")
    return names
