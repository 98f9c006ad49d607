"""The one rule that turns raw pixels into model input, and the one padding rule.

Training (datasets), evaluation and prediction (scenes, tiles, the map server) all call these,
so a model is always fed the numbers it was trained on.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from satunet.errors import DataError

# The raw value that maps to 1.0 when no ``scale`` is given: the integer type's maximum.
DTYPE_SCALE = {"uint8": 255.0, "uint16": 65535.0, "float32": 1.0, "float64": 1.0}

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def pixel_scale(dtype: object, scale: float | None = None, where: object = "the image") -> float:
    """The divisor for raw pixels of ``dtype``: ``scale`` when given, else the dtype's rule."""
    if scale is not None:
        if not scale > 0 or scale != scale or scale == float("inf"):
            raise DataError(f"scale must be a positive finite number, got {scale!r}")
        return float(scale)
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPE_SCALE:
        raise DataError(
            f"{where} holds {name} pixels, which have no default scale to [0, 1]: pass scale= "
            "(the value that maps to 1.0, e.g. 10000 for reflectance)."
        )
    return DTYPE_SCALE[name]


def scale_pixels(
    raw: np.ndarray,
    scale: float | None = None,
    normalization: dict[str, list[float]] | None = None,
    where: object = "the image",
) -> np.ndarray:
    """float32 ``raw / scale``, then per-band ``(x - mean) / std``.

    Shape: (C, H, W) or (B, C, H, W).
    """
    # One float32 copy, then in place: a scene band is normalised without two temporaries.
    x = np.array(raw, dtype=np.float32, copy=True)
    x /= np.float32(pixel_scale(raw.dtype, scale, where))
    if normalization:
        shape = (-1, 1, 1)  # per band, for (C, H, W) images and (B, C, H, W) batches
        x -= np.asarray(normalization["mean"], dtype=np.float32).reshape(shape)
        x /= np.asarray(normalization["std"], dtype=np.float32).reshape(shape)
    return x


def pad_to_multiple(x: ArrayT, multiple: int) -> ArrayT:
    """Pad H and W at the bottom/right up to multiples of ``multiple``.

    Reflected where the image is large enough to reflect, else edge-replicated, for numpy
    arrays and torch tensors alike, so evaluation and prediction see the same border pixels.
    Shape: (..., H, W); crop the output back with ``[..., :H, :W]``.
    """
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if not ph and not pw:
        return x
    reflect = ph < h and pw < w
    if isinstance(x, torch.Tensor):
        squeeze = x.dim() == 3
        y = x.unsqueeze(0) if squeeze else x
        y = F.pad(y, (0, pw, 0, ph), mode="reflect" if reflect else "replicate")
        return y.squeeze(0) if squeeze else y
    pad = [(0, 0)] * (x.ndim - 2) + [(0, ph), (0, pw)]
    return np.pad(x, pad, mode="reflect" if reflect else "edge")
