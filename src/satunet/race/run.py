"""``race``: train models one after another on the same time budget, then compare them."""

from __future__ import annotations

import gc
import json
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
from satunet.files import PathLike, atomic_write_json, atomic_write_text, jsonable
from satunet.models import model_design
from satunet.race.plot import plot_race
from satunet.race.summary import race_markdown, summarize_race
from satunet.runtime import configure_cpu_threads, resolve_device
from satunet.train import apply_recipe, check_new_run_dir, cpu_has_bf16, train_from_config

log = logging.getLogger(__name__)


# Written into a run's folder when its budget is spent: `--resume` reuses exactly these runs.
RUN_RESULT = "race-run.json"


def run_name(entry: str, seed: int) -> str:
    """The run directory name of a race entry (MODEL or MODEL@RECIPE) and ``seed``."""
    short = entry.rpartition(":")[2] or entry
    return f"{re.sub(r'[^A-Za-z0-9_.@-]+', '_', short)}-seed{seed}"


def split_entry(entry: str, default_recipe: str) -> tuple[str, str]:
    """``MODEL@RECIPE`` -> (MODEL, RECIPE); a bare MODEL races with ``default_recipe``.

    Racing one model under two recipes (``unet_fast,unet_fast@study``) compares the recipes
    on the same clock, data and seeds.
    """
    model, sep, recipe = entry.rpartition("@")
    if not sep:
        return entry, default_recipe
    if not model or not recipe:
        raise ConfigError(f"race entry {entry!r} must look like MODEL or MODEL@RECIPE")
    return model, recipe


def race_configs(
    entries: Sequence[str],
    seeds: Sequence[int],
    *,
    data: DataConfig,
    train: TrainConfig,
    recipe: str,
    device: torch.device,
    mixed: bool | None = None,
) -> list[tuple[str, RunConfig]]:
    """(entry, config) per (seed, entry), seed-major; each entry's recipe, the same data/crop."""
    configs = []
    for seed in seeds:
        for entry in entries:
            model, entry_recipe = split_entry(entry, recipe)
            recipe_train = apply_recipe(train, entry_recipe, device, mixed=mixed)
            cfg = RunConfig(
                model=ModelConfig(name=model),
                data=DataConfig(**{**data.__dict__, "options": dict(data.options)}),
                train=TrainConfig(**{**recipe_train.__dict__, "seed": seed}),
            )
            validate(cfg)
            configs.append((entry, cfg))
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
    resume: bool = False,
) -> dict[str, Any]:
    """Train every model for ``budget_min`` minutes of training time per seed, one at a time.

    Every run uses the same recipe, data, validation carve-out (seeded by ``split_seed``, the
    same for every seed), crop and batch; seeds change the initial weights and the order of
    crops. Validation (every ``val_every`` of the budget) does not count against the budget.
    Writes OUT/race.json, OUT/race.md, OUT/curves.png and OUT/runs/MODEL-seedS/; returns the
    race.json content. ``models`` are entries: MODEL, or MODEL@RECIPE for a recipe other than
    ``recipe``. With ``resume``, runs that finished their budget in an earlier, interrupted
    race into ``out`` (same settings) are reused, and an unfinished one is set aside and run
    again: a long race survives being stopped.
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
    done = {}
    for entry, cfg in configs:  # refuse an old race's folders before training anything
        run_dir = out / "runs" / run_name(entry, cfg.train.seed)
        finished = finished_run(run_dir, cfg) if resume else None
        if finished is not None:
            done[run_dir] = finished
        elif resume and (run_dir / "config.toml").exists():
            _set_aside(run_dir)
        else:
            check_new_run_dir(run_dir)
    started = time.time()
    runs = _run_all(configs, out, budget_min * 60, progress, done)
    result = summarize_race(runs, models, seeds, reference=reference)
    result["settings"] = _settings(configs, models, seeds, dev, threads, started)
    result["settings"]["command"] = command
    result["settings"]["reused_runs"] = sorted(p.name for p in done)
    write_race(out, result)
    return result


def finished_run(run_dir: Path, cfg: RunConfig) -> dict[str, Any] | None:
    """The summary of a run that spent its whole budget under ``cfg`` (None: not finished).

    A finished run made with other settings is refused, not silently mixed into this race.
    """
    path = run_dir / RUN_RESULT
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        old, summary = saved["config"], saved["summary"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path} is not a race run record ({e}); move {run_dir} away") from e
    new = _flat(_plain(cfg.to_dict()))
    # A setting added to satunet after that run was made ran at its default there.
    old = _flat(_plain(RunConfig().to_dict())) | _flat(old)
    unknown = {k: v for k, v in old.items() if k not in new}
    if unknown:  # recorded by another satunet version; this one cannot tell what they did
        named = ", ".join(f"{k}={v!r}" for k, v in unknown.items())
        log.warning("race --resume: %s was recorded with settings this satunet does not have "
                    "(%s); reusing it", run_dir, named)  # fmt: skip
    differ = [k for k in sorted(new) if old.get(k) != new.get(k)]
    # The same name, another design (a preset or presets file edited since): not the same model.
    design = _plain(model_design(cfg.model.name))
    if saved.get("design") is not None and design is not None and saved["design"] != design:
        differ.append(f"the design of {cfg.model.name}")
    if differ:
        raise ConfigError(
            f"--resume: {run_dir} was raced with other settings ({', '.join(differ)} differ); "
            "resume with the original command, or race into a new --out"
        )
    return summary


def _plain(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples as lists), to compare with a record."""
    return json.loads(json.dumps(jsonable(value)))


