"""Validate a dataset on disk: layout, every file, pairs, sizes, class ids; one report.

Used by ``satunet data check``; each dataset module describes its own layout with these parts. Problems are collected, not raised, so one run lists every bad
file; only a missing root is an exception.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from satunet.data.base import natural_key
from satunet.data.readers import RasterReader, raster_info
from satunet.data.tiling import Window
from satunet.errors import DataError

PathLike = str | os.PathLike[str]
STRIP = 1024  # rows per read of a large TIFF, so a 9000x9500 orthophoto never sits in memory


@dataclass
class Part:
    """One folder of pairs (a split, and a scene for LoveDA) and what was found there."""

    split: str
    scene: str
    images: int = 0
    masks: int = 0
    present: bool = True
    files: bool = True  # False for a split list, whose entries are not files of their own


@dataclass
class CheckReport:
    """Everything ``satunet data check`` prints: counts, sizes, class histogram, problems."""

    dataset: str
    root: Path
    classes: dict[int, str]
    parts: list[Part] = field(default_factory=list)
    sizes: Counter = field(default_factory=Counter)
    histogram: Counter = field(default_factory=Counter)
    problems: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    @property
    def pairs(self) -> int:
        """Image/mask pairs found (images alone for unlabeled splits are not pairs)."""
        return sum(min(p.images, p.masks) for p in self.parts if p.files)

    def problem(self, path: Path | str, message: str) -> None:
        """Record a problem with the file or folder it concerns."""
        self.problems.append((str(path), message))

    def as_dict(self) -> dict:
        """JSON-ready form (for ``--format json``)."""
        total = sum(self.histogram.values())
        return {
            "dataset": self.dataset,
            "root": str(self.root),
            "ok": self.ok,
            "pairs": self.pairs,
            "parts": [vars(p) for p in self.parts],
            "sizes": {f"{w}x{h}": n for (h, w), n in sorted(self.sizes.items())},
            "histogram": [
                {
                    "value": v,
                    "class": self.classes.get(v, "(not a class)"),
                    "pixels": n,
                    "share": n / total if total else 0.0,
                }
                for v, n in sorted(self.histogram.items())
            ],
            "problems": [{"path": p, "problem": m} for p, m in self.problems],
            "notes": self.notes,
        }


def _strips(path: Path, reader: RasterReader):  # noqa: ANN202 - generator of arrays
    """Pixels of a file as (C, rows, W) arrays: PNG/JPEG whole, TIFF by strips of rows."""
    if path.suffix.lower() not in (".tif", ".tiff"):
        yield reader.read(path)
        return
    info = raster_info(path)
    for row in range(0, info.height, STRIP):
        yield reader.read(path, Window(row, 0, min(STRIP, info.height - row), info.width))


def _reason(error: DataError) -> str:
    """The decoder's own words when there are some (the report already names the file)."""
    cause = error.__cause__
    return f"cannot be read: {cause} (corrupt or truncated: replace it)" if cause else str(error)


def check_pair(
    report: CheckReport,
    image: Path,
    mask: Path | None,
    valid: set[int] | None,
    bands: int | None,
) -> None:
    reader = RasterReader()
    try:
        info = raster_info(image)
        for _ in _strips(image, reader):  # decode everything: truncation shows up here
            pass
    except DataError as e:
        report.problem(image, _reason(e))
        return
    if bands is not None and info.bands != bands:
        report.problem(image, f"has {info.bands} bands, expected {bands}")
    report.sizes[(info.height, info.width)] += 1
    if mask is None:
        return
    try:
        mask_info = raster_info(mask)
        if (mask_info.height, mask_info.width) != (info.height, info.width):
            report.problem(
                mask,
                f"is {mask_info.width}x{mask_info.height} but its image {image.name} is "
                f"{info.width}x{info.height}",
            )
            return
        counts: Counter = Counter()
        for strip in _strips(mask, reader):
            if strip.shape[0] != 1 and not (
                strip.shape[0] in (3, 4) and (strip[1:3] == strip[0]).all()
            ):  # grey masks saved as RGB(A) are fine; colour-coded ones are not
                report.problem(
                    mask,
                    f"has {strip.shape[0]} bands that differ: a mask holds one class id "
                    "per pixel (convert colour-coded masks to class ids)",
                )
                return
            values = strip[0]
            if values.dtype.kind not in "ui" or (values.dtype.kind == "i" and values.min() < 0):
                report.problem(mask, f"holds {values.dtype} values that are not class ids >= 0")
                return
            for v, n in enumerate(np.bincount(values.ravel())):
                if n:
                    counts[v] += int(n)
    except DataError as e:
        report.problem(mask, _reason(e))
        return
    if valid is not None:
        bad = sorted(v for v in counts if v not in valid)
        if bad:
            report.problem(
                mask,
                f"holds values {bad[:10]} outside the class ids {sorted(valid)} "
                f"({sum(counts[v] for v in bad)} pixels)",
            )
    report.histogram.update(counts)


def pairs_in(
    report: CheckReport,
    part: Part,
    image_dir: Path,
    mask_dir: Path | None,
    suffixes: tuple[str, ...],
) -> list[tuple[Path, Path | None]]:
    """Pair images with same-named masks; orphans on either side are problems."""
    images = sorted(
        (p for p in image_dir.iterdir() if p.suffix.lower() in suffixes), key=natural_key
    )
    part.images = len(images)
    if not images:
        report.problem(image_dir, "holds no images")
    if mask_dir is None:
        return [(p, None) for p in images]
    if not mask_dir.is_dir():
        report.problem(mask_dir, "is missing: every image needs a mask with the same name")
        return []
    masks = {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() in suffixes}
    part.masks = len(masks)
    stems = {p.stem for p in images}
    for p in images:
        if p.stem not in masks:
            report.problem(p, f"has no mask {p.stem}.* in {mask_dir}")
    for stem, m in sorted(masks.items()):
        if stem not in stems:
            report.problem(m, f"has no image {stem}.* in {image_dir}")
    return [(p, masks[p.stem]) for p in images if p.stem in masks]


def progress_bar(pairs: list, desc: str, progress: bool | None):  # noqa: ANN202
    from tqdm.auto import tqdm

    return tqdm(pairs, desc=desc, unit="file", disable=None if progress is None else not progress)
