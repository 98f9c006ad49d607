"""Datasets in their official layouts, user folders, create_dataset, and `satunet data check`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fakes import make_folder, make_geotiff, make_landcoverai, make_loveda, split_py_tiles
from satunet.cli import main
from satunet.data import (
    DATASETS,
    ImageMaskFolder,
    LandCoverAI,
    LoveDA,
    check_dataset,
    create_dataset,
)
from satunet.data.landcoverai import official_tiles
from satunet.errors import DataError, DatasetNotFoundError, UnknownNameError


@pytest.fixture(scope="module")
def loveda_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_loveda(tmp_path_factory.mktemp("loveda"))


@pytest.fixture(scope="module")
def landcoverai_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_landcoverai(tmp_path_factory.mktemp("landcoverai"), output=True)


# --- LoveDA -----------------------------------------------------------------------------------


def test_loveda_official_labels_map_nodata_to_ignore(loveda_root: Path) -> None:
    ds = LoveDA(loveda_root, "train", scene="urban", tile_size=None)
    raw = np.asarray(Image.open(loveda_root / "Train/Urban/masks_png/0.png")).astype(np.int64)
    sample = ds[0]
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, 64, 64)
    assert 0.0 <= sample["image"].min() and sample["image"].max() <= 1.0
    assert sample["mask"].dtype == torch.int64 and sample["mask"].shape == (64, 64)
    expected = np.where(raw == 0, 255, raw - 1)
    assert np.array_equal(sample["mask"].numpy(), expected)
    assert ds.num_classes == 7 and ds.ignore_index == 255 and len(ds.palette) == 7
    assert ds.classes[0] == "background" and ds.in_channels == 3


def test_loveda_study_labels_keep_nodata_as_class_zero(loveda_root: Path) -> None:
    ds = LoveDA(loveda_root, "val", scene="rural", tile_size=None, labels="study")
    raw = np.asarray(Image.open(ds.records[0].mask)).astype(np.int64)
    assert np.array_equal(ds[0]["mask"].numpy(), raw)
    assert ds.num_classes == 8 and ds.ignore_index is None and ds.classes[0] == "no-data"


def test_loveda_tiles_row_major_and_groups(loveda_root: Path) -> None:
    whole = LoveDA(loveda_root, "train", scene="both", tile_size=None)
    tiled = LoveDA(loveda_root, "train", scene="both", tile_size=32)
    assert len(whole) == 4 and len(tiled) == 16
    image = whole[0]["image"]
    for k, (r, c) in enumerate([(0, 0), (0, 32), (32, 0), (32, 32)]):
        assert torch.equal(tiled[k]["image"], image[:, r : r + 32, c : c + 32])
    assert tiled.groups[:4] == [whole.groups[0]] * 4
    assert len(set(tiled.groups)) == 4  # urban ids and rural ids stay distinct


def test_loveda_test_split_has_no_masks(loveda_root: Path) -> None:
    ds = LoveDA(loveda_root, "test", tile_size=None)
    assert set(ds[0]) == {"image"} and not ds.labeled


def test_loveda_missing_scene_and_split(tmp_path: Path) -> None:
    root = make_loveda(tmp_path, splits=("train",), scenes=("rural",), n=1)
    assert len(LoveDA(root, "train", scene="both", tile_size=None)) == 1
    with pytest.raises(DatasetNotFoundError, match="Urban.*download"):
        LoveDA(root, "train", scene="urban")
    with pytest.raises(DatasetNotFoundError, match="Val.*satunet data download"):
        LoveDA(root, "val")
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        LoveDA(tmp_path / "nowhere")
    shutil.rmtree(root / "Train" / "Rural")
    (root / "Train" / "Rural").mkdir()
    with pytest.raises(DatasetNotFoundError, match="neither Urban"):
        LoveDA(root, "train")


def test_loveda_bad_names() -> None:
    with pytest.raises(UnknownNameError, match="split 'training'. Did you mean 'train'"):
        LoveDA("x", split="training")  # type: ignore[arg-type]
    with pytest.raises(UnknownNameError, match="scene 'city'"):
        LoveDA("x", scene="city")  # type: ignore[arg-type]
    with pytest.raises(UnknownNameError, match="labels 'offical'"):
        LoveDA("x", labels="offical")  # type: ignore[arg-type]


def test_loveda_bad_mask_values_name_the_file(tmp_path: Path) -> None:
    root = make_loveda(tmp_path, splits=("train",), scenes=("rural",), n=1)
    mask = root / "Train/Rural/masks_png/0.png"
    Image.fromarray(np.full((64, 64), 9, np.uint8)).save(mask)
    with pytest.raises(DataError, match=r"0\.png holds values \[9\]"):
        LoveDA(root, tile_size=None)[0]


def test_corrupt_image_and_size_mismatch_name_the_file(tmp_path: Path) -> None:
    root = make_loveda(tmp_path, splits=("train",), scenes=("rural",), n=2)
    image = root / "Train/Rural/images_png/0.png"
    image.write_bytes(image.read_bytes()[:200])  # truncated PNG
    ds = LoveDA(root, tile_size=None)
    with pytest.raises(DataError, match=r"cannot read .*0\.png"):
        ds[0]
    # A mask of another size is refused when the dataset is built, from the headers (issue 11).
    Image.fromarray(np.zeros((32, 64), np.uint8)).save(root / "Train/Rural/masks_png/1.png")
    with pytest.raises(DataError, match=r"mask .*1\.png is 64x32 but its image 1\.png is 64x64"):
        LoveDA(root, tile_size=None)


@pytest.mark.shared_data
def test_real_loveda_rural_train(shared_loveda: Path) -> None:
    ds = LoveDA(shared_loveda, split="train", scene="rural")
    assert len(ds) == 80 and len(set(ds.groups)) == 20
    sample = ds[18 * 4 + 1]  # id 18 is the only image with no-data pixels
    assert sample["image"].shape == (3, 512, 512) and sample["image"].dtype == torch.float32
    assert sample["mask"].shape == (512, 512) and sample["mask"].dtype == torch.int64
    values = set(torch.unique(torch.cat([ds[18 * 4 + k]["mask"].flatten() for k in range(4)])))
    assert 255 in {int(v) for v in values} and max(int(v) for v in values if v != 255) <= 6


# --- LandCover.ai -----------------------------------------------------------------------------


def test_official_tiles_follow_split_py_rule() -> None:
    # 1100 x 1300: a 3x3 grid of which 2x2 tiles are full; k counts the partial ones too.
    assert sorted(official_tiles(1100, 1300)) == [0, 1, 3, 4]
    assert official_tiles(1100, 1300)[3].row == 512 and official_tiles(1100, 1300)[3].col == 0
    for h, w in [(9000, 9500), (4200, 4700), (512, 512), (511, 2000), (1024, 1536)]:
        ours = {k: (t.row, t.col) for k, t in official_tiles(h, w).items()}
        assert ours == split_py_tiles(h, w)
    assert len(official_tiles(9000, 9500)) == 17 * 18


def test_landcoverai_cuts_orthophotos_like_split_py(landcoverai_root: Path) -> None:
    listed = {
        s: (landcoverai_root / f"{s}.txt").read_text().split() for s in ("train", "val", "test")
    }
    assert sorted(sum(listed.values(), [])) == sorted(
        ["M-33-7-A-d-2-3_0", "M-33-7-A-d-2-3_1", "M-33-7-A-d-2-3_3", "M-33-7-A-d-2-3_4", "N-34-1_0"]
    )
    ds = LandCoverAI(landcoverai_root, "train", source="orthophotos")
    assert len(ds) == len(listed["train"]) and ds.num_classes == 5 and ds.ignore_index is None
    import rasterio

    with rasterio.open(landcoverai_root / "images/M-33-7-A-d-2-3.tif") as src:
        image = src.read()
    with rasterio.open(landcoverai_root / "masks/M-33-7-A-d-2-3.tif") as src:
        mask = src.read(1)
    k = listed["train"].index("M-33-7-A-d-2-3_4")
    sample = ds[k]  # k=4 is row 1, col 1 of a 3-wide grid
    assert torch.equal(sample["image"], torch.from_numpy(image[:, 512:1024, 512:1024]) / 255.0)
    assert torch.equal(sample["mask"], torch.from_numpy(mask[512:1024, 512:1024]).long())
    assert ds.groups == ["M-33-7-A-d-2-3"] * len(ds)


def test_landcoverai_reads_split_py_output(landcoverai_root: Path) -> None:
    tiles = LandCoverAI(landcoverai_root, "val")  # auto picks output/
    ortho = LandCoverAI(landcoverai_root, "val", source="orthophotos")
    assert tiles.source == "tiles" and len(tiles) == len(ortho)
    assert torch.equal(tiles[0]["mask"], ortho[0]["mask"])
    assert (tiles[0]["image"] - ortho[0]["image"]).abs().mean() < 0.25  # JPEG, not lossless
    assert tiles.groups == ortho.groups


def test_landcoverai_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="landcoverai --root"):
        LandCoverAI(tmp_path / "none")
    root = make_landcoverai(tmp_path / "lc", sheets=(("A", 600, 600),))
    (root / "train.txt").write_text("A_0\nA_7\n")
    with pytest.raises(DataError, match="A_7"):
        LandCoverAI(root, "train")
    with pytest.raises(ValueError, match="must be 512"):
        LandCoverAI(root, tile_size=256)


# --- ImageMaskFolder --------------------------------------------------------------------------


def test_folder_png_with_classes_file(tmp_path: Path) -> None:
    root = make_folder(tmp_path, n=3, num_classes=4)
    ds = ImageMaskFolder(root)
    assert len(ds) == 3 and ds.classes == ("c0", "c1", "c2", "c3") and len(ds.palette) == 4
    assert ds[0]["mask"].max() <= 3 and ds.groups == ["tile0", "tile1", "tile2"]


def test_folder_multiband_uint16_geotiff_tiled(tmp_path: Path) -> None:
    root = make_folder(tmp_path, n=1, size=80, suffix=".tif", bands=4, dtype="uint16")
    ds = ImageMaskFolder(root, tile_size=64, stride=48)
    assert ds.in_channels == 4 and len(ds) == 4  # origins 0 and 16 on each axis (cover)
    image = ds[3]["image"]
    import rasterio

    with rasterio.open(root / "images/tile0.tif") as src:
        raw = src.read()
    assert image.shape == (4, 64, 64)
    assert torch.allclose(image, torch.from_numpy(raw[:, 16:, 16:].astype(np.float32)) / 65535)
    scaled = ImageMaskFolder(root, scale=10000.0)
    assert torch.allclose(scaled[0]["image"], torch.from_numpy(raw.astype(np.float32)) / 10000)


def test_folder_errors(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "a", n=2, classes_file=False)
    with pytest.raises(DataError, match="classes.json"):
        ImageMaskFolder(root)
    assert ImageMaskFolder(root, classes=3, ignore_index=255).ignore_index == 255
    with pytest.raises(DataError, match="ignore_index=1 is a class id"):
        ImageMaskFolder(root, classes=3, ignore_index=1)
    (root / "masks/tile1.png").unlink()
    with pytest.raises(DataError, match="tile1.png"):
        ImageMaskFolder(root, classes=3)
    with pytest.raises(DatasetNotFoundError, match="val-fraction"):
        ImageMaskFolder(root, split="val", classes=3)
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="holds no images"):
        ImageMaskFolder(empty, classes=2)
    bands = make_folder(tmp_path / "b", n=1, suffix=".tif", bands=4)
    make_geotiff(bands / "images/tile1.tif", bands=3)
    make_geotiff(bands / "masks/tile1.tif", bands=1)
    with pytest.raises(DataError, match="tile1.tif has 3 bands but this dataset has in_channels=4"):
        ImageMaskFolder(bands)[1]


# --- create_dataset ---------------------------------------------------------------------------


def test_create_dataset_passes_options_and_rejects_unknown(loveda_root: Path) -> None:
    ds = create_dataset("loveda", loveda_root, "val", scene="rural", tile_size=None)
    assert isinstance(ds, LoveDA) and len(ds) == 2
    with pytest.raises(UnknownNameError, match="Did you mean 'scene'"):
        create_dataset("loveda", loveda_root, scen="rural")
    with pytest.raises(UnknownNameError, match="Did you mean 'loveda'"):
        create_dataset("lovedaa", loveda_root)  # type: ignore[arg-type]
    assert set(DATASETS) == {"loveda", "landcoverai", "folder", "vector"}


def test_dataloader_batches_samples(loveda_root: Path) -> None:
    ds = LoveDA(loveda_root, "train", tile_size=32)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["mask"].shape == (4, 32, 32)


# --- satunet data check / stats ---------------------------------------------------------------


@pytest.mark.shared_data
def test_check_real_loveda(shared_loveda: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "check", "loveda", "--root", str(shared_loveda)]) == 0
    out = capsys.readouterr().out
    assert "20 image/mask pairs" in out and "no problems found" in out
    assert "agriculture" in out and "10,606,266" in out  # class 7 pixels of the 20 masks


def test_check_reports_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = make_loveda(tmp_path, splits=("train",), scenes=("rural", "urban"), n=2)
    bad = root / "Train/Rural/images_png/0.png"
    bad.write_bytes(bad.read_bytes()[:300])
    Image.fromarray(np.full((64, 64), 12, np.uint8)).save(root / "Train/Urban/masks_png/2.png")
    Image.fromarray(np.zeros((64, 32), np.uint8)).save(root / "Train/Urban/masks_png/3.png")
    (root / "Train/Rural/masks_png/1.png").unlink()
    assert main(["data", "check", "loveda", "--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert "4 problem(s)" in out
    assert f"{bad}: cannot be read" in out
    assert "2.png: holds values [12]" in out
    assert "3.png: is 32x64 but its image 3.png is 64x64" in out
    assert "1.png: has no mask" in out


def test_check_json_landcoverai_and_folder(
    landcoverai_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["data", "check", "landcoverai", "--root", str(landcoverai_root), "--format",
                 "json"]) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["pairs"] == 2
    assert sum(h["pixels"] for h in report["histogram"]) == 1100 * 1300 + 700 * 520
    folder = make_folder(tmp_path / "f", n=2, num_classes=2)
    Image.fromarray(np.full((64, 64), 5, np.uint8)).save(folder / "masks/tile1.png")
    report = check_dataset("folder", folder)
    assert not report.ok and "tile1.png" in report.problems[0][0]


def test_stats_json(loveda_root: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["data", "stats", "loveda", "--root", str(loveda_root), "--split", "val"]
    assert main([*args, "--format", "json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    ds = LoveDA(loveda_root, "val", tile_size=None)
    assert stats["samples"] == len(ds) and len(stats["normalization"]["mean"]) == 3
    masks = torch.cat([ds[i]["mask"].flatten() for i in range(len(ds))])
    ignored = next(r for r in stats["classes"] if r["id"] == 255)
    assert ignored["pixels"] == int((masks == 255).sum())


def test_data_check_missing_root_is_a_problem_like_any_other(tmp_path: Path, capsys) -> None:
    assert main(["data", "check", "loveda", "--root", str(tmp_path / "nope")]) == 1  # issue 11
    out = capsys.readouterr().out
    assert "does not exist" in out and "satunet data download loveda" in out


def test_check_landcoverai_output_only(landcoverai_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "lc"
    shutil.copytree(landcoverai_root / "output", root / "output")
    for split in ("train", "val", "test"):
        shutil.copy(landcoverai_root / f"{split}.txt", root)
    report = check_dataset("landcoverai", root)
    assert report.ok and report.pairs == 5
    assert len(LandCoverAI(root, "test")) == len((root / "test.txt").read_text().split())
    bad = root / "output" / "N-34-1_0.jpg"
    bad.write_bytes(b"junk")
    assert [path for path, _ in check_dataset("landcoverai", root).problems] == [str(bad)]


@pytest.mark.shared_data
def test_check_corrupted_copy_of_real_loveda(
    shared_loveda: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rural = tmp_path / "Train" / "Rural"
    for sub in ("images_png", "masks_png"):
        (rural / sub).mkdir(parents=True)
        for i in range(3):
            shutil.copy(shared_loveda / "Train/Rural" / sub / f"{i}.png", rural / sub)
    bad = rural / "images_png" / "1.png"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    assert main(["data", "check", "loveda", "--root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"{bad}: cannot be read" in out and "1 problem(s)" in out
