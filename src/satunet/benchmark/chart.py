"""chart.png: training and inference throughput against GMACs, with min-max error bars."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from satunet.files import PathLike
from satunet.report import place_labels, plain_log_ticks, save_figure

PANELS: tuple[tuple[str, str], ...] = (
    ("train_img_s", "training (forward + backward + Adam step)"),
    ("infer_img_s", "inference"),
)


def _panel(ax: Any, rows: Sequence[Mapping[str, Any]], key: str, title: str, size: Any) -> None:
    points = [r for r in rows if r.get(key)]
    colours = [f"C{i % 10}" for i in range(len(points))]
    for r, colour in zip(points, colours, strict=True):
        lo, hi = r.get(f"{key}_min") or r[key], r.get(f"{key}_max") or r[key]
        ax.errorbar(
            r["gmacs"], r[key], yerr=[[r[key] - lo], [hi - r[key]]], fmt="o", ms=6, capsize=4,
            color=colour, ecolor=colour, elinewidth=1.2,
        )  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.margins(x=0.25, y=0.15)
    for axis in (ax.xaxis, ax.yaxis):
        plain_log_ticks(axis)
    ax.set_xlabel(f"GMACs per image at {size}x{size}")
    ax.set_ylabel("images / s (median, bars: min–max over rounds)")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    ax.figure.canvas.draw()  # the limits are final: labels can be measured
    place_labels(ax, [(r["gmacs"], r[key], r["name"]) for r in points], fontsize=8)


def plot_chart(
    rows: Sequence[Mapping[str, Any]],
    machine: Mapping[str, Any],
    settings: Mapping[str, Any],
    path: PathLike,
    warning: str | None = None,
) -> Path:
    """Write the chart: one panel per measured throughput (no empty panel), one point per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    panels = [(k, t) for k, t in PANELS if any(r.get(k) for r in rows)] or [PANELS[1]]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(6 * len(panels), 4.8), squeeze=False, constrained_layout=True
    )
    for ax, (key, title) in zip(axes[0], panels, strict=True):
        _panel(ax, rows, key, title, settings.get("size"))
    suptitle = (
        f"{machine.get('summary', '')}: {settings.get('variant', '')}, batch "
        f"{settings.get('batch_size')}, {settings.get('rounds')} rounds"
    )
    if warning:
        suptitle += "\n⚠ " + warning
    fig.suptitle(suptitle, fontsize=9, color="firebrick" if warning else "black")
    return save_figure(fig, path, dpi=120)
