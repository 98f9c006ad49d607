"""Datasets (official LoveDA / LandCover.ai layouts, user folders), transforms, download, checks."""

from satunet.data.base import Sample, SegmentationDataset
from satunet.data.folder import ImageMaskFolder
from satunet.data.landcoverai import LandCoverAI
from satunet.data.loveda import LoveDA
from satunet.data.registry import (
    DATASETS,
    check_dataset,
    create_dataset,
    dataset_class,
    dataset_options,
    download_dataset,
    downloadable,
)

__all__ = [
    "DATASETS",
    "ImageMaskFolder",
    "LandCoverAI",
    "LoveDA",
    "Sample",
    "SegmentationDataset",
    "check_dataset",
    "create_dataset",
    "dataset_class",
    "dataset_options",
    "download_dataset",
    "downloadable",
]
