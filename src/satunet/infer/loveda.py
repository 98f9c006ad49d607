"""The LoveDA test-server submission: class order, file checks and the flat zip."""

from __future__ import annotations

import re
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from satunet.checkpoint import ModelInfo
from satunet.data.loveda import OFFICIAL_CLASSES
from satunet.errors import ConfigError, DataError
from satunet.files import PathLike, atomic_path

LOVEDA_TEST_IMAGES = 1796  # official LoveDA test split: 820 urban + 976 rural
LOVEDA_SIZE = 1024


def submission_classes(info: ModelInfo) -> list[int]:
    """Model class indices in LoveDA submission order (values 0..6): background..agriculture.

    Matched by class name when the checkpoint has names (a no-data class is left out); else a
    7-class model maps one to one and an 8-class model with no-data as class 0 drops it.
    """
    names = [n.lower() for n in info.classes] if info.classes else None
    aliases = {"agricultural": "agriculture"}
    if names:
        names = [aliases.get(n, n) for n in names]
        if all(c in names for c in OFFICIAL_CLASSES):
            return [names.index(c) for c in OFFICIAL_CLASSES]
    elif info.num_classes == 7:
        return list(range(7))
    elif info.num_classes == 8 and info.ignore_index in (0, None):
        return list(range(1, 8))
    raise ConfigError(
        f"--format loveda-submission needs a model of LoveDA's 7 classes "
        f"({', '.join(OFFICIAL_CLASSES)}); this checkpoint has {info.num_classes} classes "
        f"{list(info.classes) if info.classes else ''}. Train on LoveDA first"
    )


def check_submission_input(path: Path, height: int, width: int) -> None:
    """Refuse an input that cannot be a LoveDA test image (wrong name or size)."""
    if not re.fullmatch(r"\d+", path.stem):
        raise DataError(
            f"{path}: LoveDA submission files are named by the test image id "
            "(e.g. 4191.png); predict the official Test/*/images_png files"
        )
    if (height, width) != (LOVEDA_SIZE, LOVEDA_SIZE):
        raise DataError(
            f"{path} is {width}x{height}, LoveDA test images are "
            f"{LOVEDA_SIZE}x{LOVEDA_SIZE}; predict the official, uncropped test images"
        )


def file_problems(path: Path) -> list[str]:
    """What is wrong with one submission PNG (nothing: an empty list)."""
    from PIL import Image

    if not re.fullmatch(r"\d+\.png", path.name):
        return [f"{path.name}: name is not <image id>.png"]
    try:
        with Image.open(path) as im:
            mode, size = im.mode, im.size
            values = np.asarray(im) if mode == "L" else None
    except OSError as e:
        return [f"{path.name}: unreadable ({e})"]
    problems = []
    if size != (LOVEDA_SIZE, LOVEDA_SIZE):
        problems.append(f"{path.name}: {size[0]}x{size[1]}, expected 1024x1024")
    if mode != "L":
        problems.append(f"{path.name}: mode {mode}, expected single-band 8-bit (L)")
    elif values is not None and values.max(initial=0) > 6:
        problems.append(f"{path.name}: value {int(values.max())} outside 0..6")
    return problems


def validate_loveda_submission(folder: PathLike, expected: int | None = None) -> list[Path]:
    """Check a LoveDA submission folder: ``<id>.png`` files, 1024x1024, uint8, values 0..6.

    ``expected`` is the number of files there must be (default: the official 1796). Raises
    :class:`DataError` listing the problems; returns the files when all is well.
    """
    folder = Path(folder)
    files = sorted(folder.glob("*.png"))
    problems = []
    want = LOVEDA_TEST_IMAGES if expected is None else expected
    if len(files) != want:
        problems.append(f"{len(files)} PNG files, expected {want}")
    for path in files:
        problems += file_problems(path)
    if problems:
        shown = "; ".join(problems[:5]) + (
            f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        )
        raise DataError(f"LoveDA submission in {folder} is not valid: {shown}")
    return files


def zip_submission(files: Sequence[Path], path: PathLike) -> Path:
    """Zip the PNGs flat (no folders), as the LoveDA server expects; written atomically."""
    path = Path(path)
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for f in files:
            z.write(f, arcname=f.name)
    return path
