"""Datasets (official LoveDA / LandCover.ai layouts, user folders), transforms, download."""

from __future__ import annotations

import inspect
from typing import Literal

from torch.utils.data import Dataset

from satunet.data.base import PathLike, Sample, SegmentationDataset, Transform
from satunet.data.folder import ImageMaskFolder
from satunet.data.landcoverai import LandCoverAI
from satunet.data.loveda import LoveDA
from satunet.errors import UnknownNameError

__all__ = [
    "DATASETS",
    "ImageMaskFolder",
    "LandCoverAI",
    "LoveDA",
    "Sample",
    "SegmentationDataset",
    "create_dataset",
]

DATASETS: dict[str, type[SegmentationDataset]] = {
    "loveda": LoveDA,
    "landcoverai": LandCoverAI,
    "folder": ImageMaskFolder,
}


def create_dataset(
    name: Literal["loveda", "landcoverai", "folder"],
    root: PathLike,
    split: str = "train",
    *,
    transforms: Transform | None = None,
    **kwargs,
) -> Dataset:
    """Build a registered dataset by name; unknown names and options are errors, never ignored."""
    if name not in DATASETS:
        raise UnknownNameError("dataset", name, DATASETS)
    cls = DATASETS[name]
    params = inspect.signature(cls).parameters
    allowed = [p for p in params if p not in ("root", "split", "transforms")]
    for key in kwargs:
        if key not in allowed:
            raise UnknownNameError(f"option of dataset {name!r}", key, allowed)
    return cls(root, split, transforms=transforms, **kwargs)
