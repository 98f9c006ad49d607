"""The sample contract shared by every satunet dataset: records of (image, mask, window, group)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from satunet.data.pixels import DTYPE_SCALE, pixel_scale  # noqa: F401 - DTYPE_SCALE kept here
from satunet.data.readers import RasterReader, natural_key, raster_info  # noqa: F401 - re-export
from satunet.data.tiling import Window
from satunet.errors import ConfigError, DataError

PathLike = str | os.PathLike[str]
Sample = dict[str, torch.Tensor]
Transform = Callable[[Sample], Sample]
RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Record:
    """One sample: an image file, its mask file (None when unlabeled), a window and its group."""

    image: Path
    mask: Path | None
    window: Window | None
    group: str


def label_lut(mapping: dict[int, int]) -> np.ndarray:
    """Raw mask value -> class id table over uint16 values; -1 marks values with no class."""
    lut = np.full(65536, -1, dtype=np.int16)
    for raw, label in mapping.items():
        lut[raw] = label
    return lut


def check_pair_sizes(records: Sequence[Record]) -> None:
    """Refuse a mask whose size is not its image's, from the file headers (nothing is decoded).

    Run when a dataset is built, so misaligned labels never reach training; ``data check``
    reports the same pairs with the same message.
    """
    seen: set[tuple[Path, Path]] = set()
    for record in records:
        if record.mask is None or (record.image, record.mask) in seen:
            continue
        seen.add((record.image, record.mask))
        problem = pair_size_problem(record.image, record.mask)
        if problem:
            raise DataError(
                f"mask {record.mask} {problem}: a mask must have its image's size (labels would "
                "be misaligned). Re-export the pair or remove it; `satunet data check` lists "
                "every such pair."
            )


def pair_size_problem(image: Path, mask: Path) -> str | None:
    """'is WxH but its image NAME is WxH' when the headers of a pair disagree, else None."""
    info, mask_info = raster_info(image), raster_info(mask)
    if (mask_info.height, mask_info.width) == (info.height, info.width):
        return None
    return (
        f"is {mask_info.width}x{mask_info.height} but its image {image.name} is "
        f"{info.width}x{info.height}"
    )


class SegmentationDataset(Dataset):
    """Map-style dataset returning ``{"image": float32 (C, H, W), "mask": int64 (H, W)}``.

    Subclasses find their files and build :class:`Record` s; reading, label mapping, scaling and
    transforms live here so every dataset behaves the same. ``groups[i]`` is the source image id
    of sample i: tiles of one image share it, so a train/val split by group never leaks.
    """

    classes: tuple[str, ...]
    palette: tuple[RGB, ...]
    ignore_index: int | None
    in_channels: int
    # Official archives for `satunet data download` (empty: not downloadable). Each subclass
    # also has a static ``check_layout(report, split, progress)`` for `satunet data check`.
    resources: tuple = ()

    def __init__(
        self,
        records: Sequence[Record],
        *,
        classes: Sequence[str],
        palette: Sequence[RGB],
        ignore_index: int | None,
        in_channels: int,
        lut: np.ndarray,
        scale: float | None = None,
        transforms: Transform | None = None,
        bands: Sequence[int] | None = None,
    ) -> None:
        self.records = list(records)
        check_pair_sizes(self.records)
        self.classes = tuple(classes)
        self.palette = tuple(tuple(int(v) for v in rgb) for rgb in palette)  # type: ignore[misc]
        if len(self.palette) != len(self.classes):
            raise ConfigError(
                f"{len(self.palette)} palette colours for {len(self.classes)} classes: give one "
                "RGB triple per class"
            )
        self.ignore_index = ignore_index
        self.in_channels = in_channels
        self.scale = scale
        self.bands = tuple(int(b) for b in bands) if bands is not None else None
        self.transforms = transforms
        self._lut = lut
        self._reader = RasterReader()

    @property
    def num_classes(self) -> int:
        """Number of classes the model predicts (``ignore_index`` is not one of them)."""
        return len(self.classes)

    @property
    def groups(self) -> list[str]:
        """Source-image id of every sample (tiles of one image share it)."""
        return [r.group for r in self.records]

    @property
    def labeled(self) -> bool:
        """Whether samples carry a "mask" (the official LoveDA test split does not)."""
        return bool(self.records) and self.records[0].mask is not None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        sample = self.read(index)
        return self.transforms(sample) if self.transforms is not None else sample

    def read(self, index: int) -> Sample:
        """Sample ``index`` without transforms (for statistics and checks)."""
        record = self.records[index]
        if self.bands is None:
            array = self._reader.read(record.image, record.window)
        else:
            array = read_bands(self._reader, record.image, record.window, self.bands)
        if array.shape[0] != self.in_channels:
            raise DataError(
                f"{record.image} has {array.shape[0]} bands but this dataset has "
                f"in_channels={self.in_channels}: every image must have the same band count "
                "(drop or add bands, or select them when exporting)."
            )
        sample = {"image": self._to_float(array, record.image)}
        if record.mask is not None:
            raw = self._reader.read_mask(record.mask, record.window)
            if raw.shape != array.shape[1:]:
                raise DataError(
                    f"mask {record.mask} is {raw.shape[1]}x{raw.shape[0]} but image "
                    f"{record.image} is {array.shape[2]}x{array.shape[1]} (WxH): a mask must "
                    "have its image's size. Re-export the pair or remove it."
                )
            sample["mask"] = self._to_labels(raw, record.mask)
        return sample

    def _to_float(self, array: np.ndarray, path: Path) -> torch.Tensor:
        scale = pixel_scale(array.dtype, self.scale, path)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            bad = int(array.size - np.isfinite(array).sum())
            raise DataError(
                f"{path} holds {bad} NaN/inf pixels: a model trained on them diverges. Fill "
                "no-data with a number and mark it in the mask with ignore_index; `satunet data "
                "check` lists every such file."
            )
        # One copy into a fresh float32 array: decoded arrays may be read-only (kept by the
        # reader) and (C, H, W) views of (H, W, C) pixels.
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).div_(scale)

    def _to_labels(self, raw: np.ndarray, path: Path) -> torch.Tensor:
        if raw.dtype not in (np.uint8, np.uint16):
            if raw.min() < 0 or raw.max() > 65535 or not np.array_equal(raw, np.round(raw)):
                raise DataError(
                    f"mask {path} holds {raw.dtype} values outside the integers 0..65535: a "
                    "mask must hold class ids."
                )
            raw = raw.astype(np.uint16)
        labels = self._lut[raw]
        if labels.min() < 0:
            bad = sorted(int(v) for v in np.unique(raw[labels < 0]))[:10]
            valid = sorted(int(v) for v in np.flatnonzero(self._lut >= 0))
            raise DataError(
                f"mask {path} holds values {bad} that are not class ids of this dataset (valid "
                f"raw values: {_ranges(valid)}). Fix the mask, or check the classes / "
                "ignore_index / labels settings; `satunet data check` lists every bad file."
            )
        return torch.from_numpy(labels.astype(np.int64))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({len(self)} samples, {self.num_classes} classes, "
            f"ignore_index={self.ignore_index}, in_channels={self.in_channels})"
        )


def read_bands(
    reader: RasterReader, path: Path, window: Window | None, bands: Sequence[int]
) -> np.ndarray:
    """Bands ``bands`` (1-based, like GDAL) of an image: only those are read from a GeoTIFF."""
    count = raster_info(path).bands
    bad = [b for b in bands if not 1 <= b <= count]
    if bad or not bands:
        raise DataError(
            f"{path} has {count} band(s), numbered 1..{count} like GDAL: cannot select bands "
            f"{list(bands)}; fix the dataset option bands (e.g. bands = [4, 3, 2])"
        )
    if path.suffix.lower() not in (".tif", ".tiff"):
        return reader.read(path, window)[[b - 1 for b in bands]]
    import rasterio
    from rasterio.windows import Window as RioWindow

    win = None if window is None else RioWindow(window.col, window.row, window.width, window.height)
    try:
        with rasterio.open(path) as src:
            return src.read(list(bands), window=win)
    except Exception as e:  # noqa: BLE001 - rasterio/GDAL errors; re-raised with the path
        raise DataError(f"cannot read bands {list(bands)} of {path}: {e}") from e


def _ranges(values: list[int]) -> str:
    """'0-7, 255' for [0..7, 255]."""
    parts: list[str] = []
    start = prev = None
    for v in values + [None]:  # type: ignore[list-item]
        if start is not None and v == prev + 1:
            prev = v
            continue
        if start is not None:
            parts.append(f"{start}" if start == prev else f"{start}-{prev}")
        start = prev = v
    return ", ".join(parts)
