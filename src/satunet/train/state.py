"""What a run carries from epoch to epoch: its progress, its random state, and resume checks."""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from satunet.checkpoint import ModelInfo, read_checkpoint, unwrap
from satunet.config import TrainConfig
from satunet.errors import CheckpointError

log = logging.getLogger(__name__)

# Keys whose change makes a resumed run a different experiment; anything else may change.
RESUME_FIXED = ("model.", "data.", "train.seed", "train.loss", "train.class_weights")
RESUME_FREE = ("data.root",)  # a moved dataset is the same dataset
# Checkpoint keys that must match between a run and its resumption.
RESUME_MODEL_KEYS = ("model", "model_options", "in_channels", "num_classes", "classes")


@dataclass
class TrainState:
    """Progress of a run, stored in every checkpoint so ``--resume`` continues exactly."""

    epoch: int = 0  # last completed epoch
    best_miou: float = -math.inf
    best_epoch: int = 0
    best_val_loss: float = math.inf
    bad_epochs: int = 0  # epochs since val loss last improved (the study's early-stopping count)
    stopped_early: bool = False
    best_scores: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def finished(self, cfg: TrainConfig) -> str | None:
        """Why this run has nothing left to train under ``cfg`` (None: it has epochs to go)."""
        if self.epoch >= cfg.epochs:
            return (
                f"it already trained {self.epoch} of train.epochs={cfg.epochs} epochs; to train "
                f"longer, resume with --set train.epochs={self.epoch + 10} (or any larger number)"
            )
        if cfg.early_stopping > 0 and self.bad_epochs >= cfg.early_stopping:
            return (
                f"it stopped early after epoch {self.epoch} (validation loss flat for "
                f"{self.bad_epochs} epochs); to continue, resume with --set "
                f"train.early_stopping={self.bad_epochs + 5} (or 0 to turn it off)"
            )
        return None


# --------------------------------------------------------------------------- random state


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed every RNG from (seed, epoch, rank): resumed epochs draw the same crops and flips."""
    s = (seed * 1_000_003 + epoch * 1_009 + rank) % 2**31
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def rng_state() -> dict[str, Any]:
    """RNG states as tensors and lists (weights_only loading accepts no numpy objects)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))


# --------------------------------------------------------------------------- resume


def restore(
    path: Path,
    info: ModelInfo,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau,
    scaler: torch.amp.GradScaler,
    run_config: dict[str, Any] | None = None,
) -> TrainState:
    """Load a last.pt into the training objects, after checking it is the same experiment."""
    ckpt = read_checkpoint(path)
    check_resume(ckpt, info, path, run_config)
    unwrap(model).load_state_dict(ckpt["state_dict"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt["scaler"]:  # empty when the run was not fp16: keep a fresh scaler
        scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    return TrainState(**ckpt["train_state"])


def check_resume(
    ckpt: dict[str, Any],
    info: ModelInfo,
    path: Path,
    run_config: dict[str, Any] | None = None,
) -> None:
    """Refuse to resume a checkpoint with another model or dataset, saying what differs.

    ``run_config`` is the config dict of the resumed run (``RunConfig.to_dict()``), compared with
    the one stored in the checkpoint for model, dataset, seed and loss changes.
    """
    differ = []
    now_fields = info.checkpoint_fields()
    for key in RESUME_MODEL_KEYS:
        stored, now = ckpt.get(key), now_fields.get(key)
        if key == "classes" and stored is not None and now is not None:
            stored, now = list(stored), list(now)
        if stored != now:
            differ.append(f"{key}: {stored!r} in the run, {now!r} now")
    differ += config_differences(ckpt.get("config") or {}, run_config or {})
    if "optimizer" not in ckpt or "train_state" not in ckpt:
        differ.append("the checkpoint holds no training state (is it a best.pt?)")
    refuse_resume(differ, path)


def refuse_resume(differ: list[str], path: Path) -> None:
    """Raise CheckpointError listing ``differ`` (no-op when empty)."""
    if differ:
        raise CheckpointError(
            f"cannot resume {path}: it was trained with a different setup ("
            + "; ".join(differ)
            + "). Resume with the run's own settings, or start a new run with another --out."
        )


def config_differences(old_cfg: dict[str, Any], new_cfg: dict[str, Any]) -> list[str]:
    """Changes of model, dataset, seed or loss between two config dicts, as readable lines."""
    old, new = _flatten(old_cfg), _flatten(new_cfg)
    differ = []
    for key in sorted(set(old) | set(new)):
        if not key.startswith(RESUME_FIXED) or old.get(key) == new.get(key):
            continue
        if key in RESUME_FREE:
            log.warning("resuming with %s=%r (the run used %r)", key, new.get(key), old.get(key))
            continue
        differ.append(f"{key}: {old.get(key)!r} in the run, {new.get(key)!r} now")
    return differ


def _flatten(cfg: dict[str, Any]) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, table in cfg.items() for k, v in table.items()}
