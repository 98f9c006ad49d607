"""Run reports: Markdown tables, scores.json/scores.md, curves.png and predictions.png.

matplotlib is imported inside the plotting functions (Agg backend, headless) so importing
satunet stays fast.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from satunet.files import PathLike, atomic_path, atomic_write_json, atomic_write_text
from satunet.metrics import Scores

__all__ = [
    "atomic_write_text",  # re-exported until models.presets/benchmark/reproduce/search move on
    "colorize",
    "display_rgb",
    "fmt",
    "markdown_table",
    "place_labels",
    "plain_log_ticks",
    "plot_curves",
    "plot_predictions",
    "plot_scene_preview",
    "save_figure",
    "scores_markdown",
    "write_scores",
]


def save_figure(fig: Any, path: PathLike, *, dpi: int = 100, **savefig: Any) -> Path:
    """Write a matplotlib figure atomically (format from the suffix), then close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=dpi, **savefig)
    finally:
        plt.close(fig)
    return path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plain_log_ticks(axis: Any) -> None:
    """Label a log axis at 1-2-5 steps in plain numbers (no 10^x, no colliding minor labels)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _overlap(a: Any, b: Any) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


def place_labels(
    ax: Any,
    points: Sequence[tuple[float, float, str]],
    *,
    fontsize: float = 8,
    color: str = "black",
    avoid: list | None = None,
) -> list:
    """Annotate ``(x, y, text)`` points, trying offsets around each until no label overlaps
    another (or, failing that, the least overlapping). ``avoid`` holds the window extents of
    labels already placed (e.g. by an earlier call), and is extended. Returns it."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    placed = avoid if avoid is not None else []
    offsets = [(4, 3), (4, -11), (-4, 3), (-4, -11), (4, 12), (4, -20), (-4, 12), (-4, -20),
               (4, 21), (4, -29)]  # fmt: skip
    for x, y, text in sorted(points, key=lambda p: -p[1]):
        best, best_cost = None, math.inf
        for dx, dy in offsets:
            label = ax.annotate(
                text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=fontsize,
                color=color, ha="left" if dx > 0 else "right", va="bottom",
            )  # fmt: skip
            box = label.get_window_extent(renderer).expanded(1.05, 1.1)
            cost = sum(_overlap(box, other) for other in placed)
            if cost < best_cost:
                if best is not None:
                    best[0].remove()
                best, best_cost = (label, box), cost
            else:
                label.remove()
            if cost == 0:
                break
        if best is not None:
            placed.append(best[1])
    return placed


def fmt(value: float | None, digits: int = 4) -> str:
    """A score for a table: fixed digits, or an en dash where it is undefined."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def markdown_table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None
) -> str:
    """A GitHub Markdown table; ``align`` is one of l/r/c per column (default: l then r)."""
    align = align or "l" + "r" * (len(headers) - 1)
    marks = {"l": ":---", "r": "---:", "c": ":---:"}
    lines = [
        "| " + " | ".join(str(h) for h in headers) + " |",
        "| " + " | ".join(marks[a] for a in align) + " |",
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def scores_markdown(scores: Scores, title: str | None = None) -> str:
    """Per-class table with the standard IoU/F1 and the study's metric side by side."""
    rows = [
        [name, fmt(iou), fmt(f1), fmt(study)]
        for name, iou, f1, study in zip(
            scores.classes, scores.iou, scores.f1, scores.study_iou, strict=True
        )
    ]
    rows.append(
        ["**mean**", f"**{fmt(scores.miou)}**", fmt(_nanmean(scores.f1)), fmt(scores.study_miou)]
    )
    parts = [f"## {title}\n" if title else ""]
    parts.append(markdown_table(["class", "IoU", "F1", "study IoU*"], rows))
    ignored = (
        f"; pixels labelled {scores.ignore_index} ignored"
        if scores.ignore_index is not None
        else ""
    )
    parts.append(
        f"\nmIoU {fmt(scores.miou)} · micro IoU {fmt(scores.micro_iou)} · pixel accuracy "
        f"{fmt(scores.pixel_accuracy)}"
        + (f" · loss {fmt(scores.loss)}" if scores.loss is not None else "")
        + f" · {scores.num_samples} samples{ignored}.\n"
    )
    parts.append(
        "IoU, F1 and mIoU come from one confusion matrix over all pixels (the standard, "
        "comparable with published results). *study IoU: the study's per-image metric (an image "
        "counts for a class when the class is in its ground truth or prediction; the mean "
        "divides by every class); it reproduces the paper's tables and is not comparable.\n"
    )
    return "\n".join(p for p in parts if p)


