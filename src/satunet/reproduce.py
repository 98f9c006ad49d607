"""The study's protocol end to end: train each model, score it two ways, table it next to the paper.

Each model is trained by :func:`satunet.train.train_from_config` with the study's recipe (the
``TrainConfig`` defaults are its Table 1) in its own run directory, then scored with the
standard confusion-matrix IoU and with the study's per-image metric (seed spec section 6), and
tabulated beside the published Tables 3/4 (seed spec section 11).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from satunet.config import DataConfig, ModelConfig, RunConfig, TrainConfig, validate
from satunet.errors import ConfigError, UnknownNameError
from satunet.evaluate import evaluate_checkpoint
from satunet.files import PathLike, atomic_write_text
from satunet.models import list_models
from satunet.profile import model_facts
from satunet.report import fmt
from satunet.train import train_from_config

log = logging.getLogger(__name__)
Dataset = Literal["loveda", "landcoverai"]
Labels = Literal["official", "study"]

# Published numbers (paper Tables 3 and 4; seed spec section 11). Params and footprint are the
# paper's columns as printed, including its mix of 8- and 5-class counts (spec section 4.1).
STUDY_TABLES: dict[str, dict[str, Any]] = {
    "loveda": {
        "hardware": "Google Colab V100",
        "classes": (
            "no-data",
            "background",
            "building",
            "road",
            "water",
            "barren",
            "forest",
            "agriculture",
        ),
        "rows": {
            "unet_base": (
                31043976,
                3966,
                60.7846,
                0.2217,
                (0.6109, 0.4128, 0.2875, 0.1543, 0.0802, 0.0735, 0.1463, 0.008),
            ),
            "unet_short": (
                8254981,
                5842,
                78.0029,
                0.2432,
                (0.7718, 0.4122, 0.2835, 0.1528, 0.0808, 0.0863, 0.1494, 0.0091),
            ),
            "unet_skinny": (
                20095781,
                1292.25,
                27.9514,
                0.2639,
                (0.6872, 0.4457, 0.3383, 0.2134, 0.1319, 0.111, 0.1672, 0.0165),
            ),
            "unet_less_conv": (
                20281253,
                2444.25,
                35.7419,
                0.2305,
                (0.4996, 0.4411, 0.349, 0.184, 0.1182, 0.1075, 0.1347, 0.0099),
            ),
            "unetplusplus_resnet34": (
                26079189,
                3333,
                39.9112,
                0.2881,
                (0.5497, 0.4669, 0.3845, 0.2654, 0.2639, 0.1471, 0.1895, 0.0376),
            ),
            "deeplabv3plus_resnet34": (
                22438485,
                872.63,
                22.512,
                0.2571,
                (0.6935, 0.4261, 0.2919, 0.1604, 0.2068, 0.0963, 0.1508, 0.0307),
            ),
        },
    },  # fmt: skip
    "landcoverai": {
        "hardware": "RTX 4060 Ti",
        "classes": ("background", "building", "woodland", "water", "road"),
        "rows": {
            "unet_base": (31043976, 3966, 730.9526, 0.3246, (0.6469, 0.0812, 0.5562, 0.195, 0.144)),
            "unet_short": (8254981, 5842, 468.471, 0.2558, (0.5893, 0.0697, 0.4353, 0.077, 0.1078)),
            "unet_skinny": (
                20095781,
                1292.25,
                312.0205,
                0.3983,
                (0.6693, 0.375, 0.5011, 0.1833, 0.2631),
            ),
            "unet_less_conv": (
                20281253,
                2444.25,
                443.4832,
                0.3195,
                (0.6602, 0.0865, 0.5416, 0.1657, 0.1434),
            ),
            "unetplusplus_resnet34": (
                26079189,
                3333,
                582.9711,
                0.3953,
                (0.6848, 0.2976, 0.5839, 0.134, 0.2764),
            ),
            "deeplabv3plus_resnet34": (
                22438485,
                872.63,
                259.2879,
                0.3846,
                (0.6827, 0.2833, 0.5761, 0.1392, 0.2419),
            ),
        },
    },  # fmt: skip
}
STUDY_MODELS: tuple[str, ...] = tuple(STUDY_TABLES["loveda"]["rows"])


@dataclass
class ReproduceReport:
    """One row per model: this machine's run beside the study's published figures."""

    data: str
    labels: str
    split: str
    rows: list[dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """The report as one JSON object (rows, settings, published classes)."""
        return json.dumps(
            {
                "data": self.data,
                "labels": self.labels,
                "split": self.split,
                "study_classes": list(STUDY_TABLES[self.data]["classes"]),
                "settings": self.settings,
                "rows": self.rows,
            },
            indent=2,
        )

    def to_markdown(self) -> str:
        """The study's columns, then per-class IoU under both metrics beside the published."""
        study = STUDY_TABLES[self.data]
        s = self.settings
        lines = [
            f"**satunet reproduce** {self.data} ({self.labels} labels): {s.get('epochs')} "
            f"epoch(s) max, batch {s.get('batch_size')}, crop {s.get('crop') or 'none'}; "
            f"scored on {self.split}; published figures from {study['hardware']}.",
            "",
            "| Model | Params | Study params | Footprint MB¹ | Study MB | s/epoch² | Study "
            "s/epoch | Epochs | mIoU | mIoU (study metric)³ | Study mIoU³ |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in self.rows:
            p = r.get("published") or {}
            published = f"{p['params']:,}" if p.get("params") is not None else "–"
            lines.append(
                f"| `{r['model']}` | {r['params']:,} | {published} | "
                f"{fmt(r['study_footprint_mb'], 2)} | {fmt(p.get('footprint_mb'), 2)} "
                f"| {fmt(r['epoch_s'], 1)} | {fmt(p.get('epoch_s'), 1)} | "
                f"{r['epochs_run']} | {fmt(r['miou'], 4)} | {fmt(r['study_miou'], 4)} | "
                f"{fmt(p.get('miou'), 4)} |"
            )
        classes = _all_classes(self.rows, study["classes"])
        lines += [
            "",
            "Per-class IoU:",
            "",
            "| Model | Metric | mIoU | " + " | ".join(classes) + " |",
            "|---|---|---:|" + "---:|" * len(classes),
        ]
        for r in self.rows:
            p = r.get("published") or {}
            variants = (
                ("standard", r["miou"], dict(zip(r["classes"], r["iou"], strict=True))),
                (
                    "study metric",
                    r["study_miou"],
                    dict(zip(r["classes"], r["study_iou"], strict=True)),
                ),
                (
                    "published (study metric)",
                    p.get("miou"),
                    dict(zip(study["classes"], p.get("iou", ()), strict=False)),
                ),
            )
            for i, (metric, miou, per_class) in enumerate(variants):
                cells = [fmt(per_class.get(c), 4) for c in classes]
                name = f"`{r['model']}`" if i == 0 else ""
                lines.append(f"| {name} | {metric} | {fmt(miou, 4)} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "¹ The study's torchsummary 'memory footprint' at 512x512 for this run's class count "
            "(a proxy, not memory; `satunet benchmark` measures memory).",
            "² Mean wall time per epoch on this machine, training plus validation as in the study "
            f"(training only: {', '.join(fmt(r['train_s'], 1) for r in self.rows)} s).",
            "³ The study's metric is a per-image mean over images where the class is in the "
            "ground truth or the prediction, averaged over all classes including no-data / "
            "background; 'mIoU' is the standard one from one confusion matrix"
            + (", ignoring LoveDA's no-data" if self.labels == "official" else "")
            + ". Only the study metric is comparable with the published column, and only with "
            "the same split and labels.",
        ]
        return "\n".join(lines) + "\n"

    def save(self, out_dir: PathLike) -> dict[str, Path]:
        """Write reproduce.md and reproduce.json into ``out_dir`` (atomically)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        files = {"reproduce.md": self.to_markdown(), "reproduce.json": self.to_json() + "\n"}
        for name, text in files.items():
            atomic_write_text(out / name, text)
        return {name: out / name for name in files}


def _all_classes(rows: Sequence[dict[str, Any]], published: Sequence[str]) -> list[str]:
    """Published class order first, then any class only this run has."""
    names = list(published)
    for r in rows:
        names += [c for c in r["classes"] if c not in names]
    return names


def published_row(data: str, model: str) -> dict[str, Any] | None:
    """The study's figures for one model, or None for a model the study did not train."""
    raw = STUDY_TABLES[data]["rows"].get(model)
    if raw is None:
        return None
    params, footprint, epoch_s, miou, iou = raw
    return {
        "params": params,
        "footprint_mb": footprint,
        "epoch_s": epoch_s,
        "miou": miou,
        "iou": list(iou),
    }


def reproduce(
    data: Dataset,
    root: PathLike,
    *,
    models: Sequence[str] = STUDY_MODELS,
    epochs: int = 50,
    labels: Labels = "study",
    crop: int | None = None,
    batch_size: int = 8,
    val_fraction: float = 0.0,
    out: PathLike = "reproduce",
    device: str = "auto",
    resume: bool = False,
    progress: bool = True,
) -> ReproduceReport:
    """Train and score each model with the study's recipe; write ``out/<model>/`` and the table.

    Args:
        labels: "study" keeps LoveDA's no-data as class 0 as the study did; "official" ignores
            it. LandCover.ai has one labelling, so this only matters for LoveDA.
        val_fraction: carve this share of the training images out for validation (by source
            image), for copies of a dataset without a labelled val split; 0 uses the val split.
        resume: continue runs whose directory already holds a last.pt.

    The best checkpoint (lowest validation loss) is scored on LandCover.ai's labelled test split,
    and on the validation split for LoveDA, whose official test labels are withheld.
    """
    if data not in STUDY_TABLES:
        raise UnknownNameError("dataset", data, STUDY_TABLES)
    if labels not in ("official", "study"):
        raise UnknownNameError("labels", labels, ("official", "study"))
    if not models:
        raise ConfigError("no models to reproduce")
    for name in models:
        if name not in list_models():
            raise UnknownNameError("model", name, list_models())
    if epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {epochs}")
    out = Path(out)
    split = "test" if data == "landcoverai" else "val"
    if data == "loveda" and val_fraction > 0:
        split = f"val (carved {val_fraction:g} of train)"
    rows = []
    for name in models:
        cfg = RunConfig(
            model=ModelConfig(name=name),
            data=DataConfig(
                name=data,
                root=str(root),
                crop=crop,
                val_fraction=val_fraction,
                options={"labels": labels} if data == "loveda" else {},
            ),
            train=TrainConfig(epochs=epochs, batch_size=batch_size, device=device),
        )
        validate(cfg)
        run_dir = out / name
        log.info("reproduce: training %s into %s", name, run_dir)
        summary = train_from_config(
            cfg, run_dir, resume=resume and (run_dir / "last.pt").is_file(), progress=progress
        )
        scores = summary["best"] or {}
        if data == "landcoverai":
            scores = _score_test(run_dir, device, progress)
        rows.append(result_row(data, name, run_dir, summary, scores))
    settings = {
        "root": str(root),
        "epochs": epochs,
        "batch_size": batch_size,
        "crop": crop,
        "val_fraction": val_fraction,
        "device": device,
    }
    report = ReproduceReport(data=data, labels=labels, split=split, rows=rows, settings=settings)
    report.save(out)
    return report


def result_row(
    data: str, name: str, run_dir: Path, summary: dict[str, Any], scores: dict[str, Any]
) -> dict[str, Any]:
    """One model's row: its facts, the run's times and scores, and the published figures."""
    num_classes = len(scores.get("classes") or ()) or None
    facts = model_facts(name, num_classes=num_classes or 5, size=512)
    return {
        "model": name,
        "run_dir": str(run_dir),
        "params": facts.params,
        "study_footprint_mb": facts.study_footprint_mb,
        "epoch_s": summary["mean_epoch_time_s"],
        "train_s": summary["mean_train_time_s"],
        "epochs_run": summary["epochs_run"],
        "best_epoch": summary["best_epoch"],
        "classes": list(scores.get("classes") or ()),
        "miou": scores.get("miou"),
        "iou": list(scores.get("iou") or ()),
        "study_miou": scores.get("study_miou"),
        "study_iou": list(scores.get("study_iou") or ()),
        "published": published_row(data, name),
    }


def _score_test(run_dir: Path, device: str, progress: bool) -> dict[str, Any]:
    scores = evaluate_checkpoint(
        run_dir / "best.pt", split="test", val_fraction=0, device=device, progress=progress
    )
    return scores.as_dict()
