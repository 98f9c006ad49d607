"""Scene I/O by rows: exact windows, no-data and alpha masks, atomic georeferenced writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image

from fakes import make_geotiff
from satunet.data.geotiff import BlockRows, RasterWriter, expand_inputs, open_scene
from satunet.errors import DataError, InputNotFoundError
from satunet.infer import scale_pixels


def test_read_rows_is_exact_and_keeps_georeferencing(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 65536, (3, 50, 40), dtype=np.uint16)
    path = make_geotiff(tmp_path / "s.tif", data=data, crs="EPSG:32633", resolution=10.0)
    with open_scene(path) as scene:
        info = scene.info
        assert (info.height, info.width, info.bands, info.dtype) == (50, 40, 3, "uint16")
        assert info.crs == rasterio.crs.CRS.from_epsg(32633)
        assert info.pixel_area_km2 == pytest.approx(1e-4)
        rows, nodata = scene.read_rows(7, 31)
    np.testing.assert_array_equal(rows, data[:, 7:31])
    assert nodata is None


def test_geographic_crs_has_no_area(tmp_path: Path) -> None:
    path = make_geotiff(tmp_path / "g.tif", crs="EPSG:4326", origin=(10.0, 50.0), resolution=1e-4)
    with open_scene(path) as scene:
        assert scene.info.georeferenced and scene.info.pixel_area_km2 is None


def test_nodata_mask_needs_every_band_at_nodata(tmp_path: Path) -> None:
    data = np.full((3, 8, 8), 9, dtype=np.uint8)
    data[:, 0, 0] = 0  # all bands no-data
    data[0, 1, 1] = 0  # one band 0 only: a valid (dark red-less) pixel
    path = make_geotiff(tmp_path / "n.tif", data=data)
    with rasterio.open(path, "r+") as dst:
        dst.nodata = 0
    with open_scene(path) as scene:
        _, nodata = scene.read_rows(0, 8)
    assert nodata is not None and nodata.sum() == 1 and nodata[0, 0]


def test_png_alpha_marks_nodata_and_is_not_a_band(tmp_path: Path) -> None:
    rgba = np.random.default_rng(0).integers(0, 256, (10, 12, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[2:4, 5:9, 3] = 0
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    with open_scene(tmp_path / "a.png") as scene:
        assert scene.info.bands == 3 and not scene.info.is_tiff
        rows, nodata = scene.read_rows(0, 10)
    np.testing.assert_array_equal(rows, rgba[..., :3].transpose(2, 0, 1))
    assert nodata is not None and nodata.sum() == 8
    with open_scene(tmp_path / "a.png", expected_bands=4) as scene:  # a 4-band model: data
        assert scene.info.bands == 4


def test_float_input_is_read_and_other_types_rejected_with_advice(tmp_path: Path) -> None:
    data = np.array([[[0.25, np.nan], [1.5, 2.0]]], dtype=np.float32)
    with open_scene(make_geotiff(tmp_path / "f.tif", data=data)) as scene:
        assert scene.info.dtype == "float32"
        pixels, _ = scene.read_rows(0, 2)
    np.testing.assert_array_equal(pixels, data)  # NaN stays NaN: the engine marks it no-data
    path = make_geotiff(tmp_path / "i.tif", dtype="int16")
    with pytest.raises(DataError, match="i.tif holds int16.*uint8, uint16, float32"):
        open_scene(path)


def test_scale_pixels() -> None:
    raw8 = np.array([[[0, 255]]], dtype=np.uint8)
    raw16 = np.array([[[0, 65535]]], dtype=np.uint16)
    np.testing.assert_array_equal(scale_pixels(raw8, None), [[[0.0, 1.0]]])
    np.testing.assert_array_equal(scale_pixels(raw16, None), [[[0.0, 1.0]]])
    np.testing.assert_allclose(scale_pixels(raw16, 10000), [[[0.0, 6.5535]]], rtol=1e-6)
    norm = scale_pixels(raw8, normalization={"mean": [0.5], "std": [0.25]})
    np.testing.assert_allclose(norm, [[[-2.0, 2.0]]])


def test_writer_copies_profile_and_is_atomic(tmp_path: Path) -> None:
    src = make_geotiff(tmp_path / "s.tif", height=300, width=260, crs="EPSG:2180")
    # a tiled source: its block size is kept
    tiled = tmp_path / "tiled.tif"
    with rasterio.open(src) as s:
        profile = s.profile | {"tiled": True, "blockxsize": 128, "blockysize": 64}
        with rasterio.open(tiled, "w", **profile) as d:
            d.write(s.read())
    with open_scene(tiled) as scene:
        info = scene.info
    assert info.block_shape == (64, 128)
    out = tmp_path / "out" / "mask.tif"
    out.parent.mkdir()
    writer = RasterWriter(out, info, nodata=255)
    mask = np.random.default_rng(0).integers(0, 5, (1, 300, 260), dtype=np.uint8)
    for r0 in range(0, 300, 70):
        writer.write(mask[:, r0 : r0 + 70], r0)
    assert not out.exists()  # nothing under the final name until commit
    writer.commit()
    with rasterio.open(out) as d:
        np.testing.assert_array_equal(d.read(), mask)
        assert d.crs == info.crs and d.transform == info.transform and d.nodata == 255
        assert d.block_shapes[0] == (64, 128)
    aborted = RasterWriter(tmp_path / "out" / "gone.tif", info)
    aborted.write(mask[:, :10], 0)
    aborted.abort()
    assert sorted(p.name for p in out.parent.iterdir()) == ["mask.tif"]


def test_writer_hands_gdal_whole_block_rows(tmp_path: Path, monkeypatch) -> None:
    # 32-row pieces into 64-row tiles: GDAL must see each row of tiles once, whole (a tile
    # written in pieces is compressed again per piece, and the file grows with dead blocks)
    src = make_geotiff(tmp_path / "s.tif", height=300, width=260)
    with rasterio.open(src) as s:
        profile = s.profile | {"tiled": True, "blockxsize": 128, "blockysize": 64}
        with rasterio.open(tmp_path / "tiled.tif", "w", **profile) as d:
            d.write(s.read())
    with open_scene(tmp_path / "tiled.tif") as scene:
        info = scene.info
    writes: list[tuple[int, int]] = []
    real = RasterWriter._write

    def spy(self, rows: np.ndarray, row0: int) -> None:
        writes.append((row0, rows.shape[1]))
        real(self, rows, row0)

    monkeypatch.setattr(RasterWriter, "_write", spy)
    probs = np.random.default_rng(1).integers(0, 255, (3, 300, 260), dtype=np.uint8)
    writer = RasterWriter(tmp_path / "p.tif", info, count=3, nodata=255)
    for r0 in range(0, 300, 32):
        writer.write(probs[:, r0 : r0 + 32], r0)
    writer.commit()
    assert writes == [(0, 64), (64, 64), (128, 64), (192, 64), (256, 44)]
    with rasterio.open(tmp_path / "p.tif") as d:
        np.testing.assert_array_equal(d.read(), probs)


def test_block_rows_never_lose_rows_out_of_order() -> None:
    rng = np.random.default_rng(0)
    for trial in range(100):
        height, block = int(rng.integers(1, 90)), int(rng.integers(2, 20))
        full = rng.integers(0, 255, (2, height, 3), dtype=np.uint8)
        cuts = sorted({0, height, *rng.integers(0, height, 6).tolist()})
        pieces = list(zip(cuts[:-1], cuts[1:], strict=True))
        if trial % 2:
            rng.shuffle(pieces)
        out = np.zeros_like(full)
        rows = BlockRows(2, block, 3, height)
        ready = [part for a, b in pieces for part in rows.add(full[:, a:b], a)] + rows.flush()
        for part, row0 in ready:
            out[:, row0 : row0 + part.shape[1]] = part
        np.testing.assert_array_equal(out, full)
        if not trial % 2:  # in order: whole block rows only, the last one cut by the scene
            assert all(r % block == 0 and (n == block or r + n == height)
                       for r, n in ((r, p.shape[1]) for p, r in ready))  # fmt: skip


def test_expand_inputs(tmp_path: Path) -> None:
    for name in ("b.tif", "a.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in expand_inputs([tmp_path])] == ["a.png", "b.tif"]
    assert [p.name for p in expand_inputs([str(tmp_path / "*.tif"), tmp_path / "b.tif"])] == [
        "b.tif"
    ]  # duplicates dropped
    with pytest.raises(InputNotFoundError, match="does not exist"):
        expand_inputs([tmp_path / "missing.tif"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputNotFoundError, match="holds no images"):
        expand_inputs([tmp_path / "empty"])
