"""Paired geometric transforms, image-only jitter, seeding and normalisation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from fakes import make_loveda
from satunet.data import LoveDA
from satunet.data.transforms import (
    IMAGENET_NORMALIZATION,
    Normalize,
    RandomRot90,
    compute_normalization,
    eval_transforms,
    train_transforms,
)
from satunet.errors import DataError


def _sample(channels: int = 3, size: int = 16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    image = torch.rand(channels, size, size, generator=g)
    # The mask encodes each pixel's position, so any geometric op on it is visible.
    mask = torch.arange(size * size).reshape(size, size)
    return {"image": image, "mask": mask}


def _locate(mask: torch.Tensor, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    return mask // size, mask % size  # source row and column of every output pixel


def test_geometry_moves_image_and_mask_together() -> None:
    sample = _sample()
    t = train_transforms(crop=8, rot90=True, jitter=False)
    for seed in range(12):
        torch.manual_seed(seed)
        out = t(sample)
        assert out["image"].shape == (3, 8, 8) and out["mask"].shape == (8, 8)
        assert out["mask"].dtype == torch.int64 and type(out["image"]) is torch.Tensor
        rows, cols = _locate(out["mask"])
        assert torch.equal(out["image"], sample["image"][:, rows, cols])


def test_jitter_changes_the_image_only() -> None:
    sample = _sample()
    t = train_transforms(flips=False, jitter=True)
    changed = 0
    for seed in range(8):
        torch.manual_seed(seed)
        out = t(sample)
        assert torch.equal(out["mask"], sample["mask"])
        assert out["image"].min() >= 0 and out["image"].max() <= 1
        changed += not torch.equal(out["image"], sample["image"])
    assert changed >= 4  # three independent p=0.5 steps: P(no change) = 1/8 per seed


def test_same_seed_same_samples_and_other_seed_differs() -> None:
    sample = _sample()
    t = train_transforms(crop=12, rot90=True)
    torch.manual_seed(3)
    a = [t(sample) for _ in range(4)]
    torch.manual_seed(3)
    b = [t(sample) for _ in range(4)]
    torch.manual_seed(4)
    c = [t(sample) for _ in range(4)]
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(a, b, strict=True))
    assert all(torch.equal(x["mask"], y["mask"]) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x["image"], y["image"]) for x, y in zip(a, c, strict=True))


def test_dataloader_workers_are_reproducible(tmp_path: Path) -> None:
    root = make_loveda(tmp_path, splits=("train",), scenes=("rural",), n=2, size=32)
    ds = LoveDA(root, tile_size=16, transforms=train_transforms(rot90=True))

    def epoch(seed: int) -> list[torch.Tensor]:
        loader = DataLoader(
            ds, batch_size=4, shuffle=True, num_workers=1,
            generator=torch.Generator().manual_seed(seed),
        )  # fmt: skip
        return [batch["image"] for batch in loader]

    first, again = epoch(7), epoch(7)
    assert all(torch.equal(x, y) for x, y in zip(first, again, strict=True))


def test_eval_transforms_are_deterministic_and_never_jitter() -> None:
    sample = _sample()
    t = eval_transforms()
    assert torch.equal(t(sample)["image"], sample["image"])
    normed = eval_transforms(IMAGENET_NORMALIZATION)(sample)
    mean = torch.tensor(IMAGENET_NORMALIZATION["mean"]).view(3, 1, 1)
    std = torch.tensor(IMAGENET_NORMALIZATION["std"]).view(3, 1, 1)
    assert torch.allclose(normed["image"], (sample["image"] - mean) / std)
    assert torch.equal(normed["mask"], sample["mask"])


def test_rot90_is_exact() -> None:
    sample = _sample()
    seen = set()
    for seed in range(16):
        torch.manual_seed(seed)
        out = RandomRot90()(sample)
        k = next(k for k in range(4) if torch.equal(out["mask"], torch.rot90(sample["mask"], k)))
        assert torch.equal(out["image"], torch.rot90(sample["image"], k, dims=(1, 2)))
        seen.add(k)
    assert seen == {0, 1, 2, 3}


def test_multiband_needs_jitter_off_and_matching_normalization() -> None:
    sample = _sample(channels=4)
    with pytest.raises(DataError, match="jitter=False"):
        train_transforms()(sample)
    assert train_transforms(jitter=False)(sample)["image"].shape == (4, 16, 16)
    with pytest.raises(DataError, match="3 channels but the image has 4"):
        Normalize(**IMAGENET_NORMALIZATION)(sample)
    with pytest.raises(ValueError, match="std values must be > 0"):
        Normalize([0.5], [0.0])
    with pytest.raises(ValueError, match="normalization must be"):
        eval_transforms({"mean": [0.5]})


def test_compute_normalization_matches_torch(tmp_path: Path) -> None:
    root = make_loveda(tmp_path, splits=("train",), scenes=("rural",), n=3, size=32)
    ds = LoveDA(root, tile_size=None, transforms=train_transforms())  # jitter must not leak in
    stats = compute_normalization(ds, max_samples=10)
    images = torch.stack([ds.read(i)["image"] for i in range(len(ds))]).double()
    assert torch.allclose(
        torch.tensor(stats["mean"], dtype=torch.float64), images.mean(dim=(0, 2, 3)), atol=1e-6
    )
    assert torch.allclose(
        torch.tensor(stats["std"], dtype=torch.float64),
        images.std(dim=(0, 2, 3), unbiased=False),
        atol=1e-6,
    )
