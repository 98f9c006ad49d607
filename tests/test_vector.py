"""Vector labels: GeoTIFF in UTM + polygons in EPSG:4326 -> aligned masks, ignore outside."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fakes import make_geotiff
from satunet.data.check import CheckReport
from satunet.data.vector import VectorLabels
from satunet.data.vector_check import check_vector, map_classes
from satunet.errors import DataError, DatasetNotFoundError

pytest.importorskip("pyogrio")
pytest.importorskip("shapely")

RASTER_CRS = "EPSG:32633"
ORIGIN = (500000.0, 5800000.0)  # UTM 33N, metres; 1 m pixels
RES = 1.0


def pixel_box(row0: int, col0: int, row1: int, col1: int):  # noqa: ANN201 - shapely Polygon
    """A rectangle over pixels [row0, row1) x [col0, col1) of the raster, in UTM metres."""
    import shapely

    x0, y0 = ORIGIN
    return shapely.box(x0 + col0 * RES, y0 - row1 * RES, x0 + col1 * RES, y0 - row0 * RES)


def write_vector(
    path: Path,
    geometries: list,
    values: list,
    *,
    field: str = "landuse",
    crs: str = "EPSG:4326",
) -> Path:
    """Write UTM geometries reprojected to ``crs`` (vertices only: the rectangles round-trip)."""
    import shapely
    from pyogrio import raw

    from satunet.data.vectorize import reproject

    geoms = reproject(np.array(geometries, dtype=object), RASTER_CRS, crs)
    data = np.array(values, dtype=object if isinstance(values[0], str) else None)
    driver = "GeoJSON" if path.suffix == ".geojson" else "GPKG"
    raw.write(
        path,
        shapely.to_wkb(geoms),
        field_data=[data],
        fields=[field],
        crs=crs,
        geometry_type="Unknown",
        driver=driver,
    )
    return path


@pytest.fixture
def scene(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """64x64 RGB GeoTIFF in UTM, 3 polygons in WGS84; expected mask (255 = unlabelled)."""
    make_geotiff(
        tmp_path / "ortho.tif", height=64, width=64, crs=RASTER_CRS, origin=ORIGIN, resolution=RES
    )
    boxes = [(0, 0, 20, 30), (30, 10, 60, 50), (40, 40, 64, 64)]
    write_vector(
        tmp_path / "labels.gpkg", [pixel_box(*b) for b in boxes], ["water", "forest", "urban"]
    )
    expected = np.full((64, 64), 255, dtype=np.int64)
    for (r0, c0, r1, c1), cls in zip(boxes, [2, 0, 1], strict=True):  # sorted: forest, urban, water
        expected[r0:r1, c0:c1] = cls  # later features win where they overlap
    return tmp_path, expected


def stitch(ds: VectorLabels, shape: tuple[int, int]) -> np.ndarray:
    out = np.full(shape, -1, dtype=np.int64)
    for i, record in enumerate(ds.records):
        w = record.window
        out[w.row : w.row + w.height, w.col : w.col + w.width] = ds[i]["mask"].numpy()
    return out


def test_masks_align_across_crs_and_ignore_outside_polygons(scene) -> None:
    root, expected = scene
    ds = VectorLabels(root, class_field="landuse", tile_size=32)
    assert ds.classes == ("forest", "urban", "water")
    assert ds.ignore_index == 255 and len(ds.palette) == 3 and ds.in_channels == 3
    assert len(ds) == 4 and ds.groups == ["ortho"] * 4
    sample = ds[0]
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, 32, 32)
    assert sample["mask"].dtype == torch.int64 and sample["mask"].shape == (32, 32)
    np.testing.assert_array_equal(stitch(ds, (64, 64)), expected)


def test_raster_nodata_is_ignored_under_polygons(scene) -> None:
    import rasterio

    root, expected = scene
    with rasterio.open(root / "ortho.tif", "r+") as dst:
        pixels = dst.read()
        pixels[:, 0:5, 0:8] = 0  # a nodata collar under the first polygon
        dst.write(pixels)
        dst.nodata = 0
    expected[0:5, 0:8] = 255
    ds = VectorLabels(root, class_field="landuse", tile_size=32)
    np.testing.assert_array_equal(stitch(ds, (64, 64)), expected)


def test_unlabelled_tiles_are_left_out_and_split_is_deterministic(tmp_path: Path) -> None:
    make_geotiff(
        tmp_path / "a.tif", height=64, width=96, crs=RASTER_CRS, origin=ORIGIN, resolution=RES
    )
    write_vector(
        tmp_path / "roads.geojson",
        [pixel_box(0, 0, 32, 40), pixel_box(0, 40, 10, 60)],
        [0, 1],
        field="class",
    )
    (tmp_path / "classes.json").write_text(json.dumps(["other", "road"]))
    ds = VectorLabels(tmp_path, tile_size=16)
    assert ds.classes == ("other", "road")
    kept = {(r.window.row, r.window.col) for r in ds.records}
    assert kept == {(r, c) for r in (0, 16, 32) for c in (0, 16, 32)} | {(0, 48)}
    train = VectorLabels(tmp_path, "train", tile_size=16, val_fraction=0.3, seed=1)
    val = VectorLabels(tmp_path, "val", tile_size=16, val_fraction=0.3, seed=1)
    again = VectorLabels(tmp_path, "val", tile_size=16, val_fraction=0.3, seed=1)
    assert [r.window for r in val.records] == [r.window for r in again.records]
    assert len(val) == 3 and {r.window for r in train.records}.isdisjoint(
        {r.window for r in val.records}
    )
    with pytest.raises(DatasetNotFoundError, match="val_fraction"):
        VectorLabels(tmp_path, "val", tile_size=16)


def test_errors_name_the_problem(scene, tmp_path: Path) -> None:
    root, _ = scene
    with pytest.raises(DataError, match="fields are: landuse"):
        VectorLabels(root, class_field="klass", tile_size=32)
    with pytest.raises(DatasetNotFoundError, match="nope.gpkg"):
        VectorLabels(root, labels="nope.gpkg", class_field="landuse")
    (root / "classes.json").write_text(json.dumps("forest"))
    with pytest.raises(DataError, match="JSON list"):
        VectorLabels(root, class_field="landuse", tile_size=32)
    (root / "classes.json").write_text(json.dumps(["forest", "water"]))
    with pytest.raises(DataError, match="'urban'"):
        VectorLabels(root, class_field="landuse", tile_size=32)
    far = tmp_path / "far"
    far.mkdir()
    make_geotiff(far / "x.tif", crs=RASTER_CRS, origin=(600000.0, 5900000.0), resolution=RES)
    write_vector(
        far / "l.gpkg", [pixel_box(0, 0, 8, 8), pixel_box(8, 8, 16, 16)], [0, 1], field="class"
    )
    with pytest.raises(DataError, match="no polygon"):
        VectorLabels(far, tile_size=32)


def test_map_classes_rejects_fractional_and_null_values() -> None:
    fids = np.arange(4)
    names, ids, bad = map_classes(np.array([3.0, 1.0, 1.5, np.nan]), fids, None)
    assert names == ("1", "3") and ids.tolist() == [1, 0, -1, -1]
    assert bad == {"1.5": [2], "null": [3]}
    names, ids, bad = map_classes(np.array([0, 1, 4]), fids[:3], ["a", "b"])
    assert ids.tolist() == [0, 1, -1] and bad == {"4": [2]}


def test_tiny_unet_trains_one_epoch(scene) -> None:
    root, _ = scene
    ds = VectorLabels(root, class_field="landuse", tile_size=32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: threads only contend on a shared machine
    try:
        losses = _train_one_epoch(ds)
    finally:
        torch.set_num_threads(threads)
    assert len(losses) == 2 and all(np.isfinite(losses))


def _train_one_epoch(ds: VectorLabels) -> list[float]:
    from torch.utils.data import DataLoader

    from satunet.models import Level, UNet

    torch.manual_seed(0)
    model = UNet(levels=(Level(4), Level(8)), in_channels=3, num_classes=ds.num_classes)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=ds.ignore_index)
    before = [p.detach().clone() for p in model.parameters()]
    model.train()
    losses = []
    for batch in DataLoader(ds, batch_size=2, shuffle=True):
        loss = loss_fn(model(batch["image"]), batch["mask"])
        model.zero_grad()
        loss.backward()
        with torch.no_grad():  # plain SGD (torch.optim's first import costs seconds)
            for p in model.parameters():
                p -= 0.1 * p.grad
        losses.append(loss.item())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    return losses


def test_check_vector_flags_crs_invalid_and_unknown(scene) -> None:
    import shapely

    root, _ = scene
    x0, y0 = ORIGIN[0] + 50, ORIGIN[1]  # over pixels rows 0-10, cols 50-60: 50 m² once repaired
    bowtie = shapely.Polygon([(x0, y0 - 10), (x0 + 10, y0), (x0 + 10, y0 - 10), (x0, y0)])
    write_vector(
        root / "labels.gpkg",
        [pixel_box(0, 0, 20, 30), bowtie, pixel_box(30, 10, 60, 50)],
        [0, 1, 7],
        field="class",
    )
    (root / "classes.json").write_text(json.dumps(["forest", "water"]))
    report = check_vector(root)
    assert not report.ok
    assert report.crs_mismatches and report.crs_mismatches[0]["raster_crs"] == RASTER_CRS
    assert [fid for fid, _ in report.invalid] == [2]  # GeoPackage fids start at 1
    assert report.unknown == {"7": [3]}
    (share,) = [r["unlabelled_share"] for r in report.rasters]
    assert share == pytest.approx(1 - (600 + 1200 + 50) / 4096, abs=0.01)
    data = report.as_dict()
    assert data["ok"] is False and json.dumps(data)
    registry = CheckReport("vector", root, {})  # what `satunet data check vector` gets
    VectorLabels.check_layout(registry, None, None)
    assert not registry.ok and registry.classes == {0: "forest", 1: "water"}
    assert any("invalid geometry fid 2" in n for n in registry.notes)
    assert any("reprojected" in n for n in registry.notes)
