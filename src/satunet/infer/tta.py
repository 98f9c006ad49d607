"""Test-time augmentation: average a model's logits over flips and 90-degree rotations.

Each transform is applied to the input batch, the model runs, and the inverse transform is
applied to its logits before averaging, so every pixel's logits stay in place. ``flip`` is
identity + horizontal + vertical flip (3 passes), ``d4`` the 8 symmetries of the square (4
rotations, each with and without a horizontal flip; 8 passes). Rotating a non-square tile
swaps its height and width: both are already multiples of the model's size multiple.

:class:`TtaPredictor` wraps any :class:`~satunet.infer.predictors.Predictor`, so the streaming
engine (tiles, blending, row bands) runs unchanged; :func:`tta_logits` is the same rule for
torch tensors, used by :mod:`satunet.evaluate`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypeVar

import numpy as np
import torch

from satunet.errors import UnknownNameError
from satunet.infer.predictors import Predictor

TtaMode = Literal["none", "flip", "d4"]
TTA_MODES: tuple[str, ...] = ("none", "flip", "d4")

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)
# (quarter turns counter-clockwise, horizontal flip first): x -> rot90(hflip?(x), k)
Transform = tuple[int, bool]


def tta_transforms(mode: str) -> list[Transform]:
    """The transforms of a TTA mode; the identity comes first."""
    if mode == "none":
        return [(0, False)]
    if mode == "flip":
        return [(0, False), (0, True), (2, True)]  # (2, True) is a vertical flip
    if mode == "d4":
        return [(k, flip) for flip in (False, True) for k in range(4)]
    raise UnknownNameError("TTA mode", mode, TTA_MODES)


def _flip_w(x: ArrayT) -> ArrayT:
    return x.flip(-1) if isinstance(x, torch.Tensor) else np.flip(x, -1)


def _rot90(x: ArrayT, k: int) -> ArrayT:
    if k % 4 == 0:
        return x
    if isinstance(x, torch.Tensor):
        return torch.rot90(x, k, dims=(-2, -1))
    return np.rot90(x, k, axes=(-2, -1))


def apply_transform(x: ArrayT, transform: Transform) -> ArrayT:
    """``x`` (..., H, W) flipped (if asked) then rotated by k quarter turns."""
    k, flip = transform
    return _rot90(_flip_w(x) if flip else x, k)


def invert_transform(y: ArrayT, transform: Transform) -> ArrayT:
    """Undo :func:`apply_transform` on model outputs (..., H', W')."""
    k, flip = transform
    y = _rot90(y, -k)
    return _flip_w(y) if flip else y


def tta_logits(run: Callable[[ArrayT], ArrayT], x: ArrayT, mode: str) -> ArrayT:
    """Mean of ``invert(run(transform(x)))`` over the transforms of ``mode``.

    ``x`` is a (B, C, H, W) numpy array or tensor; ``run`` returns (B, K, H, W) of the same
    kind. ``mode="none"`` calls ``run(x)`` once and returns its result unchanged.
    """
    transforms = tta_transforms(mode)
    if len(transforms) == 1:
        return run(x)
    total: ArrayT | None = None
    for transform in transforms:
        t = apply_transform(x, transform)
        t = t.contiguous() if isinstance(t, torch.Tensor) else np.ascontiguousarray(t)
        y = invert_transform(run(t), transform)
        y = y.float() if isinstance(y, torch.Tensor) else y.astype(np.float32)
        total = y if total is None else total + y
    assert total is not None
    return total / len(transforms)


class TtaPredictor(Predictor):
    """A predictor whose logits are averaged over the transforms of ``mode`` (flip, d4)."""

    def __init__(self, predictor: Predictor, mode: str = "flip"):
        self.transforms = tta_transforms(mode)
        self.predictor, self.mode, self.info = predictor, mode, predictor.info

    @property
    def passes(self) -> int:
        """Forward passes per batch (the cost factor)."""
        return len(self.transforms)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(tta_logits(self.predictor, batch, self.mode))


def with_tta(predictor: Predictor, mode: str = "none") -> Predictor:
    """``predictor`` itself for ``mode="none"``, else wrapped in a :class:`TtaPredictor`."""
    tta_transforms(mode)  # an unknown mode is an error here, before any work
    return predictor if mode == "none" else TtaPredictor(predictor, mode)
