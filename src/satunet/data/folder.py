"""A user's own data: paired ``images/`` and ``masks/`` folders, optionally tiled.

Layout: ``root/images/*`` and ``root/masks/*`` (same file stems), or one such pair of folders per
split under ``root/train``, ``root/val``, ``root/test``. PNG, JPEG and TIFF/GeoTIFF (any band
count, uint8/uint16/float) are read. Class names, ignore value and palette come from arguments
or from ``root/classes.json``: ``{"classes": [...], "ignore_index": 255, "palette": [[r,g,b]]}``.
"""

from __future__ import annotations

import colorsys
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from satunet.data.base import (
    RGB,
    PathLike,
    Record,
    SegmentationDataset,
    Transform,
    label_lut,
)
from satunet.data.check import CheckReport, Part, check_pair, pairs_in, progress_bar
from satunet.data.readers import SUFFIXES, list_rasters, raster_info
from satunet.data.tiling import tile_grid
from satunet.errors import ConfigError, DataError, DatasetNotFoundError, UnknownNameError

CLASSES_FILE = "classes.json"
log = logging.getLogger(__name__)


def read_classes_file(path: Path) -> dict:
    """``classes.json`` checked by type, so ``"classes": "a,b"`` is an error, not 3 classes.

    Used by the dataset and by ``data check``: both refuse the same files with the same words.
    """
    example = '{"classes": ["background", "building"], "ignore_index": 255}'
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not valid JSON ({e}): write it as {example}") from e
    if not isinstance(spec, dict) or "classes" not in spec:
        raise DataError(
            f'{path} must be an object with "classes" (a list of names), and optionally '
            f'"ignore_index" and "palette", e.g. {example}'
        )
    names = spec["classes"]
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise DataError(
            f'{path}: "classes" must be a list of class names such as ["background", "field"],'
            f" got {names!r}"
        )
    if len(set(names)) != len(names):
        raise DataError(f'{path}: "classes" names a class twice: {names}')
    ignore = spec.get("ignore_index")
    if ignore is not None and (not isinstance(ignore, int) or isinstance(ignore, bool)):
        raise DataError(f'{path}: "ignore_index" must be an integer such as 255, got {ignore!r}')
    palette = spec.get("palette")
    if palette is not None and not (
        isinstance(palette, list)
        and all(
            isinstance(c, list)
            and len(c) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in c)
            for c in palette
        )
    ):
        raise DataError(
            f'{path}: "palette" must be a list of [r, g, b] triples of 0..255, got {palette!r}'
        )
    return spec


def default_palette(n: int) -> tuple[RGB, ...]:
    """n distinct colours (evenly spaced hues) for classes given without a palette."""
    rgb = [colorsys.hsv_to_rgb(i / max(n, 1), 0.65, 0.95) for i in range(n)]
    return tuple((round(r * 255), round(g * 255), round(b * 255)) for r, g, b in rgb)


