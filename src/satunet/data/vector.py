"""Vector labels: one or more GeoTIFFs plus a polygon file (GeoPackage, GeoJSON, Shapefile).

Layout: ``root/*.tif`` (any band count, one CRS each, not necessarily the same) and one vector
file in ``root`` whose features carry a class attribute (``class_field``). Polygons are read
once with pyogrio, reprojected to each raster's CRS and then to its pixel grid, and burnt per
tile window on the fly with ``rasterio.features.rasterize`` (pixel centres inside a polygon;
where polygons overlap the later feature in the file wins). Pixels under no polygon get
``ignore_index``: unlabelled land is never trained as background. Tiles under no polygon at all
are left out. Class names come from ``root/classes.json`` (a JSON list of names, or the
``{"classes": [...], "palette": [...]}`` object of :mod:`satunet.data.folder`) or, without one,
from the attribute's sorted unique values.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from satunet.data.base import RGB, PathLike, Record, Sample, SegmentationDataset, Transform
from satunet.data.base import label_lut, natural_key
from satunet.data.folder import CLASSES_FILE, default_palette
from satunet.data.readers import TIFF_SUFFIXES, raster_info
from satunet.data.tiling import Window, tile_grid
from satunet.errors import ConfigError, DataError, DatasetNotFoundError, UnknownNameError

log = logging.getLogger(__name__)

VECTOR_SUFFIXES = (".gpkg", ".geojson", ".shp", ".fgb")
SplitBy = Literal["tile", "raster"]


# --------------------------------------------------------------------------- files


def find_rasters(root: Path) -> list[Path]:
    """The GeoTIFFs directly in ``root``, in natural order."""
    rasters = sorted(
        (p for p in root.iterdir() if p.suffix.lower() in TIFF_SUFFIXES and p.is_file()),
        key=natural_key,
    )
    if not rasters:
        raise DatasetNotFoundError(
            f"{root} holds no GeoTIFF (.tif/.tiff): put the imagery the polygons label there."
        )
    return rasters


def find_vector(root: Path, labels: PathLike | None = None) -> Path:
    """The label file: ``labels`` (relative to ``root`` or absolute), else the only one in root."""
    if labels is not None:
        path = Path(labels) if Path(labels).is_absolute() else root / labels
        if not path.is_file():
            raise DatasetNotFoundError(
                f"vector labels {path} do not exist: give labels= the name of a GeoPackage, "
                f"GeoJSON or Shapefile in {root}."
            )
        return path
    found = sorted(p for p in root.iterdir() if p.suffix.lower() in VECTOR_SUFFIXES)
    if not found:
        raise DatasetNotFoundError(
            f"{root} holds no vector labels ({', '.join(VECTOR_SUFFIXES)}): add the polygon "
            "file there, or name it with labels=."
        )
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise DataError(f"{root} holds several vector files ({names}): choose one with labels=.")
    return found[0]


@dataclass
class Labels:
    """Features of a vector file: fid, geometry (shapely), class attribute value, and CRS."""

    path: Path
    fids: np.ndarray
    geometries: np.ndarray
    values: np.ndarray
    crs: str | None
    fields: tuple[str, ...]


def vector_fields(path: Path, layer: str | int | None = None) -> tuple[str, ...]:
    """Attribute names of a vector layer."""
    import pyogrio

    try:
        return tuple(str(f) for f in pyogrio.read_info(path, layer=layer)["fields"])
    except Exception as e:  # noqa: BLE001 - GDAL errors are many types; re-raised with the path
        raise DataError(f"cannot read vector labels {path}: {e}") from e


def read_labels(path: Path, class_field: str, layer: str | int | None = None) -> Labels:
    """Read geometries and ``class_field`` of every feature (DataError if the field is absent)."""
    import shapely
    from pyogrio import raw

    fields = vector_fields(path, layer)
    if class_field not in fields:
        raise DataError(
            f"{path} has no attribute {class_field!r}; its fields are: "
            f"{', '.join(fields) or '(none)'}. Set class_field= to the one holding the classes."
        )
    try:
        meta, fids, wkb, data = raw.read(path, layer=layer, columns=[class_field], return_fids=True)
    except Exception as e:  # noqa: BLE001
        raise DataError(f"cannot read vector labels {path}: {e}") from e
    geometries = shapely.from_wkb(wkb)
    return Labels(path, np.asarray(fids), geometries, np.asarray(data[0]), meta.get("crs"), fields)


# --------------------------------------------------------------------------- classes


def read_classes_file(root: Path) -> tuple[list[str] | None, list | None]:
    """(names, palette) from ``root/classes.json``, (None, None) without one."""
    path = root / CLASSES_FILE
    if not path.is_file():
        return None, None
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON: {e}") from e
    if isinstance(spec, dict) and isinstance(spec.get("classes"), list):
        return [str(c) for c in spec["classes"]], spec.get("palette")
    if not isinstance(spec, list) or not all(isinstance(c, str) for c in spec):
        raise DataError(
            f'{path} must be a JSON list of class names, e.g. ["forest", "water", "urban"] '
            f"(got {type(spec).__name__}): the attribute's integer values index it, or its "
            "text values name its entries."
        )
    return list(spec), None


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def _numbers(values: np.ndarray) -> bool:
    """Whether every present value is a number (not text)."""
    if values.dtype.kind in "iuf":
        return True
    return all(
        isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in values
    )


def _bad(values: np.ndarray, fids: np.ndarray, where: np.ndarray) -> dict[str, list[int]]:
    """{value as text: fids} for the features selected by ``where``."""
    out: dict[str, list[int]] = {}
    for v, f in zip(values[where], fids[where], strict=True):
        out.setdefault(repr(v) if not _is_missing(v) else "null", []).append(int(f))
    return out


def map_classes(
    values: np.ndarray, fids: np.ndarray, classes: Sequence[str] | None
) -> tuple[tuple[str, ...], np.ndarray, dict[str, list[int]]]:
    """(class names, class id per feature (-1: none), {bad value: fids}).

    With ``classes``, integer values are ids into it and text values are its names; any other
    value is bad. Without, the names are the sorted unique values (as text), ids their rank;
    null values and non-integer numbers are bad.
    """
    missing = np.array([_is_missing(v) for v in values], dtype=bool)
    present = np.flatnonzero(~missing)
    ids = np.full(len(values), -1, dtype=np.int64)
    if _numbers(values[present]):
        nums = values[present].astype(np.float64)
        integral = np.isfinite(nums) & (nums == np.round(nums))
        where, ints = present[integral], nums[integral].astype(np.int64)
        if classes is not None:
            names = tuple(classes)
            known = (ints >= 0) & (ints < len(names))
            ids[where[known]] = ints[known]
        else:
            unique = np.unique(ints)
            names = tuple(str(v) for v in unique)
            ids[where] = np.searchsorted(unique, ints)
    else:  # text names; numbers mixed in are bad values
        names = tuple(classes) if classes is not None else tuple(
            sorted({v for v in values[present] if isinstance(v, str)})
        )
        lookup = {n: i for i, n in enumerate(names)}
        for i in present:
            ids[i] = lookup.get(values[i], -1) if isinstance(values[i], str) else -1
    return names, ids, _bad(values, fids, ids < 0)


def _describe_bad(bad: dict[str, list[int]], path: Path, field: str) -> str:
    shown = "; ".join(
        f"{v} (fid {', '.join(map(str, f[:5]))}{' ...' if len(f) > 5 else ''})"
        for v, f in list(bad.items())[:8]
    )
    return (
        f"{path}: {sum(map(len, bad.values()))} feature(s) have a {field!r} value that is no "
        f"class: {shown}. Class values must be integers (ids into classes.json) or names; fix "
        "those features or classes.json. `satunet data check vector` lists them all."
    )


# --------------------------------------------------------------------------- geometry


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


def to_pixels(geometries: np.ndarray, affine: Any) -> np.ndarray:
    """Geometries in a raster's CRS to its pixel grid (x = column, y = row)."""
    import shapely

    inv = ~affine

    def move(xy: np.ndarray) -> np.ndarray:
        cols = inv.a * xy[:, 0] + inv.b * xy[:, 1] + inv.c
        rows = inv.d * xy[:, 0] + inv.e * xy[:, 1] + inv.f
        return np.column_stack([cols, rows])

    return shapely.transform(geometries, move)


