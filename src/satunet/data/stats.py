"""Dataset statistics for `satunet data stats`: class pixel histogram and per-band mean/std."""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from satunet.data.base import PathLike
from satunet.data.registry import create_dataset
from satunet.data.transforms import compute_normalization
from satunet.errors import ConfigError


def dataset_stats(
    name: str,
    root: PathLike,
    split: str = "train",
    *,
    scene: str | None = None,
    labels: str | None = None,
    max_samples: int = 256,
) -> dict[str, Any]:
    """Class pixel counts (labels as the model sees them) and the per-band normalization."""
    if max_samples < 1:
        raise ConfigError(f"--max-samples must be >= 1, got {max_samples}")
    options: dict[str, Any] = {}
    if scene or labels:
        if name != "loveda":
            raise ConfigError("--scene and --labels apply to loveda only")
        options = {k: v for k, v in (("scene", scene), ("labels", labels)) if v}
    if name != "landcoverai":  # whole images: same pixels as the tiles, fewer reads
        options["tile_size"] = None
    dataset = create_dataset(name, root, split, **options)
    size = max(dataset.num_classes, (dataset.ignore_index or 0) + 1)
    counts = torch.zeros(size, dtype=torch.int64)
    if dataset.labeled:  # masks are validated on read, so every value is < size
        for i in tqdm(range(len(dataset)), desc="histogram", unit="sample", disable=None):
            counts += torch.bincount(dataset.read(i)["mask"].flatten(), minlength=size)
    norm = compute_normalization(dataset, max_samples=max_samples)
    total = int(counts.sum())
    ids = list(enumerate(dataset.classes))
    if dataset.ignore_index is not None:
        ids.append((dataset.ignore_index, "(ignored)"))
    rows = [
        {
            "id": c,
            "class": label,
            "pixels": int(counts[c]),
            "share": int(counts[c]) / total if total else 0.0,
        }
        for c, label in ids
    ]
    return {
        "dataset": name,
        "split": split,
        "samples": len(dataset),
        "classes": rows,
        "normalization": norm,
        "description": repr(dataset),
    }
