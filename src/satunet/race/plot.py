"""curves.png: validation mIoU against training minutes, one line per model, a band over seeds."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from satunet.report import save_figure


def plot_race(result: Mapping[str, Any], path: Path) -> Path:
    """Mean val mIoU over seeds per model (line) with the min-max over seeds (band)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["settings"]
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, agg in result["models"].items():
        pts = [p for p in agg["curve"] if p["miou_mean"] is not None]
        x = [0.0] + [p["elapsed_s"] / 60 for p in pts]
        mean = [None] + [p["miou_mean"] for p in pts]
        short = name.rpartition(":")[2]
        std = agg.get("final_miou_std")
        label = f"{short} ({agg['final_miou_mean']:.3f}" + (f" ± {std:.3f})" if std else ")")
        (line,) = ax.plot(x[1:], mean[1:], "o-", ms=3.5, lw=1.8, label=label)
        if len(agg["seeds"]) > 1:
            ax.fill_between(x[1:], [p["miou_min"] for p in pts], [p["miou_max"] for p in pts],
                            color=line.get_color(), alpha=0.18, lw=0)  # fmt: skip
    ref = result.get("reference_miou")
    if ref is not None:
        ax.axhline(ref, color="0.4", ls="--", lw=1,
                   label=f"{result['reference'].rpartition(':')[2]} final ({ref:.3f})")  # fmt: skip
    ax.set_xlabel("training time (minutes; validation time excluded)")
    ax.set_ylabel("validation mIoU (standard)")
    last = max((p["elapsed_s"] or 0) / 60 for a in result["models"].values() for p in a["curve"])
    ax.set_xlim(0, max(s["budget_min"], last) * 1.03)  # the last step may end past the budget
    ax.set_ylim(bottom=0)
    seeds = ", ".join(map(str, s["seeds"]))
    ax.set_title(
        f"satunet race: {s['budget_min']:g} min per model, recipe"
        f"{'s' if len(s.get('recipes') or [1]) > 1 else ''} "
        f"{', '.join(s.get('recipes') or [s['recipe']])}, "
        f"seed{'s' if len(s['seeds']) > 1 else ''} {seeds}"
        + (" (band: min-max over seeds)" if len(s["seeds"]) > 1 else ""),
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)
