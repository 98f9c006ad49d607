"""Polygons out: a finished class GeoTIFF to a GeoPackage, streamed in row bands.

``rasterio.features.shapes`` traces each band of ``band_rows`` rows, in pixel coordinates
(integers, so polygons of adjacent bands share their border vertices exactly). A polygon that
reaches the band's bottom row may continue below, so it stays *open*; the next band's polygons
of the same class that start on its top row are unioned with the open ones (shapely), and the
parts of that union that reach the new band's bottom stay open while the rest are finished.
Only the open polygons and one band of pixels are held, so memory does not grow with the
scene height. Finished polygons are cleaned (regions below ``min_area`` dropped, holes below it
filled, which is what a sieve does to enclosed specks), moved to map coordinates, optionally
simplified, and appended to the layer. The file is written under a temporary name beside the
target and renamed when complete. The geometry helpers (affine and CRS moves of shapely
arrays) are shared with :mod:`satunet.data.vector`, which goes the other way.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from satunet.data.base import PathLike
from satunet.errors import ConfigError, DataError
from satunet.files import atomic_path, check_output_file

log = logging.getLogger(__name__)

FLUSH = 10_000  # polygons buffered before an append to the layer
SHAPES_DTYPES = ("uint8", "int16", "uint16", "int32")


@dataclass
class VectorizeStats:
    """What :func:`vectorize_classes` wrote."""

    path: Path
    layer: str
    crs: str | None
    polygons: int = 0
    per_class: Counter = field(default_factory=Counter)
    area: Counter = field(default_factory=Counter)  # map units² per class name
    dropped: int = 0  # regions below min_area
    holes_filled: int = 0
    bands: int = 0
    peak_open: int = 0  # most polygons held open across a band border

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "path": str(self.path),
            "layer": self.layer,
            "crs": self.crs,
            "polygons": self.polygons,
            "per_class": dict(self.per_class),
            "area": {k: float(v) for k, v in self.area.items()},
            "dropped": self.dropped,
            "holes_filled": self.holes_filled,
            "bands": self.bands,
            "peak_open": self.peak_open,
        }


class _LayerWriter:
    """Appends (polygon, class) batches to one GeoPackage layer with pyogrio."""

    def __init__(self, path: Path, layer: str, crs: str | None, names: Sequence[str]) -> None:
        self.path, self.layer, self.crs, self.names = path, layer, crs, names
        self.geoms: list[Any] = []
        self.values: list[int] = []
        self.created = False

    def name(self, value: int) -> str:
        return self.names[value] if 0 <= value < len(self.names) else f"class_{value}"

    def add(self, geoms: Iterable[Any], value: int) -> None:
        for g in geoms:
            self.geoms.append(g)
            self.values.append(value)
        if len(self.geoms) >= FLUSH:
            self.flush()

    def flush(self) -> None:
        import shapely
        from pyogrio import raw

        if self.created and not self.geoms:
            return
        values = np.array(self.values, dtype=np.int32)
        names = np.array([self.name(int(v)) for v in values], dtype=object)
        with warnings.catch_warnings():  # the temporary name does not end in .gpkg
            warnings.filterwarnings("ignore", message=".*extension.*", category=RuntimeWarning)
            raw.write(
                self.path,
                shapely.to_wkb(np.array(self.geoms, dtype=object)),
                field_data=[values, names],
                fields=["class", "class_name"],
                crs=self.crs,
                geometry_type="Polygon",
                driver="GPKG",
                layer=self.layer,
                append=self.created,
            )
        self.created = True
        self.geoms, self.values = [], []


def band_polygons(
    band: np.ndarray, row0: int, nodata: int | None, connectivity: int = 4
) -> dict[int, list[Any]]:
    """Polygons of one band by class value, in scene pixel coordinates (x = col, y = row)."""
    from affine import Affine
    from rasterio.features import shapes
    from shapely.geometry import shape

    mask = None if nodata is None else band != nodata
    out: dict[int, list[Any]] = {}
    for geom, value in shapes(
        band, mask=mask, connectivity=connectivity, transform=Affine.translation(0, row0)
    ):
        out.setdefault(int(value), []).append(shape(geom))
    return out


def merge_band(
    open_polys: dict[int, list[Any]], new: dict[int, list[Any]], row0: int, row1: int, last: bool
) -> tuple[dict[int, list[Any]], dict[int, list[Any]]]:
    """(finished, still open) polygons by class after adding the band [row0, row1).

    Every open polygon reaches row ``row0``; a new polygon joins them only if it starts on that
    row. Polygons that touch only at a corner stay apart (4-connected regions), since the
    union keeps them as separate parts.
    """
    import shapely

    finished: dict[int, list[Any]] = {}
    still: dict[int, list[Any]] = {}
    for value in set(open_polys) | set(new):
        prev = open_polys.get(value, [])
        cur = np.array(new.get(value, []), dtype=object)
        at_top = shapely.bounds(cur)[:, 1] == row0 if len(cur) else np.zeros(0, bool)
        top, rest = list(cur[at_top]), list(cur[~at_top])
        if prev and top:
            joined = list(shapely.get_parts(shapely.union_all(np.array(prev + top, dtype=object))))
        else:
            joined = prev + top
        for poly in joined + rest:
            is_open = not last and shapely.bounds(poly)[3] == row1
            (still if is_open else finished).setdefault(value, []).append(poly)
    return finished, still


def clean(polys: list[Any], min_pixels: float) -> tuple[list[Any], int, int]:
    """(kept polygons, dropped count, holes filled): regions and holes below ``min_pixels``."""
    import shapely

    if min_pixels <= 0:
        return polys, 0, 0
    kept, dropped, filled = [], 0, 0
    for poly in polys:
        if poly.area < min_pixels:
            dropped += 1
            continue
        holes = [r for r in poly.interiors if shapely.Polygon(r).area >= min_pixels]
        if len(holes) < len(poly.interiors):
            filled += len(poly.interiors) - len(holes)
            poly = shapely.Polygon(poly.exterior, holes)
        kept.append(poly)
    return kept, dropped, filled


def apply_affine(geometries: np.ndarray, affine: Any) -> np.ndarray:
    """Geometries with every vertex mapped by ``affine`` (pixel <-> map coordinates)."""
    import shapely

    def move(xy: np.ndarray) -> np.ndarray:
        x = affine.a * xy[:, 0] + affine.b * xy[:, 1] + affine.c
        y = affine.d * xy[:, 0] + affine.e * xy[:, 1] + affine.f
        return np.column_stack([x, y])

    return shapely.transform(geometries, move)


def to_pixels(geometries: np.ndarray, affine: Any) -> np.ndarray:
    """Geometries in a raster's CRS to its pixel grid (x = column, y = row)."""
    return apply_affine(geometries, ~affine)


