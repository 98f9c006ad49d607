"""The search's result: Pareto fronts, flat records, the Markdown table and the chart."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from satunet.files import PathLike
from satunet.models import Level, Preset, load_presets, save_presets
from satunet.report import fmt, place_labels, save_figure
from satunet.report import markdown_table as build_table
from satunet.search.space import Candidate


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
                "gmacs_512": c.gmacs_512,
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


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The search result as a Markdown table, fastest first; the last column names the fronts."""
    head = ["name", "design", "params", "GMACs", "latency ms", "infer img/s", "x ref",
            "train x ref", "GFLOP/s", "% peak", "peak MB", "mIoU", "front"]  # fmt: skip
    ordered = sorted(rows, key=lambda r: -(r.get("infer_img_s") or 0))
    cells = []
    for r in ordered:
        front = ("acc " if r.get("pareto_speed_accuracy") else "") + (
            "gmacs" if r.get("pareto_speed_gmacs") else ""
        )
        share, gmacs = r.get("peak_fraction"), r.get("gmacs")
        cells.append([
            r["name"], r["design"],
            f"{r['params']:,}" if r.get("params") is not None else "–",
            fmt(gmacs, 3 if (gmacs or 0) < 10 else 1), fmt(r.get("latency_ms"), 1),
            fmt(r.get("infer_img_s"), 2),
            fmt(r.get("ratio_infer"), 2), fmt(r.get("ratio_train"), 2), fmt(r.get("gflop_s"), 1),
            fmt(None if share is None else 100 * share, 0) + (" %" if share is not None else ""),
            fmt(r.get("peak_mem_mb"), 0), fmt(r.get("miou"), 4), front.strip(),
        ])  # fmt: skip
    return build_table(head, cells, align="ll" + "r" * 10 + "l") + "\n"


def _pareto_panel(ax: Any, rows: Sequence[Mapping[str, Any]], key: str, label: str,
                  flag: str) -> None:  # fmt: skip
    """One panel: every design as a point, the front in red, every point named (off-front ones
    small and grey), labels placed so they do not overlap where there is room."""
    pts = [r for r in rows if r.get(key) is not None and r.get("infer_img_s")]
    off = [r for r in pts if not r.get(flag) and r["design"] != "reference"]
    ref = [r for r in pts if r["design"] == "reference"]
    front = sorted((r for r in pts if r.get(flag)), key=lambda r: r["infer_img_s"])
    ax.scatter([r["infer_img_s"] for r in off], [r[key] for r in off], c="tab:gray", s=18,
               label="other designs")  # fmt: skip
    if ref:
        ax.scatter([r["infer_img_s"] for r in ref], [r[key] for r in ref], marker="D",
                   c="tab:blue", s=30, label="reference")  # fmt: skip
    ax.plot([r["infer_img_s"] for r in front], [r[key] for r in front], "o-", c="tab:red",
            label="Pareto front")  # fmt: skip
    ax.set_xlabel("inference images/s (higher is faster)")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.margins(x=0.12, y=0.1)
    ax.legend(loc="best", fontsize=8)
    ax.figure.canvas.draw()  # final limits, so label boxes can be measured
    named = place_labels(ax, [(r["infer_img_s"], r[key], r["name"]) for r in front + ref],
                         fontsize=8)  # fmt: skip
    place_labels(ax, [(r["infer_img_s"], r[key], r["name"]) for r in off], fontsize=6,
                 color="0.45", avoid=named)  # fmt: skip


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
        _pareto_panel(ax, rows, key, label, flag)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


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
