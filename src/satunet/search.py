"""Search the UNet design space for the fastest designs on this hardware: sample, measure, Pareto.

Candidates are :class:`~satunet.models.Preset` designs (levels + options). Each is measured with
``satunet.benchmark``'s method (the same numbers `satunet benchmark` prints), optionally trained
briefly for a proxy accuracy, and the non-dominated ones (speed vs accuracy, speed vs GMACs)
are reported as a Markdown table, JSON and a PNG chart.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from satunet.errors import ConfigError
from satunet.models import PRESETS, Level, Preset, load_presets, save_presets
from satunet.profile import count_gmacs, count_params

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

# The design space: every axis of UNet's options, with the values worth trying on a budget.
SPACE: dict[str, tuple[Any, ...]] = {
    "stem_stride": (1, 2, 4),
    "depth": (4, 5, 6),  # levels, the bottleneck included
    "base_width": (8, 16, 24, 32, 48),
    "max_width": (256, 512),
    "deep_convs": (1, 2),  # convs per level from the third level down (the top two keep 1)
    "upsample": ("bilinear", "transpose"),
    "conv": ("standard", "separable"),
    "skip": ("concat", "add", "sdi"),
    "context": ("none", "ppm", "aspp"),
    "residual": (False, True),
}
SEEDS = ("unet_fast", "unet_v2")  # built-in designs every search starts from


@dataclass
class Candidate:
    """One design under test, and what was measured about it."""

    name: str
    preset: Preset
    gmacs: float = math.nan
    params: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)

    def build(self, num_classes: int, in_channels: int = 3) -> nn.Module:
        return self.preset.build(in_channels=in_channels, num_classes=num_classes)


def sample_design(rng: random.Random, space: Mapping[str, Sequence[Any]] | None = None) -> Preset:
    """One random point of the design space (:data:`SPACE`, axes overridden by ``space``)."""
    space = {**SPACE, **(space or {})}
    unknown = set(space) - set(SPACE)
    if unknown:
        raise ConfigError(f"unknown search axes {sorted(unknown)}; axes are {', '.join(SPACE)}")
    pick = {k: rng.choice(tuple(v)) for k, v in space.items()}
    widths = [min(pick["base_width"] * 2**i, pick["max_width"]) for i in range(pick["depth"])]
    levels = tuple(Level(w, 1 if i < 2 else pick["deep_convs"]) for i, w in enumerate(widths))
    options = {
        k: pick[k] for k in ("stem_stride", "upsample", "conv", "skip", "context", "residual")
    }
    defaults = {"stem_stride": 1, "upsample": "transpose", "conv": "standard", "skip": "concat",
                "context": "none", "residual": False}  # fmt: skip
    options = {k: v for k, v in options.items() if v != defaults[k]}
    return Preset(levels, options)


def _facts(preset: Preset, size: int, num_classes: int) -> tuple[float, int]:
    with torch.device("meta"):
        model = preset.build(num_classes=num_classes)
    return count_gmacs(model, size), count_params(model)


def propose(
    trials: int,
    *,
    size: int = 512,
    num_classes: int = 5,
    budget_gmacs: float | None = None,
    seed: int = 0,
    seeds: Sequence[str] = SEEDS,
    space: Mapping[str, Sequence[Any]] | None = None,
    max_draws: int = 500,
) -> list[Candidate]:
    """``trials`` distinct candidates: the built-in ``seeds`` first, then random designs.

    GMACs are counted on the meta device (free), so designs over ``budget_gmacs`` and designs
    whose size multiple does not divide ``size`` are dropped before anything is measured.
    """
    if trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {trials}")
    rng = random.Random(seed)
    out: list[Candidate] = []
    seen: set[str] = set()

    def consider(name: str, preset: Preset) -> None:
        key = json.dumps([[lv.channels, lv.convs] for lv in preset.levels] + [preset.options],
                         sort_keys=True)  # fmt: skip
        multiple = preset.options.get("stem_stride", 1) * 2 ** (len(preset.levels) - 1)
        if key in seen or size % multiple:
            return
        seen.add(key)
        gmacs, params = _facts(preset, size, num_classes)
        if budget_gmacs is not None and gmacs > budget_gmacs:
            log.debug("skip %s: %.2f GMACs > budget %.2f", name, gmacs, budget_gmacs)
            return
        out.append(Candidate(name, preset, round(gmacs, 6), params))

    for name in seeds:
        if len(out) < trials:
            consider(name, PRESETS[name])
    draws = 0
    while len(out) < trials and draws < max_draws:
        draws += 1
        consider(f"cand_s{seed}_{draws:03d}", sample_design(rng, space))  # unique per seed
    if not out:
        raise ConfigError(
            f"no design of the search space fits --budget-gmacs {budget_gmacs} at {size}x{size}; "
            "raise the budget or lower --size"
        )
    return out


def _benchmark(
    builders: Mapping[str, Callable[[], nn.Module]], **kwargs: Any
) -> list[dict[str, Any]]:
    from satunet.benchmark import benchmark_models

    return list(benchmark_models(builders, **kwargs).rows)


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
    rows = _benchmark(
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
) -> dict[str, float]:
    """Train each candidate briefly, identically (same data split, crop, epochs, seed, loss).

    The validation mIoU after ``epochs`` is a *proxy*: it ranks designs, it is not the accuracy a
    full training reaches. Returns {name: best val mIoU}; fills ``candidate.metrics["miou"]``.
    """
    from satunet.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from satunet.train import train_from_config

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
        log.info("proxy training %s for %d epoch(s)", short, epochs)
        summary = train_from_config(cfg, out / "runs" / short, progress=progress)
        best = summary.get("best") or {}
        miou = best.get("miou")  # None when no class was seen in validation
        scores[short] = math.nan if miou is None else float(miou)
    for c in candidates:
        c.metrics["miou"] = scores.get(c.name, math.nan)
    return scores


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (both: higher is better)."""
    front = []
    for i, (x, y) in enumerate(points):
        if any(math.isnan(v) for v in (x, y)):
            continue
        dominated = any(
            (a >= x and b >= y) and (a > x or b > y)
            for j, (a, b) in enumerate(points)
            if j != i and not any(math.isnan(v) for v in (a, b))
        )
        if not dominated:
            front.append(i)
    return front