def _nanmean(values: Sequence[float]) -> float:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def write_scores(
    scores: Scores, out_dir: PathLike, meta: dict[str, Any] | None = None
) -> tuple[Path, Path]:
    """Write ``scores.json`` and ``scores.md`` into ``out_dir`` atomically; returns both paths."""
    out_dir = Path(out_dir)
    meta = {**(meta or {}), **scores.extra}
    data = scores.as_dict() | {"extra": meta}
    json_path, md_path = out_dir / "scores.json", out_dir / "scores.md"
    atomic_write_json(json_path, data)
    title = " · ".join(str(meta[k]) for k in ("model", "dataset", "split") if meta.get(k))
    atomic_write_text(md_path, scores_markdown(scores, title or "scores"))
    return json_path, md_path


def plot_curves(
    history: Sequence[dict[str, Any]], path: PathLike, *, loss_name: str | None = None
) -> None:
    """Train/val loss, val mIoU (standard and study) and learning rate per epoch.

    ``loss_name`` (e.g. the config's ``train.loss``, "jaccard") labels the loss axis; without
    it, a ``"loss"`` entry of the history is used where there is one.
    """
    plt = _pyplot()
    epochs = [r["epoch"] for r in history]
    loss_name = loss_name or next((r["loss"] for r in history if r.get("loss")), None)

    def col(key: str) -> list[float]:
        return [math.nan if r.get(key) is None else r[key] for r in history]

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    axes[0].plot(epochs, col("train_loss"), "o-", label="train")
    axes[0].plot(epochs, col("val_loss"), "o-", label="validation")
    title = f"loss ({loss_name})" if loss_name else "loss"
    axes[0].set(title=title, xlabel="epoch", ylabel=f"{loss_name or 'training'} loss")
    axes[1].plot(epochs, col("val_miou"), "o-", label="mIoU (standard)")
    axes[1].plot(epochs, col("val_study_miou"), "s--", label="study metric", alpha=0.7)
    axes[1].set(title="validation mIoU", xlabel="epoch", ylabel="mIoU (0–1)")
    axes[2].plot(epochs, col("lr"), "o-", color="tab:green")
    axes[2].set(title="learning rate", xlabel="epoch", ylabel="learning rate", yscale="log")
    plain_log_ticks(axes[2].yaxis)
    for ax in axes[:2]:
        ax.legend()
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    save_figure(fig, path, bbox_inches="tight")


def display_rgb(image: Any, low: float = 2.0, high: float = 98.0) -> np.ndarray:
    """(C, H, W) bands -> (H, W, 3) float RGB in [0, 1], each band stretched from its ``low`` to
    its ``high`` percentile: dark raw reflectances (or normalised inputs) become visible.

    The first 3 bands are taken as R, G, B (1 or 2 bands: the first as grey). Non-finite pixels
    are ignored for the percentiles and shown black.
    """
    bands = np.asarray(image, dtype=np.float32)
    bands = bands[:3] if bands.shape[0] >= 3 else np.repeat(bands[:1], 3, axis=0)
    out = np.zeros_like(bands)
    for i, band in enumerate(bands):
        finite = band[np.isfinite(band)]
        if finite.size == 0:
            continue
        lo, hi = np.percentile(finite, (low, high))
        scale = hi - lo if hi > lo else 1.0
        out[i] = np.clip((np.nan_to_num(band, nan=lo) - lo) / scale, 0, 1)
    return out.transpose(1, 2, 0)


def colorize(
    labels: torch.Tensor, palette: Sequence[Sequence[int]], ignore_index: int | None = None
) -> Any:
    """(H, W) class ids -> (H, W, 3) uint8 RGB with the dataset palette; ignored pixels black."""
    lut = torch.zeros(max(256, len(palette) + 1), 3, dtype=torch.uint8)
    lut[: len(palette)] = torch.tensor([list(c) for c in palette], dtype=torch.uint8)
    labels = labels.long().cpu()
    if ignore_index is not None:
        labels = torch.where(labels == ignore_index, lut.shape[0] - 1, labels)
    lut[-1] = 0
    return lut[labels.clamp(0, lut.shape[0] - 1)].numpy()


def _default_palette(n: int) -> list[list[int]]:
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [[int(255 * v) for v in cmap(i % cmap.N)[:3]] for i in range(n)]


# A neutral grey behind the class maps, so white (LoveDA's "background") and black classes show.
PANEL_BACKGROUND = "#8c8c8c"


