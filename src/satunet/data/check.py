"""Validate a dataset on disk: layout, every file, pairs, sizes, class ids; one report.

Used by ``satunet data check``; each dataset module describes its own layout with these parts.
Problems are collected, not raised, so one run lists every bad file (a missing root too). Files
are listed by :func:`~satunet.data.readers.list_rasters`, the rule the datasets use, and each
pair gets the checks the datasets make (sizes, bands, finite pixels, class ids), so a dataset
that passes the check also loads.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from satunet.data.base import pair_size_problem
from satunet.data.readers import RasterReader, list_rasters, raster_info
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
    ignored: list[str] = field(default_factory=list)  # files in data folders nothing reads
    tile: int | None = None  # the training tile: smaller pairs are problems

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
            "ignored": self.ignored,
            "tile": self.tile,
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
    """Read one pair whole and record what the dataset would refuse, naming the file."""
    reader = RasterReader()
    try:
        info = raster_info(image)
    except DataError as e:
        report.problem(image, _reason(e))
        return
    usable_mask = mask is not None and _sizes_match(report, image, mask)  # headers, as datasets
    try:
        bad = 0
        for strip in _strips(image, reader):  # decode everything: truncation shows up here
            if strip.dtype.kind == "f":
                bad += int(strip.size - np.isfinite(strip).sum())
    except DataError as e:
        report.problem(image, _reason(e))
        return
    if bad:
        report.problem(image, f"holds {bad} NaN/inf pixels ({NON_FINITE_HINT})")
    if bands is not None and info.bands != bands:
        report.problem(image, f"has {info.bands} bands, expected {bands}")
    if report.tile is not None and min(info.height, info.width) < report.tile:
        report.problem(
            image,
            f"is {info.width}x{info.height}, smaller than the training tile {report.tile}: "
            "use a smaller tile_size / --tile, or remove the pair",
        )
    report.sizes[(info.height, info.width)] += 1
    if not usable_mask:
        return
    try:
        counts = _mask_counts(report, mask, reader)
    except DataError as e:
        report.problem(mask, _reason(e))
        return
    if counts is None:
        return
    if valid is not None:
        bad_values = sorted(v for v in counts if v not in valid)
        if bad_values:
            report.problem(
                mask,
                f"holds values {bad_values[:10]} outside the class ids {sorted(valid)} "
                f"({sum(counts[v] for v in bad_values)} pixels)",
            )
    report.histogram.update(counts)


def _sizes_match(report: CheckReport, image: Path, mask: Path) -> bool:
    """False (with the problem recorded) when the mask's header is unreadable or another size."""
    try:
        problem = pair_size_problem(image, mask)
    except DataError as e:
        report.problem(mask, _reason(e))
        return False
    if problem:
        report.problem(mask, problem)
    return problem is None


NON_FINITE_HINT = "fill no-data with a number and mark it in the mask with ignore_index"


def _mask_counts(report: CheckReport, mask: Path, reader: RasterReader) -> Counter | None:
    """Pixel count of every mask value, or None after recording why the mask is unusable."""
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
            return None
        values = strip[0]
        if values.dtype not in (np.uint8, np.uint16):
            # The dataset's rule: any type holding only the integers 0..65535 is fine.
            if not (
                np.isfinite(values).all()
                and values.min() >= 0
                and values.max() <= 65535
                and np.array_equal(values, np.round(values))
            ):
                report.problem(
                    mask, f"holds {values.dtype} values outside the integers 0..65535 (class ids)"
                )
                return None
            values = values.astype(np.uint16)
        for v, n in enumerate(np.bincount(values.ravel())):
            if n:
                counts[v] += int(n)
    return counts


def pairs_in(
    report: CheckReport,
    part: Part,
    image_dir: Path,
    mask_dir: Path | None,
    suffixes: tuple[str, ...],
) -> list[tuple[Path, Path | None]]:
    """Pair images with same-named masks; orphans on either side are problems."""
    images, ignored = list_rasters(image_dir, suffixes)
    _ignore(report, ignored, suffixes)
    part.images = len(images)
    if not images:
        report.problem(image_dir, "holds no images")
    if mask_dir is None:
        return [(p, None) for p in images]
    if not mask_dir.is_dir():
        report.problem(mask_dir, "is missing: every image needs a mask with the same name")
        return []
    found, ignored = list_rasters(mask_dir, suffixes)
    _ignore(report, ignored, suffixes)
    masks = {p.stem: p for p in found}
    part.masks = len(masks)
    stems = {p.stem for p in images}
    for p in images:
        if p.stem not in masks:
            report.problem(p, f"has no mask {p.stem}.* in {mask_dir}")
    for stem, m in sorted(masks.items()):
        if stem not in stems:
            report.problem(m, f"has no image {stem}.* in {image_dir}")
    return [(p, masks[p.stem]) for p in images if p.stem in masks]


def _ignore(report: CheckReport, ignored: list[Path], suffixes: tuple[str, ...]) -> None:
    """Say which files of a data folder no loader reads (never silently skipped)."""
    if not ignored:
        return
    report.ignored += [str(p) for p in ignored]
    names = ", ".join(p.name for p in ignored[:5]) + (" ..." if len(ignored) > 5 else "")
    report.notes.append(
        f"{len(ignored)} entr{'y' if len(ignored) == 1 else 'ies'} of {ignored[0].parent} "
        f"ignored (not {'/'.join(suffixes)} files): {names}"
    )


def progress_bar(pairs: list, desc: str, progress: bool | None):  # noqa: ANN202
    from tqdm.auto import tqdm

    return tqdm(pairs, desc=desc, unit="file", disable=None if progress is None else not progress)
