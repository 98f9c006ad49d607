"""Class raster -> GeoPackage polygons, streamed in row bands and merged across band borders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fakes import make_geotiff
from satunet.data.vectorize import vectorize_classes

pytest.importorskip("pyogrio")
pytest.importorskip("shapely")

CRS = "EPSG:32633"
ORIGIN = (500000.0, 5800000.0)
RES = 2.0  # 4 m² pixels


def class_raster(height: int = 90, width: int = 70, seed: int = 0) -> np.ndarray:
    """Blobby classes 0..3 (smoothed noise), a nodata corner, and a ring spanning many bands."""
    rng = np.random.default_rng(seed)
    noise = rng.random((height // 6 + 2, width // 6 + 2))
    big = np.kron(noise, np.ones((6, 6)))[:height, :width]
    classes = np.digitize(big, [0.3, 0.6, 0.85]).astype(np.uint8)
    classes[4:61, 4:26] = 3  # a frame, so no random class-2 pixel joins the ring
    classes[5:60, 5:25] = 2  # a ring of class 2 over bands 0-3 enclosing class 1
    classes[12:50, 10:20] = 1
    classes[-8:, -8:] = 255
    return classes


def read_layer(path: Path) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    import shapely
    from pyogrio import raw

    meta, _, wkb, (values, names) = raw.read(path)
    return meta, shapely.from_wkb(wkb), values, names


def burn(path: Path, like: Path) -> np.ndarray:
    import rasterio
    from rasterio.features import rasterize

    _, geoms, values, _ = read_layer(path)
    with rasterio.open(like) as src:
        return rasterize(
            zip(geoms, values.tolist(), strict=True),
            out_shape=(src.height, src.width),
            transform=src.transform,
            fill=255,
            dtype=np.uint8,
        )


def test_polygons_rasterise_back_to_the_class_raster(tmp_path: Path) -> None:
    import rasterio
    from rasterio.crs import CRS as RioCRS

    data = class_raster()
    tif = make_geotiff(
        tmp_path / "scene_classes.tif", data=data, crs=CRS, origin=ORIGIN, resolution=RES
    )
    out = tmp_path / "scene.gpkg"
    names = ["water", "forest", "urban", "field"]
    stats = vectorize_classes(tif, out, classes=names, band_rows=16)
    assert stats.bands == 6 and stats.peak_open > 0
    meta, geoms, values, class_names = read_layer(out)
    assert RioCRS.from_user_input(meta["crs"]) == RioCRS.from_user_input(CRS)
    assert meta["geometry_type"] == "Polygon" and stats.polygons == len(geoms)
    assert {names[v] for v in values} == set(class_names) == set(names)
    assert all(names[v] == n for v, n in zip(values, class_names, strict=True))
    burnt = burn(out, tif)
    assert (burnt == data).mean() >= 0.99
    np.testing.assert_array_equal(burnt, data)  # pixel-exact, in fact
    # The ring spans four bands yet is one polygon with one hole (merged across borders).
    import shapely

    x0, y0 = ORIGIN
    inside_ring = shapely.Point(x0 + 7 * RES, y0 - 30 * RES)
    (ring,) = [g for g, v in zip(geoms, values, strict=True) if v == 2 and g.contains(inside_ring)]
    assert len(ring.interiors) == 1 and ring.area == pytest.approx((55 * 20 - 38 * 10) * RES**2)
    total = sum(stats.area.values())
    assert total == pytest.approx(((data != 255).sum()) * RES**2)
    assert not list(tmp_path.glob(".*.tmp*"))  # written atomically, nothing left behind
    with rasterio.open(tif) as src:
        assert src.height > 16  # bands smaller than the raster: merging was exercised


def test_min_area_drops_specks_and_fills_small_holes(tmp_path: Path) -> None:
    data = np.zeros((40, 40), dtype=np.uint8)
    data[20:40, :] = 1
    data[5, 5] = 2  # a 1-pixel speck inside class 0: 4 m², a hole in the class-0 polygon
    data[30:33, 30:33] = 2  # 9 pixels = 36 m²: kept
    tif = make_geotiff(tmp_path / "c.tif", data=data, crs=CRS, origin=ORIGIN, resolution=RES)
    out = tmp_path / "c.gpkg"
    stats = vectorize_classes(tif, out, classes=["a", "b", "c"], min_area=10.0, band_rows=7)
    assert stats.dropped == 1 and stats.holes_filled == 1
    _, geoms, values, _ = read_layer(out)
    assert sorted(values.tolist()) == [0, 1, 2]
    zero = geoms[values.tolist().index(0)]
    assert len(zero.interiors) == 0 and zero.area == pytest.approx(20 * 40 * RES**2)
    simplified = vectorize_classes(
        tif, tmp_path / "s.gpkg", classes=["a", "b", "c"], simplify=1.0, band_rows=7
    )
    assert simplified.polygons == 4


def test_refuses_multiband_input(tmp_path: Path) -> None:
    from satunet.errors import DataError

    tif = make_geotiff(tmp_path / "rgb.tif", crs=CRS)
    with pytest.raises(DataError, match="one band"):
        vectorize_classes(tif, tmp_path / "x.gpkg", classes=["a", "b"])
    assert not (tmp_path / "x.gpkg").exists()
