"""Validate a dataset on disk: layout, every file, pairs, sizes, class ids; one report.

Used by ``satunet data check``. Problems are collected, not raised, so one run lists every bad
file; only a missing root is an exception.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from satunet.data.base import natural_key
from satunet.data.readers import SUFFIXES, RasterReader, raster_info
from satunet.data.tiling import Window
from satunet.errors import DataError, DatasetNotFoundError, UnknownNameError

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


def _check_pair(
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


def _pairs_in(
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


def _progress(pairs: list, desc: str, progress: bool | None):  # noqa: ANN202
    from tqdm.auto import tqdm

    return tqdm(pairs, desc=desc, unit="file", disable=None if progress is None else not progress)


def _check_loveda(report: CheckReport, split: str | None, progress: bool | None) -> None:
    from satunet.data.loveda import OFFICIAL_CLASSES, SCENES, SPLITS

    report.classes = {0: "no-data (ignored)"} | {i + 1: c for i, c in enumerate(OFFICIAL_CLASSES)}
    splits = [split] if split else list(SPLITS)
    work: list[tuple[Path, Path | None]] = []
    for s in splits:
        for scene in SCENES.values():
            folder = report.root / SPLITS[s] / scene
            part = Part(s, scene.lower())
            report.parts.append(part)
            if not (folder / "images_png").is_dir():
                part.present = False
                continue
            masks = folder / "masks_png" if s != "test" else None
            work += _pairs_in(report, part, folder / "images_png", masks, (".png",))
    if not any(p.present for p in report.parts):
        report.problem(
            report.root,
            f"holds no LoveDA split ({'/'.join(SPLITS[s] for s in splits)}/Urban|Rural/"
            "images_png): download it with `satunet data download loveda`",
        )
    for image, mask in _progress(work, "checking LoveDA", progress):
        _check_pair(report, image, mask, set(range(8)), 3)


def _check_landcoverai(report: CheckReport, split: str | None, progress: bool | None) -> None:
    from satunet.data.landcoverai import CLASSES, SPLITS, official_tiles

    report.classes = dict(enumerate(CLASSES))
    part = Part("all", "orthophotos")
    report.parts.append(part)
    work: list[tuple[Path, Path | None]] = []
    output = report.root / "output"
    cut = {p.stem for p in output.glob("*.jpg")} if output.is_dir() else set()
    if (report.root / "images").is_dir():
        work = _pairs_in(report, part, report.root / "images", report.root / "masks", (".tif",))
    else:
        part.present = False
    tiles: set[str] = set()
    for image, _ in work:
        try:
            info = raster_info(image)
        except DataError:
            continue  # reported by _check_pair below
        tiles |= {f"{image.stem}_{k}" for k in official_tiles(info.height, info.width)}
    if not work and not cut:
        report.problem(
            report.root,
            "holds neither images/*.tif nor output/*.jpg: download the release with "
            "`satunet data download landcoverai`",
        )
    for s in [split] if split else list(SPLITS):
        listing = report.root / f"{s}.txt"
        ids = listing.read_text().split() if listing.is_file() else []
        split_part = Part(s, "tiles listed", images=len(ids), masks=len(ids), files=False)
        report.parts.append(split_part)
        if not listing.is_file():
            split_part.present = False
            report.problem(listing, "is missing (the official split list)")
            continue
        unknown = [i for i in ids if i not in tiles] if work else []
        if unknown:
            report.problem(
                listing,
                f"lists {len(unknown)} tile(s) the orthophotos do not produce, e.g. "
                f"{', '.join(unknown[:3])}",
            )
        if cut:
            absent = [i for i in ids if i not in cut]
            if absent:
                report.problem(
                    output, f"lacks {len(absent)} tile(s) of {s}.txt (split.py stopped?)"
                )
    if cut and work:
        report.notes.append(f"output/ holds {len(cut)} tiles cut by split.py (not decoded here)")
    elif cut:  # only split.py's tiles are left: check those
        tiles_part = Part("all", "output tiles", images=len(cut))
        report.parts.append(tiles_part)
        for stem in sorted(cut):
            mask = output / f"{stem}_m.png"
            if mask.is_file():
                tiles_part.masks += 1
                work.append((output / f"{stem}.jpg", mask))
            else:
                report.problem(output / f"{stem}.jpg", f"has no mask {mask.name}")
    for image, mask in _progress(work, "checking LandCover.ai", progress):
        _check_pair(report, image, mask, set(range(len(CLASSES))), 3)


def _check_folder(report: CheckReport, split: str | None, progress: bool | None) -> None:
    from satunet.data.folder import CLASSES_FILE

    spec_path = report.root / CLASSES_FILE
    valid: set[int] | None = None
    if spec_path.is_file():
        try:
            spec = json.loads(spec_path.read_text())
            names = list(spec["classes"])
            report.classes = dict(enumerate(names))
            valid = set(range(len(names)))
            if spec.get("ignore_index") is not None:
                valid.add(int(spec["ignore_index"]))
                report.classes[int(spec["ignore_index"])] = "(ignored)"
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            report.problem(spec_path, f"is not a valid classes file ({e})")
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
        work += _pairs_in(report, part, base / "images", masks, SUFFIXES)
    if work:
        try:
            bands = raster_info(work[0][0]).bands
        except DataError:
            bands = None
    for image, mask in _progress(work, "checking folder", progress):
        _check_pair(report, image, mask, valid, bands)


CHECKS = {"loveda": _check_loveda, "landcoverai": _check_landcoverai, "folder": _check_folder}


def check_dataset(
    name: Literal["loveda", "landcoverai", "folder"],
    root: PathLike,
    *,
    split: str | None = None,
    progress: bool | None = None,
) -> CheckReport:
    """Read every file of a dataset and collect what is wrong (see :class:`CheckReport`)."""
    if name not in CHECKS:
        raise UnknownNameError("dataset", name, CHECKS)
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError(
            f"dataset root {root} does not exist: pass the folder holding the data with --root,"
            f" or fetch it with `satunet data download {name} --root {root}`."
        )
    report = CheckReport(name, root, {})
    CHECKS[name](report, split, progress)
    return report
