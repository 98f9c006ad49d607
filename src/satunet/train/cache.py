"""Decoded-tile caching: every sample read (decoded, labelled) once, transforms applied per use.

A 1024x1024 LoveDA PNG cut into four 512x512 tiles is decoded once per tile on every epoch
when the tiles are drawn in random order; :class:`CachedSamples` decodes each once, up front,
keeps the float image and the class ids in memory, and runs the dataset's (random) transforms
on a copy at every access. Built before the loader's workers start, the cache is shared with
them copy-on-write.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

log = logging.getLogger(__name__)


def _base_and_indices(dataset: Dataset) -> tuple[Any, list[int]]:
    """The dataset that can ``read`` untransformed samples, and the indices into it."""
    indices = list(range(len(dataset)))  # type: ignore[arg-type]
    while isinstance(dataset, Subset):
        indices = [int(dataset.indices[i]) for i in indices]
        dataset = dataset.dataset
    if not hasattr(dataset, "read"):
        raise TypeError(f"cannot cache {type(dataset).__name__}: it has no read(index)")
    return dataset, indices


class CachedSamples(Dataset):
    """``dataset`` (a SegmentationDataset or a Subset of one) with every sample decoded once."""

    def __init__(self, dataset: Dataset) -> None:
        base, indices = _base_and_indices(dataset)
        self.transforms = getattr(base, "transforms", None)
        start = time.perf_counter()
        self.samples = []
        for i in indices:
            sample = base.read(i)
            if "mask" in sample and int(sample["mask"].max()) < 256:
                sample["mask"] = sample["mask"].to(torch.uint8)  # 8x less memory than int64
            self.samples.append(sample)
        # Attributes the trainer reads from datasets (classes, palette, groups) pass through.
        self.base = base
        mb = sum(t.numel() * t.element_size() for s in self.samples for t in s.values()) / 2**20
        log.info(
            "cached %d decoded samples (%.0f MB) in %.1f s",
            len(self.samples),
            mb,
            time.perf_counter() - start,
        )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        cached = self.samples[index]
        sample = {k: v.clone() for k, v in cached.items()}  # transforms must not touch the cache
        if "mask" in sample:
            sample["mask"] = sample["mask"].long()
        return self.transforms(sample) if self.transforms is not None else sample