class ImageMaskFolder(SegmentationDataset):
    """Paired image/mask files of a user's own data set (masks hold class ids 0..C-1).

    Args:
        classes: class names, or their number; defaults to ``root/classes.json``.
        ignore_index: mask value skipped by loss and metrics (e.g. 255 for no-data).
        tile_size: cut images into tiles of this size; ``None`` keeps whole images (they must
            then have one size to be batched). Tiles cover every pixel: the last row and
            column of tiles are flush with the image edge and overlap their neighbours.
        stride: step between tiles (``tile_size`` when None).
        scale: the pixel value that maps to 1.0; by default the type's maximum (255 for uint8,
            65535 for uint16), 1 for float. Use e.g. 10000 for Sentinel-2 reflectance.
        in_channels: expected band count; by default the first image's (or of ``bands``).
        bands: the image bands to use, 1-based like GDAL (e.g. ``[4, 3, 2]``); only those are
            read. Stored in checkpoints, so ``satunet predict`` selects them too.
    """

    @staticmethod
    def check_layout(report: CheckReport, split: str | None, progress: bool | None) -> None:
        """Check this dataset's layout under ``report.root`` file by file (``data check``)."""
        check_folder_layout(report, split, progress)

    def __init__(
        self,
        root: PathLike,
        split: Literal["train", "val", "test"] = "train",
        classes: Sequence[str] | int | None = None,
        ignore_index: int | None = None,
        palette: Sequence[RGB] | None = None,
        tile_size: int | None = None,
        stride: int | None = None,
        scale: float | None = None,
        in_channels: int | None = None,
        transforms: Transform | None = None,
        bands: Sequence[int] | None = None,
    ) -> None:
        if split not in ("train", "val", "test"):
            raise UnknownNameError("folder split", split, ("train", "val", "test"))
        self.root, self.split = Path(root), split
        if not self.root.is_dir():
            raise DatasetNotFoundError(
                f"data folder {self.root} does not exist: expected {self.root}/images and "
                f"{self.root}/masks (or {self.root}/{split}/images and masks)."
            )
        base = self.root / split if (self.root / split / "images").is_dir() else self.root
        if base == self.root and split != "train":
            raise DatasetNotFoundError(
                f"{self.root / split / 'images'} does not exist: a folder without split "
                "subfolders is the train split only. Hold out validation tiles with the "
                "trainer's --val-fraction, or create train/ and val/ subfolders."
            )
        names, ignore, colours = self._class_info(classes, ignore_index, palette)
        images = self._images(base / "images")
        records = self._pair(images, base / "masks")
        if bands is not None and (
            isinstance(bands, str)
            or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in bands)
            or not bands
        ):
            raise ConfigError(
                f"bands must be 1-based band numbers such as [4, 3, 2], got {bands!r}"
            )
        if in_channels is None:
            in_channels = len(bands) if bands is not None else raster_info(images[0]).bands
        if tile_size is not None:
            records = self._tile(records, tile_size, stride or tile_size)
        mapping = {v: v for v in range(len(names))}
        if ignore is not None:
            mapping[ignore] = ignore
        super().__init__(
            records,
            classes=names,
            palette=colours,
            ignore_index=ignore,
            in_channels=in_channels,
            lut=label_lut(mapping),
            scale=scale,
            transforms=transforms,
            bands=bands,
        )

    def _class_info(
        self,
        classes: Sequence[str] | int | None,
        ignore_index: int | None,
        palette: Sequence[RGB] | None,
    ) -> tuple[tuple[str, ...], int | None, tuple[RGB, ...]]:
        path = self.root / CLASSES_FILE
        spec = read_classes_file(path) if path.is_file() else {}
        classes = classes if classes is not None else spec.get("classes")
        if classes is None:
            raise DataError(
                f"no class names for {self.root}: pass classes=[...] (or their number), or "
                f'write {path} as {{"classes": ["background", "building"], "ignore_index": 255}}.'
            )
        if isinstance(classes, str | bytes) or isinstance(classes, bool):
            raise ConfigError(
                f"classes must be a list of class names such as ['background', 'field'] or "
                f"their number, got {classes!r}"
            )
        names = (
            tuple(f"class_{i}" for i in range(classes))
            if isinstance(classes, int)
            else tuple(str(c) for c in classes)
        )
        if len(names) < 2:
            raise DataError(f"{self.root}: segmentation needs at least 2 classes, got {names}")
        ignore = ignore_index if ignore_index is not None else spec.get("ignore_index")
        if ignore is not None and not (len(names) <= int(ignore) <= 65535):
            raise DataError(
                f"ignore_index={ignore} is a class id of {self.root} (classes 0..{len(names) - 1})"
                " or outside 0..65535: choose a value no class uses, such as 255."
            )
        colours = palette if palette is not None else spec.get("palette")
        if colours is None:
            colours = default_palette(len(names))
        if len(colours) != len(names) or any(len(c) != 3 for c in colours):
            raise DataError(
                f"palette for {self.root} must have one [r, g, b] per class ({len(names)}), got "
                f"{len(colours)} entries"
            )
        return names, None if ignore is None else int(ignore), tuple(tuple(c) for c in colours)

    @staticmethod
    def _images(folder: Path) -> list[Path]:  # noqa: D401
        if not folder.is_dir():
            raise DatasetNotFoundError(
                f"{folder} does not exist: put the images there and their masks, with the same "
                f"file names, in {folder.parent / 'masks'}."
            )
        images, ignored = list_rasters(folder)
        if ignored:
            log.info("%s: ignored %s (not images)", folder, ", ".join(p.name for p in ignored))
        if not images:
            raise DatasetNotFoundError(
                f"{folder} holds no images ({', '.join(SUFFIXES)}): add some or fix --root."
            )
        return images

    @staticmethod
    def _pair(images: list[Path], mask_dir: Path) -> list[Record]:
        if not mask_dir.is_dir():  # unlabeled data (prediction): samples have no "mask"
            return [Record(image, None, None, image.stem) for image in images]
        masks = {p.stem: p for p in list_rasters(mask_dir)[0]}
        missing = [image.name for image in images if image.stem not in masks]
        if missing:
            raise DataError(
                f"{len(missing)} image(s) have no mask with the same name in {mask_dir}: "
                f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}. Add the masks or "
                "remove those images."
            )
        return [Record(image, masks[image.stem], None, image.stem) for image in images]

    @staticmethod
    def _tile(records: list[Record], tile: int, stride: int) -> list[Record]:
        if tile < 1 or stride < 1:
            raise ConfigError(f"tile_size and stride must be >= 1, got {tile} and {stride}")
        tiled: list[Record] = []
        for record in records:
            info = raster_info(record.image)
            if info.height < tile or info.width < tile:
                raise DataError(
                    f"{record.image} is {info.width}x{info.height}, smaller than tile_size="
                    f"{tile}: use a smaller tile_size, or tile_size=None."
                )
            windows = tile_grid(info.height, info.width, tile, stride, cover=True)
            tiled += [Record(record.image, record.mask, w, record.group) for w in windows]
        return tiled


