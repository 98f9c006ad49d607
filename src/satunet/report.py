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
    "fmt",
    "markdown_table",
    "plot_curves",
    "plot_predictions",
    "scores_markdown",
    "write_scores",
]


def _savefig_atomic(fig: Any, path: PathLike) -> None:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=100, bbox_inches="tight")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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


def plot_curves(history: Sequence[dict[str, Any]], path: PathLike) -> None:
    """Train/val loss, val mIoU (standard and study) and learning rate per epoch."""
    plt = _pyplot()
    epochs = [r["epoch"] for r in history]

    def col(key: str) -> list[float]:
        return [math.nan if r.get(key) is None else r[key] for r in history]

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(epochs, col("train_loss"), "o-", label="train")
    axes[0].plot(epochs, col("val_loss"), "o-", label="validation")
    axes[0].set(title="loss", xlabel="epoch")
    axes[1].plot(epochs, col("val_miou"), "o-", label="mIoU (standard)")
    axes[1].plot(epochs, col("val_study_miou"), "s--", label="study metric", alpha=0.7)
    axes[1].set(title="validation mIoU", xlabel="epoch")
    axes[2].plot(epochs, col("lr"), "o-", color="tab:green")
    axes[2].set(title="learning rate", xlabel="epoch", yscale="log")
    for ax in axes[:2]:
        ax.legend()
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    _savefig_atomic(fig, path)
    plt.close(fig)


def _display_image(image: torch.Tensor, normalization: dict[str, list[float]] | None) -> Any:
    """(C, H, W) model input -> (H, W, 3) array in [0, 1] for display (first 3 bands)."""
    image = image.float().cpu()
    if normalization is not None:
        mean = torch.tensor(normalization["mean"]).view(-1, 1, 1)
        std = torch.tensor(normalization["std"]).view(-1, 1, 1)
        image = image * std[: len(image)] + mean[: len(image)]
    if image.shape[0] >= 3:
        image = image[:3]
    else:
        image = image[:1].expand(3, -1, -1)
    return image.clamp(0, 1).permute(1, 2, 0).numpy()


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
) -> None:
    """The study's figure: image | prediction | ground truth rows, in the dataset's palette.

    ``images`` are (C, H, W) model inputs, ``masks`` and ``predictions`` (H, W) class ids
    (arrays or tensors; see :func:`satunet.evaluate.predict_samples`), with a class legend.
    """
    from matplotlib.patches import Patch

    n = len(images)
    if not n == len(masks) == len(predictions):
        raise ValueError(
            f"plot_predictions needs one mask and prediction per image, got {n} images, "
            f"{len(masks)} masks and {len(predictions)} predictions"
        )
    if n == 0:
        return
    plt = _pyplot()
    palette = list(palette) if palette else _default_palette(len(classes))
    fig, axes = plt.subplots(n, 3, figsize=(9, 3 * n + 0.8), squeeze=False)
    for row in range(n):
        panels = [
            _display_image(torch.as_tensor(np.asarray(images[row])), normalization),
            colorize(torch.as_tensor(np.asarray(predictions[row])), palette),
            colorize(torch.as_tensor(np.asarray(masks[row])), palette, ignore_index),
        ]
        for ax, panel, name in zip(
            axes[row], panels, ("image", "prediction", "ground truth"), strict=True
        ):
            ax.imshow(panel, interpolation="nearest")
            ax.set_axis_off()
            if row == 0:
                ax.set_title(name)
    handles = [
        Patch(facecolor=[c / 255 for c in rgb], edgecolor="0.5", label=name)
        for name, rgb in zip(classes, palette, strict=False)
    ]
    if ignore_index is not None:
        handles.append(Patch(facecolor="black", label=f"ignored ({ignore_index})"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), frameon=False)
    fig.tight_layout(rect=(0, 0.8 / (3 * n + 0.8) + 0.02, 1, 1))
    _savefig_atomic(fig, path)
    plt.close(fig)
