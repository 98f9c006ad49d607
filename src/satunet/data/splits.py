"""Datasets and loaders from a config: the validation carve-out by source image, sharded loaders.

Used by training and evaluation alike, so ``satunet evaluate --split val`` rebuilds exactly the
carve-out a run was validated on.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from satunet.config import DataConfig, RunConfig, TrainConfig
from satunet.data import create_dataset
from satunet.data.transforms import IMAGENET_NORMALIZATION, eval_transforms, train_transforms
from satunet.errors import ConfigError
from satunet.runtime import rank, world_size

__all__ = [
    "ShardSampler",
    "build_datasets",
    "dataset_kwargs",
    "dataset_scale",
    "make_loaders",
    "normalization_stats",
    "one_thread_worker",
    "split_by_group",
]


def split_by_group(
    groups: Sequence[str], fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Indices (train, val) with ``fraction`` of the source images in val, chosen by ``seed``.

    Tiles of one source image stay on one side, so validation never sees a neighbour of a
    training tile. At least one group goes to each side.
    """
    unique = sorted(set(groups))
    if len(unique) < 2:
        raise ConfigError(
            f"data.val_fraction needs at least 2 source images to split, found {len(unique)}"
        )
    random.Random(seed).shuffle(unique)
    n_val = min(max(1, round(fraction * len(unique))), len(unique) - 1)
    val = set(unique[:n_val])
    train_idx = [i for i, g in enumerate(groups) if g not in val]
    val_idx = [i for i, g in enumerate(groups) if g in val]
    return train_idx, val_idx


def normalization_stats(name: str | dict) -> dict[str, list[float]] | None:
    """Per-band mean/std for a ``data.normalization`` setting (None for "none"; explicit
    ``{"mean": [...], "std": [...]}`` as given; "dataset" is resolved by the trainer first)."""
    if isinstance(name, dict):
        return {k: [float(v) for v in name[k]] for k in ("mean", "std")}
    if name == "dataset":
        raise ConfigError(
            'data.normalization = "dataset" needs the training images: resolve it with '
            "satunet.train.from_config.resolve_normalization first"
        )
    if name == "none":
        return None
    return {k: list(v) for k, v in dict(IMAGENET_NORMALIZATION).items()}


def dataset_kwargs(data: DataConfig) -> dict[str, Any]:
    """Keyword arguments for ``create_dataset`` from a DataConfig (scene and options)."""
    kwargs = dict(data.options)
    if data.scene is not None:
        kwargs["scene"] = data.scene
    return kwargs


def dataset_scale(dataset: Any) -> float | None:
    """The pixel value a dataset maps to 1.0 (its ``scale=``), None for the dtype's rule."""
    scale = getattr(dataset, "scale", None)
    return float(scale) if scale is not None else None


def build_datasets(cfg: RunConfig) -> tuple[Dataset, Dataset, Any]:
    """(train, val, base dataset) for a config; val is carved by group if val_fraction > 0."""
    d = cfg.data
    norm = normalization_stats(d.normalization)
    kwargs = dataset_kwargs(d)
    train_tf = train_transforms(
        crop=d.crop, flips=d.flips, rot90=d.rot90, jitter=d.jitter, normalization=norm
    )
    train = create_dataset(d.name, d.root, split=d.train_split, transforms=train_tf, **kwargs)
    if d.jitter and train.in_channels != 3:
        raise ConfigError(
            f"data.jitter (hue/brightness/contrast) needs RGB images but {d.root} has "
            f"{train.in_channels} bands: add --set data.jitter=false"
        )
    if d.val_fraction > 0:
        val = create_dataset(
            d.name, d.root, split=d.train_split, transforms=eval_transforms(norm), **kwargs
        )
        train_idx, val_idx = split_by_group(train.groups, d.val_fraction, cfg.train.seed)
        return Subset(train, train_idx), Subset(val, val_idx), train
    val = create_dataset(
        d.name, d.root, split=d.val_split, transforms=eval_transforms(norm), **kwargs
    )
    return train, val, train


class ShardSampler(Sampler[int]):
    """Every ``world``-th index from ``rank``: each sample exactly once over all processes.

    Unlike DistributedSampler it never pads with repeats, so all-reduced metrics are exact.
    """

    def __init__(self, length: int, rank: int, world: int) -> None:
        self.indices = list(range(rank, length, world))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def one_thread_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: one torch thread per worker, so N workers and the training
    process do not each run a thread per core."""
    torch.set_num_threads(1)


def make_loaders(
    train: Dataset, val: Dataset, cfg: TrainConfig, device: torch.device
) -> tuple[DataLoader, DataLoader]:
    """Loaders sharded over processes; the shuffle order depends only on (seed, epoch)."""
    me, world = rank(), world_size()
    micro = cfg.micro_batch_size or cfg.batch_size // world
    if micro < 1 or cfg.batch_size % world:
        raise ConfigError(
            f"train.batch_size={cfg.batch_size} cannot be shared by {world} processes; use a "
            "multiple of the process count"
        )
    common = dict(
        batch_size=micro,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
        # Not persistent: each epoch's workers then take their seeds from the per-epoch seed,
        # so a resumed run draws the same augmentations as an uninterrupted one.
        persistent_workers=False,
        worker_init_fn=one_thread_worker if cfg.num_workers > 0 else None,
    )
    sampler = DistributedSampler(train, num_replicas=world, rank=me, shuffle=True, seed=cfg.seed)
    train_loader = DataLoader(train, sampler=sampler, **common)
    val_loader = DataLoader(val, sampler=ShardSampler(len(val), me, world), **common)
    return train_loader, val_loader