def check_folder_layout(report: CheckReport, split: str | None, progress: bool | None) -> None:
    """Check the official layout under ``report.root`` file by file (``satunet data check``)."""

    spec_path = report.root / CLASSES_FILE
    valid: set[int] | None = None
    if spec_path.is_file():
        try:
            spec = read_classes_file(spec_path)
            names = spec["classes"]
            report.classes = dict(enumerate(names))
            valid = set(range(len(names)))
            if len(names) < 2:
                report.problem(spec_path, f"names {len(names)} class: segmentation needs 2+")
            ignore = spec.get("ignore_index")
            if ignore is not None:
                if not len(names) <= ignore <= 65535:
                    report.problem(spec_path, f"ignore_index={ignore} is a class id or > 65535")
                valid.add(ignore)
                report.classes[ignore] = "(ignored)"
            palette = spec.get("palette")
            if palette is not None and len(palette) != len(names):
                report.problem(spec_path, f"palette has {len(palette)} colours, not {len(names)}")
        except DataError as e:
            report.problem(spec_path, str(e).removeprefix(f"{spec_path}: "))
    else:
        report.notes.append(f"no {CLASSES_FILE}: class ids were not range-checked")
    splits = [split] if split else ["train", "val", "test"]
    bases = [(s, report.root / s) for s in splits if (report.root / s / "images").is_dir()]
    if not bases:
        bases = [("train", report.root)] if (report.root / "images").is_dir() else []
    if not bases:
        report.problem(report.root, "holds no images/ folder (nor train|val|test/images)")
    work: list[tuple[Path, Path | None]] = []
    bands: int | None = None
    for s, base in bases:
        part = Part(s, "-")
        report.parts.append(part)
        masks = base / "masks" if (base / "masks").is_dir() else None
        work += pairs_in(report, part, base / "images", masks, SUFFIXES)
    if work:
        try:
            bands = raster_info(work[0][0]).bands
        except DataError:
            bands = None
    for image, mask in progress_bar(work, "checking folder", progress):
        check_pair(report, image, mask, valid, bands)
