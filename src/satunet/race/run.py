"""``race``: train models one after another on the same time budget, then compare them."""

from __future__ import annotations

import gc
import logging
import os
import platform
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from satunet.config import DataConfig, ModelConfig, RunConfig, TrainConfig, validate
from satunet.errors import ConfigError
from satunet.files import PathLike, atomic_write_json, atomic_write_text
from satunet.race.plot import plot_race
from satunet.race.summary import race_markdown, summarize_race
from satunet.runtime import configure_cpu_threads, resolve_device
from satunet.train import apply_recipe, check_new_run_dir, cpu_has_bf16, train_from_config

log = logging.getLogger(__name__)


def run_name(model: str, seed: int) -> str:
    """The run directory name of ``model`` (a registry name or FILE:NAME) and ``seed``."""
    short = model.rpartition(":")[2] or model
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', short)}-seed{seed}"


def race_configs(
    models: Sequence[str],
    seeds: Sequence[int],
    *,
    data: DataConfig,
    train: TrainConfig,
    recipe: str,
    device: torch.device,
    mixed: bool | None = None,
) -> list[RunConfig]:
    """One config per (seed, model), seed-major, all with the same recipe, data and crop."""
    recipe_train = apply_recipe(train, recipe, device, mixed=mixed)
    configs = []
    for seed in seeds:
        for name in models:
            cfg = RunConfig(
                model=ModelConfig(name=name),
                data=DataConfig(**{**data.__dict__, "options": dict(data.options)}),
                train=TrainConfig(**{**recipe_train.__dict__, "seed": seed}),
            )
            validate(cfg)
            configs.append(cfg)
    return configs


def race(
    models: Sequence[str],
    *,
    data: str,
    root: PathLike,
    budget_min: float,
    seeds: Sequence[int] = (0,),
    recipe: str = "fast",
    scene: str | None = None,
    val_fraction: float = 0.2,
    crop: int | None = 256,
    batch_size: int = 8,
    out: PathLike = "runs/race",
    device: str = "auto",
    val_every: float = 0.1,
    workers: int = 0,
    split_seed: int = 0,
    mixed: bool | None = None,
    reference: str | None = None,
    data_options: Mapping[str, Any] | None = None,
    progress: bool = True,
    command: str | None = None,
) -> dict[str, Any]:
    """Train every model for ``budget_min`` minutes of training time per seed, one at a time.

    Every run uses the same recipe, data, validation carve-out (seeded by ``split_seed``, the
    same for every seed), crop and batch; seeds change the initial weights and the order of
    crops. Validation (every ``val_every`` of the budget) does not count against the budget.
    Writes OUT/race.json, OUT/race.md, OUT/curves.png and OUT/runs/MODEL-seedS/; returns the
    race.json content.
    """
    models, seeds = list(dict.fromkeys(models)), list(dict.fromkeys(seeds))
    if not models or not seeds:
        raise ConfigError("a race needs at least one model and one seed")
    if not budget_min > 0:
        raise ConfigError(f"--budget-min must be > 0, got {budget_min}")
    if reference is not None and reference not in models:
        raise ConfigError(f"--reference {reference} is not one of the raced models {models}")
    dev = resolve_device(device, "fp32")
    threads = configure_cpu_threads()
    out = Path(out)
    base_data = DataConfig(name=data, root=str(root), scene=scene, val_fraction=val_fraction,
                           crop=crop, options=dict(data_options or {}))  # fmt: skip
    base_train = TrainConfig(batch_size=batch_size, device=device, budget_min=budget_min,
                             val_every=val_every, num_workers=workers,
                             split_seed=split_seed)  # fmt: skip
    configs = race_configs(models, seeds, data=base_data, train=base_train, recipe=recipe,
                           device=dev, mixed=mixed)  # fmt: skip
    for cfg in configs:  # refuse an old race's folders before training anything
        check_new_run_dir(out / "runs" / run_name(cfg.model.name, cfg.train.seed))
    started = time.time()
    runs = _run_all(configs, out, budget_min * 60, progress)
    result = summarize_race(runs, models, seeds, reference=reference)
    result["settings"] = _settings(configs[0], models, seeds, dev, threads, started)
    result["settings"]["command"] = command
    write_race(out, result)
    return result


def _run_all(
    configs: Sequence[RunConfig], out: Path, budget_s: float, progress: bool
) -> list[dict[str, Any]]:
    """Train the configs one after another under one progress bar; the per-run summaries."""
    runs = []
    bar = tqdm(total=round(len(configs) * budget_s), unit="s", desc="race", dynamic_ncols=True,
               disable=None if progress else True)  # fmt: skip
    with bar:
        for cfg in configs:
            name, seed = cfg.model.name, cfg.train.seed
            bar.set_postfix_str(f"{name.rpartition(':')[2]} seed {seed}")
            done_before = bar.n

            def advance(train_s: float, base: int = done_before) -> None:
                bar.update(max(0, min(round(train_s), round(budget_s)) + base - bar.n))

            log.info("race: %s seed %d (%g min of training)", name, seed, budget_s / 60)
            summary = train_from_config(
                cfg, out / "runs" / run_name(name, seed), progress=False, on_progress=advance
            )
            advance(budget_s)  # a run that stopped early leaves its remaining budget unused
            runs.append({"model": name, "seed": seed, **summary})
            gc.collect()
    return runs


def _settings(
    cfg: RunConfig,
    models: Sequence[str],
    seeds: Sequence[int],
    device: torch.device,
    threads: int,
    started: float,
) -> dict[str, Any]:
    t, d = cfg.train, cfg.data
    return {
        "models": list(models),
        "seeds": list(seeds),
        "budget_min": t.budget_min,
        "val_every": t.val_every,
        "validation_counts_in_budget": False,
        "recipe": t.recipe,
        "train": {k: getattr(t, k) for k in ("optimizer", "lr", "weight_decay", "schedule",
                  "warmup", "loss", "early_stopping", "grad_clip", "precision",
                  "channels_last", "cache_tiles", "batch_size", "num_workers", "split_seed")},
        "data": {"name": d.name, "root": d.root, "scene": d.scene,
                 "val_fraction": d.val_fraction, "crop": d.crop, "options": d.options},
        "device": str(device),
        "threads": threads,
        "cpu": platform.processor() or platform.machine(),
        "cpu_bf16": cpu_has_bf16(),
        "torch": torch.__version__,
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "wall_min": round((time.time() - started) / 60, 2),
        "load_average": list(_load_average()),
    }  # fmt: skip


def _load_average() -> tuple[float, ...]:
    try:
        return tuple(round(v, 2) for v in os.getloadavg())
    except (OSError, AttributeError):
        return ()


def write_race(out: Path, result: Mapping[str, Any]) -> None:
    """race.json, race.md and curves.png into ``out`` (each written atomically)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "race.json", result)
    atomic_write_text(out / "race.md", race_markdown(result))
    plot_race(result, out / "curves.png")
