"""`satunet reproduce` runs the study's protocol end to end and tables it beside the paper."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from satunet import cli
from satunet.errors import UnknownNameError
from satunet.reproduce import STUDY_TABLES, ReproduceReport, published_row, reproduce


def _fake_loveda(root: Path, images: int = 2, side: int = 512) -> Path:
    """Official LoveDA layout (Train/Rural/images_png + masks_png), one 512 tile per image."""
    rng = np.random.default_rng(0)
    for sub in ("images_png", "masks_png"):
        (root / "Train" / "Rural" / sub).mkdir(parents=True, exist_ok=True)
    for i in range(images):
        image = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        mask = np.zeros((side, side), dtype=np.uint8)
        mask[: side // 2] = 1 + i  # two big regions so IoU is defined
        mask[side // 2 :] = 6
        Image.fromarray(image).save(root / "Train" / "Rural" / "images_png" / f"{i}.png")
        Image.fromarray(mask).save(root / "Train" / "Rural" / "masks_png" / f"{i}.png")
    return root


def _link_subset(shared: Path, root: Path, names: list[str]) -> Path:
    """A few of the shared tiles under a new root, by symlink (never a copy of the data)."""
    for sub in ("images_png", "masks_png"):
        folder = root / "Train" / "Rural" / sub
        folder.mkdir(parents=True)
        for name in names:
            (folder / name).symlink_to(shared / "Train" / "Rural" / sub / name)
    return root


def _check_report(report: ReproduceReport, out: Path, models: list[str]) -> None:
    assert [r["model"] for r in report.rows] == models
    for row in report.rows:
        assert (Path(row["run_dir"]) / "best.pt").is_file()
        assert row["epochs_run"] == 1 and row["epoch_s"] > 0
        assert row["published"]["miou"] == STUDY_TABLES["loveda"]["rows"][row["model"]][3]
        assert len(row["iou"]) == len(row["classes"]) == len(row["study_iou"])
        assert row["study_miou"] is not None and 0 <= row["study_miou"] <= 1
    saved = json.loads((out / "reproduce.json").read_text())
    assert saved["rows"][0]["model"] == models[0]
    md = (out / "reproduce.md").read_text()
    assert "published (study metric)" in md and "Study s/epoch" in md


def test_reproduce_on_generated_loveda(tmp_path: Path) -> None:
    root = _fake_loveda(tmp_path / "loveda")
    out = tmp_path / "rep"
    report = reproduce(
        "loveda",
        root,
        models=["unet_skinny"],
        epochs=1,
        crop=128,  # skinny's bottleneck is 2x2 there: BatchNorm trains on batch 1
        batch_size=1,
        val_fraction=0.5,
        out=out,
        device="cpu",
        progress=False,
    )
    _check_report(report, out, ["unet_skinny"])
    row = report.rows[0]
    assert row["classes"][0] == "no-data" and len(row["classes"]) == 8  # the study's labels
    assert row["params"] == 20_095_880  # 8 classes, not the paper's mixed 5-class figure


@pytest.mark.slow
def test_reproduce_cli_on_real_loveda_tiles(shared_loveda: Path, tmp_path: Path, capsys) -> None:
    root = _link_subset(shared_loveda, tmp_path / "loveda", ["0.png", "1.png", "2.png", "3.png"])
    out = tmp_path / "rep"
    models = ["unet_skinny", "deeplabv3plus_resnet34"]
    argv = ["reproduce", "--data", "loveda", "--root", str(root), "--models", ",".join(models)]
    argv += ["--epochs", "1", "--crop", "64", "--batch-size", "4", "--val-fraction", "0.25"]
    argv += ["--labels", "official", "--device", "cpu", "--out", str(out)]
    assert cli.main(argv) == 0
    assert "| `deeplabv3plus_resnet34` |" in capsys.readouterr().out
    saved = json.loads((out / "reproduce.json").read_text())
    report = ReproduceReport(
        saved["data"], saved["labels"], saved["split"], saved["rows"], saved["settings"]
    )
    _check_report(report, out, models)
    assert "no-data" not in saved["rows"][0]["classes"]  # official labels ignore it


def test_published_rows_match_the_paper() -> None:
    skinny = published_row("landcoverai", "unet_skinny")
    assert skinny is not None and skinny["miou"] == 0.3983 and len(skinny["iou"]) == 5
    # the study's overall mIoU is the mean of its per-class values
    for data, table in STUDY_TABLES.items():
        for model, (_, _, _, miou, iou) in table["rows"].items():
            assert sum(iou) / len(iou) == pytest.approx(miou, abs=6e-4), (data, model)
    assert published_row("loveda", "unet_fast") is None


def test_reproduce_rejects_bad_names(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="unet_skinny"):
        reproduce("loveda", tmp_path, models=["unet_skiny"], out=tmp_path / "o")
    with pytest.raises(UnknownNameError, match="landcoverai"):
        reproduce("landcover", tmp_path, out=tmp_path / "o")  # type: ignore[arg-type]
