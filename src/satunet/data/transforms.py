"""Sample-dict transforms on torchvision.transforms.v2: paired geometry, image-only photometry.

The image is wrapped as ``tv_tensors.Image`` and the mask as ``tv_tensors.Mask``, so flips,
rotations and crops move both together while jitter and normalisation touch the image only.
All randomness comes from torch's global RNG: ``torch.manual_seed`` (or the per-worker seeds a
DataLoader derives from its ``generator``) makes a run reproducible. Jitter belongs to the
training split only; the study also jittered val and test, which made its metrics random.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from satunet.data.base import Sample
from satunet.errors import ConfigError, DataError

# ImageNet statistics for encoders pretrained on it (the study skipped them; see issue 3).
IMAGENET_NORMALIZATION = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}

# The study's jitter: each step applied on its own with probability 0.5.
STUDY_HUE, STUDY_BRIGHTNESS, STUDY_CONTRAST, STUDY_P = 0.10, 0.10, 0.10, 0.5


class SampleTransform:
    """Applies a v2 transform to a sample dict; other keys pass through untouched."""

    def __init__(self, transform: Callable) -> None:
        self.transform = transform

    def __call__(self, sample: Sample) -> Sample:
        wrapped = dict(sample)
        wrapped["image"] = tv_tensors.Image(sample["image"])
        if "mask" in sample:
            wrapped["mask"] = tv_tensors.Mask(sample["mask"])
        out = self.transform(wrapped)
        out["image"] = out["image"].as_subclass(torch.Tensor)
        if "mask" in out:
            out["mask"] = out["mask"].as_subclass(torch.Tensor)
        return out

    def __repr__(self) -> str:
        return f"SampleTransform({self.transform})"


class RandomRot90:
    """Rotates image and mask together by k * 90 degrees, k uniform in 0..3 (exact, no resampling).

    A plain callable on sample dicts: v2's RandomRotation draws continuous angles and
    interpolates, and its subclassing hooks changed names across torchvision releases.
    """

    def __call__(self, sample: Sample) -> Sample:
        k = int(torch.randint(0, 4, ()).item())
        if k == 0:
            return sample
        out = dict(sample)
        for key in ("image", "mask"):
            if key in out:
                x = out[key]
                out[key] = tv_tensors.wrap(torch.rot90(x, k, dims=(-2, -1)), like=x)
        return out

    def __repr__(self) -> str:
        return "RandomRot90()"


class Normalize:
    """Per-channel ``(image - mean) / std`` on the image of a sample; the mask is untouched."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        if len(mean) != len(std) or not mean:
            raise ConfigError(f"mean and std need one value per channel, got {mean} and {std}")
        if any(s <= 0 for s in std):
            raise ConfigError(f"std values must be > 0, got {list(std)}")
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]
        self._mean = torch.tensor(self.mean).view(-1, 1, 1)
        self._std = torch.tensor(self.std).view(-1, 1, 1)

    def __call__(self, sample: Sample) -> Sample:
        image = sample["image"]
        if image.shape[-3] != len(self.mean):
            raise DataError(
                f"normalization has {len(self.mean)} channels but the image has "
                f"{image.shape[-3]}: compute it for this data (compute_normalization) or drop it."
            )
        out = dict(sample)
        out["image"] = tv_tensors.wrap((image - self._mean) / self._std, like=image)
        return out

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


class _RequireCropFits:
    """Fails clearly (with a size that works) before a random crop meets a smaller sample."""

    def __init__(self, crop: int) -> None:
        self.crop = crop

    def __call__(self, sample: Sample) -> Sample:
        height, width = sample["image"].shape[-2:]
        if height < self.crop or width < self.crop:
            raise ConfigError(
                f"crop {self.crop} is larger than the {width}x{height} (WxH) training samples: "
                f"use a crop of at most {min(height, width)} (--crop / data.crop), or larger "
                "tiles (data.options.tile_size)."
            )
        return sample

    def __repr__(self) -> str:
        return f"RequireCropFits({self.crop})"


