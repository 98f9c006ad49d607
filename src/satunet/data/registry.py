"""The dataset registry: one dict drives create_dataset, --data, data check and data download.

Adding a dataset is its module plus one line in :data:`DATASETS`.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from pathlib import Path

from torch.utils.data import Dataset

from satunet.data.base import PathLike, SegmentationDataset, Transform
from satunet.data.check import CheckReport
from satunet.data.download import download_resources
from satunet.data.folder import ImageMaskFolder
from satunet.data.landcoverai import LandCoverAI
from satunet.data.loveda import LoveDA
from satunet.data.vector import VectorLabels
from satunet.errors import ConfigError, UnknownNameError

DATASETS: dict[str, type[SegmentationDataset]] = {
    "loveda": LoveDA,
    "landcoverai": LandCoverAI,
    "folder": ImageMaskFolder,
    "vector": VectorLabels,
}


def dataset_class(name: str) -> type[SegmentationDataset]:
    """The registered class for ``name``, or an error listing the names with a suggestion."""
    if name not in DATASETS:
        raise UnknownNameError("dataset", name, DATASETS)
    return DATASETS[name]


def dataset_options(name: str) -> list[str]:
    """Keyword options of a dataset besides root, split and transforms."""
    params = inspect.signature(dataset_class(name)).parameters
    return [p for p in params if p not in ("root", "split", "transforms")]


def create_dataset(
    name: str,
    root: PathLike,
    split: str = "train",
    *,
    transforms: Transform | None = None,
    **kwargs,
) -> Dataset:
    """Build a registered dataset by name; unknown names and options are errors, never ignored."""
    cls = dataset_class(name)
    allowed = dataset_options(name)
    for key in kwargs:
        if key not in allowed:
            raise UnknownNameError(f"option of dataset {name!r}", key, allowed)
    return cls(root, split, transforms=transforms, **kwargs)


def downloadable() -> list[str]:
    """Names of the datasets with official archives."""
    return [name for name, cls in DATASETS.items() if cls.resources]


def download_dataset(
    name: str,
    root: PathLike,
    *,
    splits: Iterable[str] | None = None,
    checksum: bool = True,
    keep_archives: bool = True,
    progress: bool | None = None,
) -> list[Path]:
    """Download and extract a registered dataset's official archives into ``root``."""
    if name not in downloadable():
        raise UnknownNameError("downloadable dataset", name, downloadable())
    return download_resources(
        name,
        DATASETS[name].resources,
        root,
        splits=splits,
        checksum=checksum,
        keep_archives=keep_archives,
        progress=progress,
    )


def check_dataset(
    name: str,
    root: PathLike,
    *,
    split: str | None = None,
    progress: bool | None = None,
    tile: int | None = None,
) -> CheckReport:
    """Read every file of a dataset and collect what is wrong (see :class:`CheckReport`).

    A missing root is one more problem in the report, like every other; ``tile`` (the training
    tile size) also flags images smaller than it.
    """
    cls = dataset_class(name)
    if tile is not None and tile < 1:
        raise ConfigError(f"tile must be a positive number of pixels, got {tile}")
    root = Path(root)
    report = CheckReport(name, root, {}, tile=tile)
    if not root.is_dir():
        hint = (
            f" or fetch it with `satunet data download {name} --root {root}`"
            if cls.resources
            else ""
        )
        what = "is a file, not a folder" if root.exists() else "does not exist"
        report.problem(root, f"{what}: pass the folder holding the data with --root{hint}")
        return report
    cls.check_layout(report, split, progress)
    return report