def _design_text(preset: Preset) -> str:
    levels = "-".join(f"{lv.channels}x{lv.convs}" for lv in preset.levels)
    options = " ".join(f"{k}={v}" for k, v in preset.options.items())
    return f"{levels} {options}".strip()


def _efficiency(gmacs: Any, img_s: Any, peak: float | None) -> tuple[Any, Any]:
    if not gmacs or not img_s:
        return None, None
    achieved = 2 * gmacs * img_s  # GFLOP/s, 1 MAC = 2 FLOPs
    return float(f"{achieved:.4g}"), (float(f"{achieved / peak:.3g}") if peak else None)


def summarize(
    candidates: Sequence[Candidate],
    reference_row: Mapping[str, Any] | None,
    peak_gflops: float | None = None,
) -> list[dict[str, Any]]:
    """One flat record per candidate with Pareto flags (speed = inference images/s).

    ``gflop_s`` is the inference throughput in GFLOP/s and ``peak_fraction`` that divided by the
    machine's measured peak 3x3-conv throughput: how well a design uses the hardware.
    """
    speed = [float(c.metrics.get("infer_img_s", math.nan)) for c in candidates]
    acc = [float(c.metrics.get("miou", math.nan)) for c in candidates]
    front_acc = set(pareto_front(list(zip(speed, acc, strict=True))))
    front_gmacs = set(pareto_front([(s, -c.gmacs) for s, c in zip(speed, candidates, strict=True)]))
    rows = []
    for i, c in enumerate(candidates):
        m = c.metrics
        rows.append(
            {
                "name": c.name,
                "design": _design_text(c.preset),
                "levels": [[lv.channels, lv.convs] for lv in c.preset.levels],
                "options": dict(c.preset.options),
                "params": c.params,
                "gmacs": c.gmacs,
                "latency_ms": m.get("latency_ms_p50"),
                "infer_img_s": m.get("infer_img_s"),
                "train_img_s": m.get("train_img_s"),
                "peak_mem_mb": m.get("peak_mem_mb"),
                "ratio_infer": m.get("ratio_infer"),
                "ratio_train": m.get("ratio_train"),
                "miou": None if math.isnan(acc[i]) else acc[i],
                "pareto_speed_accuracy": i in front_acc,
                "pareto_speed_gmacs": i in front_gmacs,
            }
        )
        rows[-1]["gflop_s"], rows[-1]["peak_fraction"] = _efficiency(
            c.gmacs, m.get("infer_img_s"), peak_gflops
        )
    if reference_row is not None:
        rows.append(
            {
                "name": reference_row["name"],
                "design": "reference",
                "params": reference_row.get("params"),
                "gmacs": reference_row.get("gmacs"),
                "latency_ms": reference_row.get("latency_ms_p50"),
                "infer_img_s": reference_row.get("infer_img_s"),
                "train_img_s": reference_row.get("train_img_s"),
                "peak_mem_mb": reference_row.get("peak_mem_mb"),
                "ratio_infer": reference_row.get("ratio_infer"),
                "ratio_train": reference_row.get("ratio_train"),
                "miou": reference_row.get("miou"),
                "pareto_speed_accuracy": False,
                "pareto_speed_gmacs": False,
            }
        )
        rows[-1]["gflop_s"], rows[-1]["peak_fraction"] = _efficiency(
            reference_row.get("gmacs"), reference_row.get("infer_img_s"), peak_gflops
        )
    return rows


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The search result as a Markdown table, fastest first; * marks the Pareto fronts."""
    head = (
        "| name | design | params | GMACs | latency ms | infer img/s | x ref | train x ref | "
        "GFLOP/s | % peak | peak MB | mIoU | front |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    )
    lines = [head]
    ordered = sorted(rows, key=lambda r: -(r.get("infer_img_s") or 0))
    for r in ordered:
        front = ("acc " if r.get("pareto_speed_accuracy") else "") + (
            "gmacs" if r.get("pareto_speed_gmacs") else ""
        )
        lines.append(
            f"| {r['name']} | {r['design']} | {_fmt(r.get('params'), ',')} | "
            f"{_fmt(r.get('gmacs'), '.3g')} | {_fmt(r.get('latency_ms'), '.1f')} | "
            f"{_fmt(r.get('infer_img_s'), '.2f')} | {_fmt(r.get('ratio_infer'), '.2f')} | "
            f"{_fmt(r.get('ratio_train'), '.2f')} | "
            f"{_fmt(r.get('gflop_s'), '.1f')} | {_fmt(r.get('peak_fraction'), '.0%')} | "
            f"{_fmt(r.get('peak_mem_mb'), '.0f')} | {_fmt(r.get('miou'), '.4f')} | "
            f"{front.strip() or ''} |"
        )
    return "\n".join(lines) + "\n"


def plot_pareto(rows: Sequence[Mapping[str, Any]], path: Path, title: str) -> Path:
    """Speed vs GMACs (and vs proxy mIoU where measured) with the Pareto fronts drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_acc = any(r.get("miou") is not None for r in rows)
    fig, axes = plt.subplots(1, 2 if with_acc else 1, figsize=(12 if with_acc else 6.5, 5))
    axes = list(axes) if with_acc else [axes]
    panels = [("gmacs", "GMACs per image", "pareto_speed_gmacs")]
    if with_acc:
        panels.append(("miou", "proxy val mIoU", "pareto_speed_accuracy"))
    for ax, (key, label, flag) in zip(axes, panels, strict=True):
        pts = [r for r in rows if r.get(key) is not None and r.get("infer_img_s")]
        ax.scatter([r["infer_img_s"] for r in pts], [r[key] for r in pts], c="tab:gray", s=18)
        front = sorted((r for r in pts if r.get(flag)), key=lambda r: r["infer_img_s"])
        ax.plot([r["infer_img_s"] for r in front], [r[key] for r in front], "o-", c="tab:red",
                label="Pareto front")  # fmt: skip
        for r in pts:
            if r.get(flag) or r["design"] == "reference":
                ax.annotate(r["name"], (r["infer_img_s"], r[key]), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))  # fmt: skip
        ax.set_xlabel("inference images/s (higher is faster)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def search(
    out: PathLike,
    *,
    trials: int = 8,
    budget_ms: float | None = None,
    budget_gmacs: float | None = None,
    size: int = 512,
    num_classes: int = 5,
    device: str = "cpu",
    precision: str = "fp32",
    channels_last: bool = False,
    batch_size: int = 1,
    rounds: int = 3,
    reference: str | None = "deeplabv3plus_resnet34",
    seed: int = 0,
    seeds: Sequence[str] = SEEDS,
    space: Mapping[str, Sequence[Any]] | None = None,
    data: str | None = None,
    root: PathLike | None = None,
    data_options: Mapping[str, Any] | None = None,
    epochs: int = 1,
    crop: int = 256,
    measure_train: bool = False,
    measure_memory: bool = True,
    min_time_s: float = 0.5,
    progress: bool = True,
) -> dict[str, Any]:
    """Propose, measure, optionally proxy-train, and write search.md/json, pareto.png, presets.

    ``budget_ms`` keeps designs whose measured median latency (batch 1) is within it;
    throughput is measured at ``batch_size``. ``budget_gmacs`` filters before measuring. With
    ``data`` and ``root``, every kept design (and the reference) is trained ``epochs`` epochs
    for a proxy mIoU.
    """
    if budget_ms is None and budget_gmacs is None:
        raise ConfigError("give a budget: --budget-ms X (measured latency) or --budget-gmacs G")
    if (data is None) != (root is None):
        raise ConfigError("proxy accuracy needs both --data and --root (or neither)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    candidates = propose(
        trials, size=size, num_classes=num_classes, budget_gmacs=budget_gmacs, seed=seed,
        seeds=seeds, space=space,
    )  # fmt: skip
    log.info("measuring %d candidate(s) at %dx%d on %s", len(candidates), size, size, device)
    rows = measure(
        candidates, size=size, batch_size=batch_size, device=device, precision=precision,
        channels_last=channels_last, num_classes=num_classes, rounds=rounds,
        reference=reference, measure_train=measure_train, measure_memory=measure_memory,
        min_time_s=min_time_s, progress=progress,
    )  # fmt: skip
    reference_row = next((r for r in rows if r["name"] == reference), None)
    if budget_ms is not None:
        kept = within_budget(candidates, budget_ms)
        log.info("%d of %d candidate(s) within %.1f ms", len(kept), len(candidates), budget_ms)
        candidates = kept
    presets_file = out / "candidates.toml"
    if candidates:
        save_presets(presets_file, {c.name: c.preset for c in candidates})
    if data is not None and candidates:
        scores = proxy_accuracy(
            candidates, presets_file, data=data, root=root, data_options=data_options,
            epochs=epochs, out=out, crop=crop,
            device=device, seed=seed, reference=reference, progress=progress,
        )  # fmt: skip
        if reference_row is not None:
            reference_row = dict(reference_row) | {"miou": scores.get(reference)}
    from satunet.benchmark import measure_peak_conv_gflops

    peak = measure_peak_conv_gflops(device, precision, min_time_s=min(0.2, min_time_s))
    log.info("peak 3x3-conv throughput on %s %s: %.0f GFLOP/s", device, precision, peak)
    records = summarize(candidates, reference_row, peak)
    on_front = {r["name"]: r["design"] for r in records[: len(candidates)]
                if r["pareto_speed_accuracy"] or r["pareto_speed_gmacs"]}  # fmt: skip
    if on_front:  # the designs worth keeping, ready for create_model("FILE:NAME")
        save_presets(
            out / "pareto_presets.toml",
            {
                c.name: Preset(
                    c.preset.levels, c.preset.options, f"satunet search: {on_front[c.name]}"
                )
                for c in candidates
                if c.name in on_front
            },
        )
    budget = f"{budget_ms} ms" if budget_ms is not None else f"{budget_gmacs} GMACs"
    title = f"satunet search: {len(candidates)} design(s), {size}x{size}, {device} {precision}, "
    title += f"batch {batch_size}, budget {budget}"
    result = {
        "settings": {
            "trials": trials,
            "budget_ms": budget_ms,
            "budget_gmacs": budget_gmacs,
            "size": size,
            "num_classes": num_classes,
            "device": device,
            "precision": precision,
            "channels_last": channels_last,
            "batch_size": batch_size,
            "rounds": rounds,
            "reference": reference,
            "seed": seed,
            "data": data,
            "root": None if root is None else str(root),
            "epochs": epochs,
            "crop": crop,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "peak_conv_gflops": round(peak, 1),
        },  # fmt: skip
        "candidates": records,
    }
    _write_text(out / "search.json", json.dumps(result, indent=2, default=str) + "\n")
    _write_text(out / "search.md", f"# {title}\n\n" + markdown_table(records))
    plot_pareto(records, out / "pareto.png", title)
    return result


def save_front(result: Mapping[str, Any], path: PathLike) -> tuple[Path, list[str]]:
    """Add a search's Pareto-optimal designs to a presets file (created, or merged into)."""
    path = Path(path)
    presets = load_presets(path) if path.exists() else {}
    names = []
    for r in result["candidates"]:
        if r["design"] != "reference" and (r["pareto_speed_accuracy"] or r["pareto_speed_gmacs"]):
            levels = tuple(Level(*lv) for lv in r["levels"])
            presets[r["name"]] = Preset(levels, r["options"], f"satunet search: {r['design']}")
            names.append(r["name"])
    if names:
        save_presets(path, presets)
    return path, names