class _RequireRGB:
    """Fails clearly before colour jitter meets a non-RGB image (hue needs 3 channels)."""

    def __call__(self, sample: Sample) -> Sample:
        channels = sample["image"].shape[-3]
        if channels != 3:
            raise DataError(
                f"colour jitter (hue/brightness/contrast) needs RGB images, got {channels} "
                "bands: build the transforms with jitter=False for multispectral data."
            )
        return sample

    def __repr__(self) -> str:
        return "RequireRGB()"


def _normalize(normalization: dict | None) -> list[Callable]:
    if normalization is None:
        return []
    unknown = set(normalization) - {"mean", "std"}
    if unknown or not {"mean", "std"} <= set(normalization):
        raise ConfigError(
            'normalization must be {"mean": [...], "std": [...]}, got keys '
            f"{sorted(normalization)}"
        )
    return [Normalize(normalization["mean"], normalization["std"])]


def train_transforms(
    *,
    crop: int | None = None,
    flips: bool = True,
    rot90: bool = False,
    jitter: bool = True,
    normalization: dict | None = None,
) -> Callable[[Sample], Sample]:
    """The study's training augmentation, as a sample-dict transform for the training split.

    Defaults follow the study: horizontal and vertical flips, then hue +-0.10, brightness and
    contrast 0.9-1.1, each applied on its own with p=0.5. ``crop`` takes a random square crop
    first (cheaper jitter, more variety); ``rot90`` adds a random multiple of 90 degrees.
    """
    steps: list[Callable] = []
    if crop is not None:
        if isinstance(crop, bool) or not isinstance(crop, int) or crop < 1:
            raise ConfigError(f"crop must be a positive number of pixels, got {crop}")
        steps += [_RequireCropFits(crop), v2.RandomCrop(crop)]
    if flips:
        steps += [v2.RandomHorizontalFlip(p=0.5), v2.RandomVerticalFlip(p=0.5)]
    if rot90:
        steps.append(RandomRot90())
    if jitter:
        steps += [
            _RequireRGB(),
            v2.RandomApply([v2.ColorJitter(hue=STUDY_HUE)], p=STUDY_P),
            v2.RandomApply([v2.ColorJitter(brightness=STUDY_BRIGHTNESS)], p=STUDY_P),
            v2.RandomApply([v2.ColorJitter(contrast=STUDY_CONTRAST)], p=STUDY_P),
        ]
    steps += _normalize(normalization)
    return SampleTransform(v2.Compose(steps or [v2.Identity()]))


def eval_transforms(normalization: dict | None = None) -> Callable[[Sample], Sample]:
    """Deterministic transforms for validation, test and prediction: normalisation only."""
    return SampleTransform(v2.Compose(_normalize(normalization) or [v2.Identity()]))


def compute_normalization(dataset: Dataset, max_samples: int = 256) -> dict[str, list[float]]:
    """Per-channel mean and std of a dataset's images (evenly spaced samples, float64 sums).

    Reads samples without their transforms when the dataset allows it (satunet datasets), so
    jitter does not leak into the statistics.
    """
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise DataError("cannot compute normalization of an empty dataset")
    count = min(n, max_samples)
    indices = torch.linspace(0, n - 1, count).round().long().unique().tolist()
    read = getattr(dataset, "read", dataset.__getitem__)
    total = total_sq = None
    pixels = 0
    for i in indices:
        image = read(i)["image"].double()
        flat = image.reshape(image.shape[0], -1)
        s, sq = flat.sum(dim=1), (flat * flat).sum(dim=1)
        total = s if total is None else total + s
        total_sq = sq if total_sq is None else total_sq + sq
        pixels += flat.shape[1]
    mean = total / pixels
    std = (total_sq / pixels - mean * mean).clamp_min(0).sqrt()
    return {"mean": mean.tolist(), "std": std.clamp_min(1e-6).tolist()}