def reproject(geometries: np.ndarray, src_crs: Any, dst_crs: Any) -> np.ndarray:
    """Geometries from ``src_crs`` to ``dst_crs`` (vertices transformed by GDAL)."""
    import shapely
    from rasterio.crs import CRS
    from rasterio.warp import transform

    src, dst = CRS.from_user_input(src_crs), CRS.from_user_input(dst_crs)
    if src == dst or len(geometries) == 0:
        return geometries

    def move(xy: np.ndarray) -> np.ndarray:
        xs, ys = transform(src, dst, xy[:, 0], xy[:, 1])
        return np.column_stack([xs, ys])

    return shapely.transform(geometries, move)


def to_map(polys: list[Any], affine: Any, simplify: float) -> list[Any]:
    """Pixel-coordinate polygons to the scene's CRS, simplified by ``simplify`` map units."""
    import shapely

    if not polys:
        return []
    geoms = apply_affine(np.array(polys, dtype=object), affine)
    if simplify > 0:
        geoms = shapely.simplify(geoms, simplify, preserve_topology=True)
    keep = (shapely.get_type_id(geoms) == 3) & ~shapely.is_empty(geoms)
    return list(geoms[keep])


def _bands(src: Any, band_rows: int) -> Iterator[tuple[int, int, np.ndarray]]:
    from rasterio.windows import Window

    for row0 in range(0, src.height, band_rows):
        row1 = min(src.height, row0 + band_rows)
        yield row0, row1, src.read(1, window=Window(0, row0, src.width, row1 - row0))


