"""Vector labels: one or more GeoTIFFs plus a polygon file (GeoPackage, GeoJSON, Shapefile).

``root`` holds GeoTIFFs (any band count; each its own CRS) and one vector file whose features
carry a class attribute (``class_field``). Polygons are read once with pyogrio, reprojected to
each raster's CRS and pixel grid, and burnt per tile window on the fly with
``rasterio.features.rasterize`` (pixel centres; where polygons overlap, the later feature in the
file wins). Pixels under no polygon, and the raster's nodata, get ``ignore_index``: unlabelled
land is never trained as background. Tiles under no polygon are left out. Class names come from
``root/classes.json`` (a JSON list of names, or folder.py's ``{"classes": [...]}`` object) or,
without one, from the attribute's sorted unique values.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from satunet.data.base import (
    RGB,
    PathLike,
    Record,
    Sample,
    SegmentationDataset,
    Transform,
    label_lut,
)
from satunet.data.check import CheckReport
from satunet.data.folder import CLASSES_FILE, default_palette
from satunet.data.readers import raster_info
from satunet.data.tiling import Window, tile_grid
from satunet.data.vector_check import (
    Labels,
    Scene,
    check_vector_layout,
    describe_bad,
    find_rasters,
    find_vector,
    map_classes,
    read_classes_file,
    read_labels,
    scene_labels,
)
from satunet.errors import ConfigError, DataError, DatasetNotFoundError, UnknownNameError

log = logging.getLogger(__name__)

SplitBy = Literal["tile", "raster"]


def valid_pixels(path: Path, window: Window) -> np.ndarray:
    """(height, width) bool: pixels valid in at least one band (GDAL's dataset mask)."""
    import rasterio
    from rasterio.windows import Window as RioWindow

    with rasterio.open(path) as src:
        win = RioWindow(window.col, window.row, window.width, window.height)
        return src.dataset_mask(window=win) > 0


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
    return [r for i, r in enumerate(records) if i not in chosen and not _overlaps(r, val)]


def _overlaps(a: Record, others: list[Record]) -> bool:
    wa = a.window
    return any(
        a.image == b.image
        and wa.row < (wb := b.window).row + wb.height
        and wb.row < wa.row + wa.height
        and wa.col < wb.col + wb.width
        and wb.col < wa.col + wa.width
        for b in others
    )


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
            raise DataError(describe_bad(bad, feats.path, self.class_field))
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
            corners = np.array([(w.col, w.row, w.col + w.width, w.row + w.height) for w in windows])
            boxes = shapely.box(*corners.T)
            tile_i, geom_i = shapely.STRtree(scene.geometries).query(boxes, "intersects")
            inner = ~shapely.touches(boxes[tile_i], scene.geometries[geom_i])  # not edge-only
            hit = np.unique(tile_i[inner])
            records += [Record(path, None, windows[i], path.stem) for i in hit]
        if not records:
            raise DataError(
                f"no polygon of {self.vector} falls on any raster in {self.root} after "
                "reprojecting to the rasters' CRS: check that the labels and imagery cover the "
                "same area (and that the vector's CRS is right)."
            )
        return records

    @staticmethod
    def check_layout(report: CheckReport, split: str | None, progress: bool | None) -> None:
        """`satunet data check vector`: :func:`~satunet.data.vector_check.check_vector` with
        the default ``class_field`` and classes.json, folded into ``report``."""
        check_vector_layout(report, split, progress)

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
        raw = burn(
            self.scenes[record.image], record.window, self.tree(record.image), self.ignore_index
        )
        if self.scenes[record.image].masked:
            raw[~valid_pixels(record.image, record.window)] = self.ignore_index
        sample["mask"] = torch.from_numpy(raw.astype(np.int64))
        return sample

    def __getstate__(self) -> dict:
        return self.__dict__ | {"_trees": {}}  # rebuilt in each DataLoader worker