def _flat(config: Mapping[str, Any]) -> dict[str, Any]:
    return {f"{section}.{key}": value for section, table in config.items()
            for key, value in (table.items() if isinstance(table, Mapping) else [])}  # fmt: skip


def _set_aside(run_dir: Path) -> None:
    """Rename an unfinished run's folder (never delete what a user made) so it can run again."""
    n = 1
    while (aside := run_dir.with_name(f"{run_dir.name}.interrupted-{n}")).exists():
        n += 1
    run_dir.rename(aside)
    log.warning("race --resume: %s never finished its budget; kept as %s and run again",
                run_dir, aside.name)  # fmt: skip


def _run_all(
    configs: Sequence[tuple[str, RunConfig]],
    out: Path,
    budget_s: float,
    progress: bool,
    done: Mapping[Path, dict[str, Any]],
) -> list[dict[str, Any]]:
    """Train the configs one after another under one progress bar; the per-run summaries.

    Runs in ``done`` (finished before a ``--resume``) are reused as they are.
    """
    runs = []
    bar = tqdm(total=round(len(configs) * budget_s), unit="s", desc="race", dynamic_ncols=True,
               disable=None if progress else True)  # fmt: skip
    with bar:
        for entry, cfg in configs:
            seed, run_dir = cfg.train.seed, out / "runs" / run_name(entry, cfg.train.seed)
            if run_dir in done:
                log.info("race --resume: reusing %s (its budget was spent)", run_dir)
                bar.update(round(budget_s))
                runs.append({**done[run_dir], "model": entry, "seed": seed})
                continue
            bar.set_postfix_str(f"{entry.rpartition(':')[2]} seed {seed}")
            done_before = bar.n

            def advance(train_s: float, base: int = done_before) -> None:
                bar.update(max(0, min(round(train_s), round(budget_s)) + base - bar.n))

            log.info("race: %s seed %d (%g min of training)", entry, seed, budget_s / 60)
            summary = train_from_config(cfg, run_dir, progress=False, on_progress=advance)
            record = {"config": cfg.to_dict(), "design": model_design(cfg.model.name)}
            atomic_write_json(run_dir / RUN_RESULT, record | {"summary": summary})
            advance(budget_s)  # a run that stopped early leaves its remaining budget unused
            runs.append({**summary, "model": entry, "seed": seed})
            gc.collect()
    return runs


def _settings(
    configs: Sequence[tuple[str, RunConfig]],
    models: Sequence[str],
    seeds: Sequence[int],
    device: torch.device,
    threads: int,
    started: float,
) -> dict[str, Any]:
    cfg = configs[0][1]
    t, d = cfg.train, cfg.data
    recipes = {c.train.recipe: c.train for _, c in configs}
    return {
        "models": list(models),
        "seeds": list(seeds),
        "budget_min": t.budget_min,
        "val_every": t.val_every,
        "validation_counts_in_budget": False,
        "recipe": t.recipe,
        "train": _train_settings(t),
        "recipes": {name: _train_settings(r) for name, r in recipes.items()},
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


def _train_settings(t: TrainConfig) -> dict[str, Any]:
    keys = ("optimizer", "lr", "weight_decay", "schedule", "warmup", "loss", "early_stopping",
            "grad_clip", "precision", "channels_last", "cache_tiles", "batch_size",
            "num_workers", "split_seed")  # fmt: skip
    return {k: getattr(t, k) for k in keys}


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
