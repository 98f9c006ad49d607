"""Vector label files: find, read, map classes, put onto rasters; and check them.

The reading half is shared with :class:`satunet.data.vector.VectorLabels`, so the dataset and
``satunet data check vector`` refuse the same files with the same words. The check collects
problems (what stops training: a missing attribute, unknown class values, no polygon over any
raster, an unreadable or ungeoreferenced raster) instead of raising, so one run lists them all;
CRS mismatches (the dataset reprojects) and invalid geometries (the dataset repairs them with
``shapely.make_valid``) are reported as findings that do not fail the check. Only a missing
root or vector file is an exception.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from satunet.data.base import PathLike, natural_key
from satunet.data.check import CheckReport
from satunet.data.folder import CLASSES_FILE
from satunet.data.readers import TIFF_SUFFIXES
from satunet.data.vectorize import reproject, to_pixels
from satunet.errors import DataError, DatasetNotFoundError

log = logging.getLogger(__name__)

VECTOR_SUFFIXES = (".gpkg", ".geojson", ".shp", ".fgb")


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
        path = root / labels  # an absolute labels replaces root
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
    return values.dtype.kind in "iuf" or all(
        isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in values
    )


def _bad(values: np.ndarray, fids: np.ndarray, where: np.ndarray) -> dict[str, list[int]]:
    """{value as text: fids} for the features selected by ``where``."""
    out: dict[str, list[int]] = {}
    for v, f in zip(values[where], fids[where], strict=True):
        v = v.item() if isinstance(v, np.generic) else v  # 7, not np.int64(7)
        out.setdefault("null" if _is_missing(v) else repr(v), []).append(int(f))
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
        names = (
            tuple(classes)
            if classes is not None
            else tuple(sorted({v for v in values[present] if isinstance(v, str)}))
        )
        lookup = {n: i for i, n in enumerate(names)}
        for i in present:
            ids[i] = lookup.get(values[i], -1) if isinstance(values[i], str) else -1
    return names, ids, _bad(values, fids, ids < 0)


def describe_bad(bad: dict[str, list[int]], path: Path, field: str) -> str:
    shown = "; ".join(
        f"{v} (fid {', '.join(map(str, f[:5]))}{' ...' if len(f) > 5 else ''})"
        for v, f in list(bad.items())[:8]
    )
    return (
        f"{path}: {sum(map(len, bad.values()))} feature(s) have a {field!r} value that is no "
        f"class: {shown}. Class values must be integers (ids into classes.json) or names; fix "
        "those features or classes.json. `satunet data check vector` lists them all."
    )


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
    masked: bool = False  # the raster has nodata or a mask: those pixels are ignored


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
        masked = any(rasterio.enums.MaskFlags.all_valid not in f for f in src.mask_flag_enums)
    if labels.crs is None:
        log.warning("%s has no CRS: assuming %s, the CRS of %s", labels.path, crs, path.name)
    moved = reproject(labels.geometries, labels.crs or crs, crs)
    geoms, gids = polygonal(to_pixels(moved, affine), ids)
    inside = shapely.intersects(geoms, shapely.box(0, 0, width, height))
    return Scene(path, height, width, geoms[inside], gids[inside], masked)


MAX_LISTED = 100  # invalid geometries listed by fid (the count is always complete)


@dataclass
class VectorReport:
    """Everything ``satunet data check vector`` prints."""

    root: Path
    vector: Path
    class_field: str
    fields: tuple[str, ...] = ()
    features: int = 0
    vector_crs: str | None = None
    classes: tuple[str, ...] = ()
    rasters: list[dict[str, Any]] = field(default_factory=list)
    crs_mismatches: list[dict[str, str]] = field(default_factory=list)
    invalid_count: int = 0
    invalid: list[tuple[int, str]] = field(default_factory=list)
    unknown: dict[str, list[int]] = field(default_factory=dict)
    problems: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing stops training (CRS mismatches and invalid geometries do not)."""
        return not self.problems

    def problem(self, path: Path | str, message: str) -> None:
        """Record a problem with the file it concerns."""
        self.problems.append((str(path), message))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (for ``--format json``)."""
        return {
            "root": str(self.root),
            "vector": str(self.vector),
            "ok": self.ok,
            "class_field": self.class_field,
            "fields": list(self.fields),
            "features": self.features,
            "vector_crs": self.vector_crs,
            "classes": list(self.classes),
            "rasters": self.rasters,
            "crs_mismatches": self.crs_mismatches,
            "invalid_geometries": {
                "count": self.invalid_count,
                "listed": [{"fid": f, "reason": r} for f, r in self.invalid],
            },
            "unknown_classes": [{"value": v, "fids": f} for v, f in self.unknown.items()],
            "problems": [{"path": p, "problem": m} for p, m in self.problems],
            "notes": self.notes,
        }


def _check_geometries(report: VectorReport, labels: Labels) -> None:
    import shapely

    geoms = labels.geometries
    empty = shapely.is_missing(geoms) | shapely.is_empty(geoms)
    if empty.any():
        report.notes.append(f"{int(empty.sum())} feature(s) have no geometry and label nothing")
    invalid = np.flatnonzero(~empty & ~shapely.is_valid(geoms))
    report.invalid_count = len(invalid)
    reasons = shapely.is_valid_reason(geoms[invalid[:MAX_LISTED]])
    report.invalid = [(int(labels.fids[i]), str(r)) for i, r in zip(invalid, reasons, strict=False)]
    if len(invalid):
        report.notes.append(
            f"{len(invalid)} invalid geometr{'y' if len(invalid) == 1 else 'ies'} (repaired "
            "with shapely.make_valid when training; fix them in QGIS with 'Fix geometries')"
        )


def _check_classes(
    report: VectorReport, labels: Labels, classes: Sequence[str] | None
) -> np.ndarray:
    names, ids, bad = map_classes(labels.values, labels.fids, classes)
    report.classes, report.unknown = names, bad
    if bad:
        n = sum(map(len, bad.values()))
        shown = ", ".join(list(bad)[:10])
        report.problem(
            labels.path,
            f"{n} feature(s) have {report.class_field!r} values that are no class: {shown}",
        )
    if len(names) < 2:
        report.problem(labels.path, f"{len(names)} class(es) {list(names)}: segmentation needs 2+")
    return ids


def _check_raster(report: VectorReport, path: Path, labels: Labels, ids: np.ndarray) -> int:
    """Coverage of one raster; returns how many label polygons fall on it."""
    import rasterio
    import shapely
    from rasterio.crs import CRS

    try:
        with rasterio.open(path) as src:
            crs = src.crs
        scene = scene_labels(path, labels, ids)
    except (DataError, rasterio.errors.RasterioError) as e:
        report.problem(path, str(e))
        return 0
    if labels.crs is not None and CRS.from_user_input(labels.crs) != crs:
        report.crs_mismatches.append(
            {"raster": str(path), "raster_crs": str(crs), "vector_crs": str(labels.crs)}
        )
    frame = shapely.box(0, 0, scene.width, scene.height)
    covered = shapely.intersection(shapely.union_all(scene.geometries), frame).area
    share = 1.0 - covered / (scene.width * scene.height)
    report.rasters.append(
        {
            "path": str(path),
            "crs": str(crs),
            "size": f"{scene.width}x{scene.height}",
            "polygons": int(len(scene.geometries)),
            "unlabelled_share": round(float(share), 6),
        }
    )
    if len(scene.geometries) == 0:
        report.notes.append(f"no label polygon falls on {path.name}: it gives no training tiles")
    return len(scene.geometries)


def check_vector(
    root: PathLike,
    *,
    class_field: str = "class",
    labels: PathLike | None = None,
    layer: str | int | None = None,
    classes: Sequence[str] | None = None,
) -> VectorReport:
    """Check a vector-labelled data folder (see :mod:`satunet.data.vector`); one report."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError(f"data folder {root} does not exist")
    report = VectorReport(root, find_vector(root, labels), class_field)
    report.fields = vector_fields(report.vector, layer)
    if class_field not in report.fields:
        report.problem(
            report.vector,
            f"no attribute {class_field!r}; fields: {', '.join(report.fields) or '(none)'}",
        )
        return report
    feats = read_labels(report.vector, class_field, layer)
    report.features, report.vector_crs = len(feats.fids), feats.crs
    if feats.crs is None:
        report.notes.append(f"{report.vector.name} has no CRS: assumed to be each raster's")
    _check_geometries(report, feats)
    try:
        file_classes, _ = read_classes_file(root)
    except DataError as e:
        report.problem(root, str(e))
        file_classes = None
    ids = _check_classes(report, feats, classes if classes is not None else file_classes)
    try:
        rasters = find_rasters(root)
    except DatasetNotFoundError as e:
        report.problem(root, str(e))
        return report
    on_rasters = sum(_check_raster(report, p, feats, ids) for p in rasters)
    if on_rasters == 0 and len(report.rasters) == len(rasters):
        report.problem(report.vector, "no polygon falls on any raster (after reprojection)")
    for m in report.crs_mismatches:
        report.notes.append(
            f"{Path(m['raster']).name} is in {m['raster_crs']}, the labels in "
            f"{m['vector_crs']}: polygons are reprojected to the raster's CRS"
        )
    return report


def check_vector_layout(report: CheckReport, split: str | None, progress: bool | None) -> None:
    """:func:`check_vector` with its defaults, folded into a registry :class:`CheckReport`."""
    del split, progress  # one label file and its rasters: no splits, and quick to check
    try:
        found = check_vector(report.root)
    except (DatasetNotFoundError, DataError) as e:
        report.problem(report.root, str(e))
        return
    report.classes = dict(enumerate(found.classes))
    report.problems += found.problems
    for r in found.rasters:
        report.notes.append(
            f"{Path(r['path']).name} ({r['crs']}, {r['size']}): {r['polygons']} label polygons,"
            f" {r['unlabelled_share']:.1%} unlabelled"
        )
    report.notes += found.notes
    report.notes += [f"invalid geometry fid {fid}: {reason}" for fid, reason in found.invalid]
