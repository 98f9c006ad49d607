"""Measuring candidates: speed with the benchmark's method, and a short proxy training."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from satunet.benchmark import benchmark_models
from satunet.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from satunet.files import PathLike
from satunet.runtime import resolve_device
from satunet.search.space import Candidate
from satunet.train import apply_recipe, train_from_config

log = logging.getLogger(__name__)


def measure(
    candidates: Sequence[Candidate],
    *,
    size: int = 512,
    batch_size: int = 1,
    device: str = "cpu",
    precision: str = "fp32",
    channels_last: bool = False,
    num_classes: int = 5,
    rounds: int = 3,
    reference: str | None = "deeplabv3plus_resnet34",
    measure_train: bool = False,
    measure_memory: bool = True,
    min_time_s: float = 0.5,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Benchmark every candidate (and ``reference``) side by side; fills ``candidate.metrics``.

    Returns the benchmark's rows, the reference's included, so ratios are to the reference.
    """
    builders: dict[str, Callable[[], nn.Module]] = {
        c.name: (lambda c=c: c.build(num_classes)) for c in candidates
    }
    # The reference goes by its registry name: the benchmark builds it itself (and can then
    # measure its memory in a child process).
    report = benchmark_models(
        builders,
        size=size,
        batch_size=batch_size,
        device=device,
        precision=precision,
        channels_last=channels_last,
        num_classes=num_classes,
        rounds=rounds,
        reference=reference,
        measure_train=measure_train,
        measure_memory=measure_memory,
        min_time_s=min_time_s,
        progress=progress,
    )
    rows = list(report.rows)
    by_name = {row["name"]: row for row in rows}
    for c in candidates:
        c.metrics.update(by_name.get(c.name, {}))
    return rows


def within_budget(candidates: Sequence[Candidate], budget_ms: float) -> list[Candidate]:
    """The candidates whose measured median latency is at most ``budget_ms``."""
    return [c for c in candidates if (c.metrics.get("latency_ms_p50") or math.inf) <= budget_ms]


def proxy_accuracy(
    candidates: Sequence[Candidate],
    presets_file: Path,
    *,
    data: str,
    root: PathLike,
    epochs: int,
    out: Path,
    crop: int = 256,
    data_options: Mapping[str, Any] | None = None,
    batch_size: int = 4,
    val_fraction: float = 0.2,
    device: str = "cpu",
    seed: int = 0,
    reference: str | None = None,
    progress: bool = True,
    budget_min: float | None = None,
) -> dict[str, float]:
    """Train each candidate briefly, identically (same data split, crop, epochs, seed, loss).

    With ``budget_min`` every candidate instead trains for that many minutes of training time
    with the race's fast recipe (``satunet race``: same clock, validation not counted), and
    its final validation mIoU is the proxy: equal time, not equal epochs.

    The validation mIoU after ``epochs`` is a *proxy*: it ranks designs, it is not the accuracy a
    full training reaches. Returns {name: best val mIoU}; fills ``candidate.metrics["miou"]``.
    """
    names = [f"{presets_file}:{c.name}" for c in candidates]
    if reference is not None:
        names.append(reference)
    scores: dict[str, float] = {}
    for model_name in names:
        short = model_name.rpartition(":")[2]
        cfg = RunConfig(
            model=ModelConfig(name=model_name),
            data=DataConfig(
                name=data,
                root=str(root),
                crop=crop,
                val_fraction=val_fraction,
                options=dict(data_options or {}),
            ),
            train=TrainConfig(
                epochs=epochs,
                batch_size=batch_size,
                early_stopping=epochs + 1,
                lr_patience=epochs + 1,
                device=device,
                seed=seed,
            ),
        )
        if budget_min is not None:
            cfg.train = apply_recipe(cfg.train, "fast", resolve_device(device))
            cfg.train.budget_min, cfg.train.val_every = budget_min, 1.0
        log.info("proxy training %s for %s", short,
                 f"{budget_min:g} min" if budget_min else f"{epochs} epoch(s)")  # fmt: skip
        summary = train_from_config(cfg, out / "runs" / short, progress=progress)
        best = summary.get("best") or {}
        miou = best.get("miou")  # None when no class was seen in validation
        scores[short] = math.nan if miou is None else float(miou)
    for c in candidates:
        c.metrics["miou"] = scores.get(c.name, math.nan)
    return scores
