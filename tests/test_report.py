from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from satunet.evaluate import predict_samples
from satunet.files import atomic_write_text
from satunet.metrics import Scores
from satunet.models import Level, UNet
from satunet.report import (
    colorize,
    markdown_table,
    plot_curves,
    plot_predictions,
    scores_markdown,
    write_scores,
)

PNG = b"\x89PNG\r\n\x1a\n"


def scores() -> Scores:
    return Scores(
        classes=["road", "water", "forest"],
        miou=0.5,
        iou=[0.25, 0.75, math.nan],
        f1=[0.4, 0.857, math.nan],
        micro_iou=0.6,
        pixel_accuracy=0.8,
        study_miou=0.3,
        study_iou=[0.2, 0.7, 0.0],
        loss=0.41,
        num_samples=12,
        ignore_index=255,
    )


def test_markdown_table_aligns_columns():
    table = markdown_table(["model", "mIoU"], [["skinny", "0.26"], ["base", "0.22"]])
    assert table.splitlines() == [
        "| model | mIoU |",
        "| :--- | ---: |",
        "| skinny | 0.26 |",
        "| base | 0.22 |",
    ]


def test_scores_markdown_puts_both_metrics_side_by_side():
    text = scores_markdown(scores(), "skinny · loveda · val")
    assert text.startswith("## skinny · loveda · val")
    assert "| road | 0.2500 | 0.4000 | 0.2000 |" in text
    assert "| forest | – | – | 0.0000 |" in text  # undefined, not zero
    assert "| **mean** | **0.5000** |" in text
    assert "micro IoU 0.6000" in text and "12 samples" in text and "255 ignored" in text
    assert "not comparable" in text


def test_write_scores_is_strict_json_with_meta(tmp_path: Path):
    json_path, md_path = write_scores(scores(), tmp_path, meta={"model": "m", "split": "val"})
    data = json.loads(json_path.read_text())  # strict JSON: nan became null
    assert data["iou"][2] is None and data["extra"] == {"model": "m", "split": "val"}
    assert md_path.read_text().startswith("## m · val")
    mask = os.umask(0)
    os.umask(mask)
    assert json_path.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's private 0600
    assert not list(tmp_path.glob(".*.tmp"))


def test_atomic_write_text_replaces_whole_file(tmp_path: Path):
    path = tmp_path / "a.txt"
    atomic_write_text(path, "old")
    atomic_write_text(path, "new text")
    assert path.read_text() == "new text" and len(list(tmp_path.iterdir())) == 1


def test_plot_curves_handles_missing_values(tmp_path: Path):
    history = [
        {"epoch": 1, "train_loss": 0.9, "val_loss": 0.8, "val_miou": None, "lr": 1e-3},
        {"epoch": 2, "train_loss": 0.7, "val_loss": 0.75, "val_miou": 0.3, "lr": 5e-4},
    ]
    plot_curves(history, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes().startswith(PNG)


def test_colorize_uses_palette_and_blacks_out_ignored():
    labels = torch.tensor([[0, 1], [2, 255]])
    rgb = colorize(labels, [(255, 0, 0), (0, 255, 0), (0, 0, 255)], ignore_index=255)
    assert rgb.shape == (2, 2, 3)
    assert rgb[0, 0].tolist() == [255, 0, 0] and rgb[1, 0].tolist() == [0, 0, 255]
    assert rgb[1, 1].tolist() == [0, 0, 0]


def test_plot_predictions_draws_image_prediction_truth(tmp_path: Path):
    torch.manual_seed(0)
    model = UNet((Level(4, 1), Level(8, 1)), num_classes=3)
    data = [
        {"image": torch.rand(3, 16, 16), "mask": torch.randint(0, 3, (16, 16))} for _ in range(2)
    ]
    images, masks, preds = predict_samples(model, data, count=4)
    assert len(images) == 2 and preds[0].shape == (16, 16) and images[0].shape == (3, 16, 16)
    plot_predictions(
        images,
        masks,
        preds,
        tmp_path / "predictions.png",
        classes=["a", "b", "c"],
        palette=[(255, 0, 0), (0, 255, 0), (0, 0, 255)],
        normalization={"mean": [0.5] * 3, "std": [0.2] * 3},
        ignore_index=255,
    )
    assert (tmp_path / "predictions.png").read_bytes().startswith(PNG)
    assert model.training  # restored after predicting


def test_report_draws_from_arrays_and_never_imports_an_engine():
    import ast

    import satunet.report

    tree = ast.parse(Path(satunet.report.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {m for m in imported if m and m.startswith(("satunet.evaluate", "satunet.train"))}
    with pytest.raises(ValueError, match="one mask and prediction per image"):
        plot_predictions([torch.zeros(3, 4, 4)], [], [], Path("unused.png"), classes=["a"])


def test_display_rgb_stretches_each_band_from_2_to_98_percent():
    from satunet.report import display_rgb

    rng = np.random.default_rng(0)
    dark = rng.uniform(0.01, 0.05, size=(4, 32, 32)).astype(np.float32)  # raw reflectance
    rgb = display_rgb(dark)
    assert rgb.shape == (32, 32, 3) and rgb.min() >= 0 and rgb.max() <= 1
    assert rgb.mean() > 0.3  # no longer a dark image
    grey = display_rgb(dark[:1])
    assert np.allclose(grey[..., 0], grey[..., 2])
    flat = display_rgb(np.full((3, 4, 4), 7.0))
    assert np.isfinite(flat).all()


def test_curves_name_the_loss_and_predictions_take_ids(tmp_path: Path):
    history = [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.1, "val_miou": 0.3, "lr": 1e-3}]
    plot_curves(history, tmp_path / "curves.png", loss_name="jaccard")
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    image, mask = np.zeros((3, 8, 8), np.float32), np.zeros((8, 8), np.int64)
    plot_predictions([image], [mask], [mask], tmp_path / "p.png", classes=["a", "b"],
                     ids=["tile_0042"])  # fmt: skip
    assert (tmp_path / "p.png").is_file()


def test_scene_preview_legend_lists_only_classes_present(tmp_path: Path, monkeypatch):
    import matplotlib.figure

    from satunet.report import plot_scene_preview

    labels: list[str] = []
    original = matplotlib.figure.Figure.legend

    def spy(self, *args, **kwargs):
        labels.extend(h.get_label() for h in kwargs["handles"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "legend", spy)
    classes = np.zeros((40, 60), np.uint8)
    classes[:10] = 2
    classes[-2:, -2:] = 255
    names = ["background", "building", "road", "water"]
    colours = [(255, 255, 255), (255, 0, 0), (255, 255, 0), (0, 0, 255)]
    path = plot_scene_preview(classes, tmp_path / "preview.png", names=names, colours=colours,
                              nodata=255)  # fmt: skip
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert labels == ["background", "road", "no-data"]
