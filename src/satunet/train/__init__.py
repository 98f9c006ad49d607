"""Training: :func:`fit` is the loop, :func:`train_from_config` builds everything from a config."""

from __future__ import annotations

from satunet.checkpoint import ModelInfo
from satunet.data.splits import (
    ShardSampler,
    build_datasets,
    dataset_kwargs,
    make_loaders,
    split_by_group,
)
from satunet.runtime import init_distributed, resolve_device
from satunet.train.budget import fit_budget, validation_marks
from satunet.train.cache import CachedSamples
from satunet.train.from_config import load_run_config, model_info, train_from_config
from satunet.train.loop import fit, train_epoch
from satunet.train.recipes import (
    RECIPES,
    apply_recipe,
    cpu_has_bf16,
    load_recipe_config,
    scheduled_lr,
)
from satunet.train.rundir import RUN_FILES, check_new_run_dir
from satunet.train.state import RESUME_FIXED, RESUME_FREE, TrainState, check_resume

__all__ = [
    "RECIPES",
    "RESUME_FIXED",
    "RESUME_FREE",
    "RUN_FILES",
    "CachedSamples",
    "ModelInfo",
    "ShardSampler",
    "TrainState",
    "apply_recipe",
    "build_datasets",
    "check_new_run_dir",
    "check_resume",
    "cpu_has_bf16",
    "dataset_kwargs",
    "fit",
    "fit_budget",
    "init_distributed",
    "load_recipe_config",
    "load_run_config",
    "make_loaders",
    "model_info",
    "resolve_device",
    "scheduled_lr",
    "split_by_group",
    "train_epoch",
    "train_from_config",
    "validation_marks",
]