def _open_classes(path: Path, band_rows: int, min_area: float, simplify: float) -> Any:
    import rasterio

    if band_rows < 1:
        raise ConfigError(f"band_rows must be >= 1, got {band_rows}")
    if min_area < 0 or simplify < 0:
        raise ConfigError(f"min_area and simplify must be >= 0, got {min_area} and {simplify}")
    if not path.is_file():
        raise DataError(f"class raster {path} does not exist")
    try:
        src = rasterio.open(path)
    except rasterio.errors.RasterioError as e:
        raise DataError(f"cannot read class raster {path}: {e}") from e
    if src.count != 1 or src.dtypes[0] not in SHAPES_DTYPES:
        src.close()
        raise DataError(
            f"{path} has {src.count} band(s) of {src.dtypes[0]}: a class raster is one band of "
            f"class ids ({', '.join(SHAPES_DTYPES)}), as `satunet predict` writes it."
        )
    return src


def vectorize_classes(
    class_tif: PathLike,
    out_gpkg: PathLike,
    *,
    classes: Sequence[str],
    min_area: float = 0.0,
    simplify: float = 0.0,
    band_rows: int = 1024,
    nodata: int | None = 255,
    layer: str | None = None,
    connectivity: int = 4,
) -> VectorizeStats:
    """Write the regions of a class raster as polygons (fields ``class``, ``class_name``).

    ``min_area`` (map units², m² for a metric CRS) drops smaller regions and fills smaller
    holes; ``simplify`` is a Douglas-Peucker tolerance in map units (topology kept per polygon,
    so neighbours may no longer share edges exactly). Pixels equal to ``nodata`` make no polygon.
    """
    out = check_output_file(out_gpkg, inputs=[class_tif], what="vector output")
    src = _open_classes(Path(class_tif), band_rows, min_area, simplify)
    with src:
        affine = src.transform
        crs = src.crs.to_wkt() if src.crs else None
        if crs is None:
            log.warning("%s has no CRS: the GeoPackage layer will have none", class_tif)
        stats = VectorizeStats(out, layer or out.stem, src.crs.to_string() if src.crs else None)
        min_pixels = min_area / abs(affine.determinant) if min_area > 0 else 0.0
        with atomic_path(out) as tmp:
            tmp.unlink()  # GDAL creates the GeoPackage itself
            writer = _LayerWriter(tmp, stats.layer, crs, classes)
            open_polys: dict[int, list[Any]] = {}
            for row0, row1, band in _bands(src, band_rows):
                new = band_polygons(band, row0, nodata, connectivity)
                done, open_polys = merge_band(open_polys, new, row0, row1, row1 == src.height)
                stats.bands += 1
                stats.peak_open = max(stats.peak_open, sum(map(len, open_polys.values())))
                for value, polys in sorted(done.items()):
                    _write(writer, stats, value, polys, affine, min_pixels, simplify)
            writer.flush()
    log.info("wrote %d polygons to %s", stats.polygons, out)
    return stats


def _write(
    writer: _LayerWriter,
    stats: VectorizeStats,
    value: int,
    polys: list[Any],
    affine: Any,
    min_pixels: float,
    simplify: float,
) -> None:
    kept, dropped, filled = clean(polys, min_pixels)
    geoms = to_map(kept, affine, simplify)
    writer.add(geoms, value)
    name = writer.name(value)
    stats.polygons += len(geoms)
    stats.per_class[name] += len(geoms)
    stats.area[name] += float(sum(g.area for g in geoms))
    stats.dropped += dropped
    stats.holes_filled += filled