def polygonal(geometries: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Repair invalid geometries and keep their polygon parts (points and lines burn nothing)."""
    import shapely

    present = ~shapely.is_missing(geometries) & ~shapely.is_empty(geometries)
    geometries, ids = geometries[present], ids[present]
    invalid = ~shapely.is_valid(geometries)
    if invalid.any():
        log.warning("repairing %d invalid geometries (shapely.make_valid)", int(invalid.sum()))
        geometries = geometries.copy()
        geometries[invalid] = shapely.make_valid(geometries[invalid])
    parts, index = shapely.get_parts(geometries, return_index=True)
    keep = np.isin(shapely.get_type_id(parts), (3, 6))  # Polygon, MultiPolygon
    return parts[keep], ids[index[keep]]


@dataclass
class Scene:
    """One raster and the label polygons over it, in its pixel grid."""

    path: Path
    height: int
    width: int
    geometries: np.ndarray
    ids: np.ndarray


def scene_labels(path: Path, labels: Labels, ids: np.ndarray) -> Scene:
    """The polygons of ``labels`` over raster ``path``, reprojected to its pixels and clipped."""
    import rasterio
    import shapely

    with rasterio.open(path) as src:
        if src.crs is None or src.transform.is_identity:
            raise DataError(
                f"{path} has no CRS or geotransform: vector labels need georeferenced rasters "
                "(assign one with gdal_edit.py -a_srs / QGIS 'Assign projection')."
            )
        crs, affine, height, width = src.crs, src.transform, src.height, src.width
    if labels.crs is None:
        log.warning("%s has no CRS: assuming %s, the CRS of %s", labels.path, crs, path.name)
    moved = reproject(labels.geometries, labels.crs or crs, crs)
    geoms, gids = polygonal(to_pixels(moved, affine), ids)
    inside = shapely.intersects(geoms, shapely.box(0, 0, width, height))
    return Scene(path, height, width, geoms[inside], gids[inside])


def burn(scene: Scene, window: Window, tree: Any, fill: int) -> np.ndarray:
    """Class ids of ``window`` (``fill`` under no polygon), shape (height, width)."""
    import shapely
    from affine import Affine
    from rasterio.features import rasterize

    box = shapely.box(window.col, window.row, window.col + window.width, window.row + window.height)
    hits = np.sort(tree.query(box, predicate="intersects"))  # file order: later features win
    dtype = np.uint8 if fill <= 255 else np.uint16
    if len(hits) == 0:
        return np.full((window.height, window.width), fill, dtype=dtype)
    shapes = zip(scene.geometries[hits], scene.ids[hits].tolist(), strict=True)
    return rasterize(
        shapes,
        out_shape=(window.height, window.width),
        transform=Affine.translation(window.col, window.row),
        fill=fill,
        dtype=dtype,
    )


# --------------------------------------------------------------------------- splits


def _n_val(fraction: float, n: int, what: str) -> int:
    if n < 2:
        raise ConfigError(f"val_fraction needs at least 2 {what} to split, found {n}")
    return min(max(1, round(fraction * n)), n - 1)


def split_records(
    records: list[Record], split: str, fraction: float, by: SplitBy, seed: int
) -> list[Record]:
    """The ``split`` ("train"/"val") side of a seeded split by tile or by raster.

    By tile, training tiles that overlap a validation tile (the edge tiles flush with the
    raster border, or any tile when stride < tile) are dropped, so no pixel is on both sides.
    """
    if by == "raster":
        stems = sorted({r.group for r in records})
        random.Random(seed).shuffle(stems)
        val = set(stems[: _n_val(fraction, len(stems), "rasters")])
        return [r for r in records if (r.group in val) == (split == "val")]
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    val_idx = sorted(order[: _n_val(fraction, len(records), "tiles")])
    val = [records[i] for i in val_idx]
    if split == "val":
        return val
    chosen = set(val_idx)
    return [
        r
        for i, r in enumerate(records)
        if i not in chosen and not any(_overlap(r, v) for v in val)
    ]


def _overlap(a: Record, b: Record) -> bool:
    wa, wb = a.window, b.window
    assert wa is not None and wb is not None
    return (
        a.image == b.image
        and wa.row < wb.row + wb.height
        and wb.row < wa.row + wa.height
        and wa.col < wb.col + wb.width
        and wb.col < wa.col + wa.width
    )


# --------------------------------------------------------------------------- dataset


class VectorLabels(SegmentationDataset):
    """Tiles of large GeoTIFFs labelled by polygons, rasterised on the fly.

    Args:
        class_field: attribute holding each polygon's class (integer id or name).
        labels: the vector file (name in ``root`` or a path) when root holds several.
        layer: layer of a multi-layer GeoPackage (the first by default).
        classes: class names (overrides ``classes.json`` and the attribute's values).
        ignore_index: mask value of pixels under no polygon (255).
        palette: one RGB per class (else classes.json's, else evenly spaced hues).
        tile_size, stride: the tile grid (tiles cover the whole raster; edge tiles are flush
            with the border). Tiles under no polygon are left out.
        scale: the pixel value that maps to 1.0 (default: the type's maximum, 1 for float).
        val_fraction, split_by, seed: with ``val_fraction > 0``, ``split="train"`` and
            ``split="val"`` are the two sides of a seeded split by tile or by raster; with 0,
            ``split="train"`` is every tile and other splits are errors.
    """

    def __init__(
        self,
        root: PathLike,
        split: Literal["train", "val", "test"] = "train",
        *,
        class_field: str = "class",
        labels: PathLike | None = None,
        layer: str | int | None = None,
        classes: Sequence[str] | None = None,
        ignore_index: int = 255,
        palette: Sequence[RGB] | None = None,
        tile_size: int = 512,
        stride: int | None = None,
        scale: float | None = None,
        in_channels: int | None = None,
        val_fraction: float = 0.0,
        split_by: SplitBy = "tile",
        seed: int = 0,
        transforms: Transform | None = None,
    ) -> None:
        self.root, self.split = Path(root), split
        self._check_split(split, val_fraction, split_by)
        if not self.root.is_dir():
            raise DatasetNotFoundError(
                f"data folder {self.root} does not exist: expected GeoTIFFs and a vector file."
            )
        rasters = find_rasters(self.root)
        self.vector = find_vector(self.root, labels)
        self.class_field = class_field
        file_classes, file_palette = read_classes_file(self.root)
        feats = read_labels(self.vector, class_field, layer)
        names, ids = self._classes(feats, classes if classes is not None else file_classes)
        if not len(names) <= ignore_index <= 65535:
            raise DataError(
                f"ignore_index={ignore_index} is a class id (classes 0..{len(names) - 1}) or "
                "outside 0..65535: choose a value no class uses, such as 255."
            )
        colours = palette if palette is not None else file_palette or default_palette(len(names))
        self.scenes = {p: scene_labels(p, feats, ids) for p in rasters}
        records = self._tiles(tile_size, stride or tile_size)
        if val_fraction > 0:
            records = split_records(records, split, val_fraction, split_by, seed)
        self._trees: dict[Path, Any] = {}
        mapping = {v: v for v in range(len(names))} | {ignore_index: ignore_index}
        super().__init__(
            records,
            classes=names,
            palette=colours,
            ignore_index=ignore_index,
            in_channels=in_channels or raster_info(rasters[0]).bands,
            lut=label_lut(mapping),
            scale=scale,
            transforms=transforms,
        )

    def _check_split(self, split: str, fraction: float, by: str) -> None:
        if split not in ("train", "val", "test"):
            raise UnknownNameError("vector split", split, ("train", "val", "test"))
        if by not in ("tile", "raster"):
            raise UnknownNameError("vector split_by", by, ("tile", "raster"))
        if not 0 <= fraction < 1:
            raise ConfigError(f"val_fraction must be in [0, 1), got {fraction}")
        if split == "test" or (split == "val" and fraction == 0):
            raise DatasetNotFoundError(
                f"vector labels have no {split!r} split of their own: hold out validation tiles "
                "with the dataset option val_fraction (split_by='tile' or 'raster'), or the "
                "trainer's data.val_fraction (by raster)."
            )

    def _classes(
        self, feats: Labels, classes: Sequence[str] | None
    ) -> tuple[tuple[str, ...], np.ndarray]:
        names, ids, bad = map_classes(feats.values, feats.fids, classes)
        if bad:
            raise DataError(_describe_bad(bad, feats.path, self.class_field))
        if len(names) < 2:
            raise DataError(
                f"{feats.path}: {self.class_field!r} holds {len(names)} class(es) {list(names)}; "
                "segmentation needs at least 2. Draw polygons of the other classes (e.g. "
                f"background), or list every class in {self.root / CLASSES_FILE}."
            )
        return names, ids

    def _tiles(self, tile: int, stride: int) -> list[Record]:
        import shapely

        if tile < 1 or stride < 1:
            raise ConfigError(f"tile_size and stride must be >= 1, got {tile} and {stride}")
        records: list[Record] = []
        for path, scene in self.scenes.items():
            if scene.height < tile or scene.width < tile:
                raise DataError(
                    f"{path} is {scene.width}x{scene.height}, smaller than tile_size={tile}: "
                    "use a smaller tile_size."
                )
            if len(scene.geometries) == 0:
                log.warning("no label polygon over %s: it gives no tiles", path.name)
                continue
            windows = tile_grid(scene.height, scene.width, tile, stride, cover=True)
            boxes = shapely.box(
                [w.col for w in windows],
                [w.row for w in windows],
                [w.col + w.width for w in windows],
                [w.row + w.height for w in windows],
            )
            hit = np.unique(shapely.STRtree(scene.geometries).query(boxes, "intersects")[0])
            records += [Record(path, None, windows[i], path.stem) for i in hit]
        if not records:
            raise DataError(
                f"no polygon of {self.vector} falls on any raster in {self.root} after "
                "reprojecting to the rasters' CRS: check that the labels and imagery cover the "
                "same area (and that the vector's CRS is right)."
            )
        return records

    @property
    def labeled(self) -> bool:
        return bool(self.records)

    def tree(self, path: Path) -> Any:
        """The spatial index of a raster's polygons (built on first use, per process)."""
        if path not in self._trees:
            import shapely

            self._trees[path] = shapely.STRtree(self.scenes[path].geometries)
        return self._trees[path]

    def read(self, index: int) -> Sample:
        """Sample ``index`` without transforms: the raster window and its burnt mask."""
        sample = super().read(index)
        record = self.records[index]
        assert record.window is not None and self.ignore_index is not None
        raw = burn(self.scenes[record.image], record.window, self.tree(record.image),
                   self.ignore_index)
        sample["mask"] = torch.from_numpy(raw.astype(np.int64))
        return sample

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_trees"] = {}  # rebuilt in each DataLoader worker
        return state