def plot_predictions(
    images: Sequence[Any],
    masks: Sequence[Any],
    predictions: Sequence[Any],
    path: PathLike,
    *,
    classes: Sequence[str],
    palette: Sequence[Sequence[int]] | None = None,
    normalization: dict[str, list[float]] | None = None,
    ignore_index: int | None = None,
    ids: Sequence[str] | None = None,
) -> None:
    """The study's figure: image | prediction | ground truth rows, in the dataset's palette.

    ``images`` are (C, H, W) model inputs shown as RGB stretched per band (2-98 percentile, so
    the normalisation does not matter and is accepted for compatibility), ``masks`` and
    ``predictions`` (H, W) class ids (arrays or tensors; see
    :func:`satunet.evaluate.predict_samples`). Rows are labelled with ``ids`` (default: the
    sample's index); panels sit on a neutral grey, with a framed class legend.
    """
    n = len(images)
    if not n == len(masks) == len(predictions):
        raise ValueError(
            f"plot_predictions needs one mask and prediction per image, got {n} images, "
            f"{len(masks)} masks and {len(predictions)} predictions"
        )
    if n == 0:
        return
    ids = [str(i) for i in ids] if ids is not None else [f"sample {i}" for i in range(n)]
    plt = _pyplot()
    palette = list(palette) if palette else _default_palette(len(classes))
    fig, axes = plt.subplots(n, 3, figsize=(9, 3 * n + 1.0), squeeze=False)
    fig.patch.set_facecolor(PANEL_BACKGROUND)
    for row in range(n):
        panels = [
            display_rgb(np.asarray(images[row])),
            colorize(torch.as_tensor(np.asarray(predictions[row])), palette),
            colorize(torch.as_tensor(np.asarray(masks[row])), palette, ignore_index),
        ]
        for col, (ax, panel) in enumerate(zip(axes[row], panels, strict=True)):
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_color("0.25")
            if row == 0:
                ax.set_title(("image (RGB, 2–98 % stretch)", "prediction", "ground truth")[col])
            if col == 0:
                ax.set_ylabel(ids[row], fontsize=9)
    _legend(fig, classes, palette, ignore_index, rect_bottom=1.0 / (3 * n + 1.0))
    save_figure(fig, path, bbox_inches="tight")


def _legend(
    fig: Any,
    classes: Sequence[str],
    palette: Sequence[Sequence[int]],
    ignore_index: int | None,
    rect_bottom: float,
) -> None:
    from matplotlib.patches import Patch

    handles = [
        Patch(facecolor=[c / 255 for c in rgb], edgecolor="0.3", label=name)
        for name, rgb in zip(classes, palette, strict=False)
    ]
    if ignore_index is not None:
        handles.append(Patch(facecolor="black", edgecolor="0.3", label=f"ignored ({ignore_index})"))
    fig.legend(
        handles=handles, loc="lower center", ncol=min(len(handles), 4), frameon=True,
        facecolor=PANEL_BACKGROUND, edgecolor="0.2", framealpha=1.0,
    )  # fmt: skip
    fig.tight_layout(rect=(0, rect_bottom + 0.01, 1, 1))


def plot_scene_preview(
    classes: np.ndarray,
    path: PathLike,
    *,
    names: Sequence[str],
    colours: Sequence[Sequence[int]],
    nodata: int | None = None,
    dpi: int = 100,
) -> Path:
    """A predicted scene's (H, W) class ids in the model's colours, shown pixel for pixel, with a
    legend of only the classes present (and no-data, where ``nodata`` pixels occur)."""
    plt = _pyplot()
    from matplotlib.patches import Patch

    path = Path(path)
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(colours)] = np.asarray(colours, dtype=np.uint8)[:256]
    present = [int(v) for v in np.unique(classes)]
    handles = [
        Patch(facecolor=lut[v] / 255, edgecolor="0.3", label=names[v])
        for v in present
        if v < len(names) and v != nodata
    ]
    if nodata is not None and nodata in present:
        handles.append(Patch(facecolor="black", edgecolor="0.3", label="no-data"))
    height, width = classes.shape
    legend_in = 1.0 + 0.09 * max((len(h.get_label()) for h in handles), default=6)
    fig_h = max(height / dpi, 0.3 + 0.25 * len(handles))
    fig = plt.figure(figsize=(width / dpi + legend_in, fig_h))
    image_w = width / dpi / fig.get_figwidth()
    ax = fig.add_axes((0, 1 - height / dpi / fig_h, image_w, height / dpi / fig_h))
    ax.imshow(lut[classes], interpolation="nearest")
    ax.set_axis_off()
    fig.patch.set_facecolor(PANEL_BACKGROUND)
    fig.legend(
        handles=handles, loc="upper left", bbox_to_anchor=(image_w, 1), fontsize=10,
        frameon=True, facecolor="white", edgecolor="0.3", framealpha=1.0, borderaxespad=0.4,
    )  # fmt: skip
    return save_figure(fig, path, dpi=dpi, facecolor=fig.get_facecolor())
