"""One tile grid for dataset tiling (full tiles only) and scene inference (every pixel covered).

Inference also needs the blend window (smooth weights, so tiles leave no seams) and the band
plan (which tile rows are predicted together, and how many scene rows must be held).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class Window:
    """A rectangle of a raster, in pixels: top-left corner and size."""

    row: int
    col: int
    height: int
    width: int


def tile_origins(length: int, tile: int, stride: int, *, cover: bool) -> list[int]:
    """Start offsets of tiles along one axis.

    ``cover=False`` keeps full tiles only, on the regular grid 0, stride, 2*stride... (the
    official LoveDA/LandCover.ai cutting). ``cover=True`` adds one last tile flush with the end
    so every pixel is covered (inference); a length shorter than the tile gives one origin, 0.
    """
    if tile < 1 or stride < 1:
        raise ValueError(f"tile and stride must be >= 1, got tile={tile}, stride={stride}")
    if length <= tile:
        return [0] if (cover or length == tile) else []
    starts = list(range(0, length - tile + 1, stride))
    if cover and starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def tile_grid(
    height: int, width: int, tile: int, stride: int | None = None, *, cover: bool = False
) -> list[Window]:
    """Tiles of a height x width raster in row-major order (see :func:`tile_origins`)."""
    stride = stride or tile
    rows = tile_origins(height, tile, stride, cover=cover)
    cols = tile_origins(width, tile, stride, cover=cover)
    return [Window(r, c, min(tile, height - r), min(tile, width - c)) for r in rows for c in cols]


BlendKind = Literal["cosine", "linear", "none"]


def blend_ramp(
    length: int, overlap: int, kind: BlendKind = "cosine", *, start: bool = True, end: bool = True
) -> np.ndarray:
    """1-D weights of a tile: 1 in the middle, a ramp over ``overlap`` pixels at either end.

    ``start``/``end`` say whether a neighbouring tile overlaps that end: a side on the scene
    edge keeps weight 1, so a pixel that only one tile covers is that tile's value exactly.
    Every weight is strictly positive; ramps that meet in a short tile take the smaller one.
    """
    if length < 1 or overlap < 0:
        raise ValueError(f"length must be >= 1 and overlap >= 0, got {length}, {overlap}")
    rise = np.ones(length, dtype=np.float64)
    if kind != "none" and overlap > 0:
        t = (np.arange(overlap, dtype=np.float64) + 0.5) / overlap  # in (0, 1), never 0
        if kind == "cosine":
            ramp = 0.5 - 0.5 * np.cos(np.pi * t)  # the rising half of a Hann window
        elif kind == "linear":
            ramp = t
        else:
            raise ValueError(f"unknown blend kind {kind!r}; use 'cosine', 'linear' or 'none'")
        n = min(overlap, length)
        if start:
            rise[:n] = np.minimum(rise[:n], ramp[:n])
        if end:
            rise[length - n :] = np.minimum(rise[length - n :], ramp[:n][::-1])
    return rise.astype(np.float32)


def blend_window(
    height: int,
    width: int,
    overlap: int,
    kind: BlendKind = "cosine",
    *,
    sides: tuple[bool, bool, bool, bool] = (True, True, True, True),
) -> np.ndarray:
    """(height, width) float32 tile weights; ``sides``: ramp at (top, bottom, left, right)."""
    top, bottom, left, right = sides
    rows = blend_ramp(height, overlap, kind, start=top, end=bottom)
    cols = blend_ramp(width, overlap, kind, start=left, end=right)
    return np.outer(rows, cols)


@dataclass(frozen=True)
class BandPlan:
    """How a scene is streamed: groups of tile rows ("bands") over the full scene width.

    Only ``buffer_height`` rows of the scene are ever held (input, logits accumulator, weights,
    output), so memory depends on the tile, overlap, band size and scene *width*, never on the
    scene height. ``tile_height``/``tile_width`` are the tile sizes actually used: the tile,
    or the scene size along an axis where the scene is smaller than the tile.
    """

    height: int
    width: int
    tile_height: int
    tile_width: int
    row_origins: tuple[int, ...]
    col_origins: tuple[int, ...]
    rows_per_band: int

    @property
    def bands(self) -> list[tuple[int, ...]]:
        """Row origins of the tiles of each band, top to bottom."""
        r, k = self.row_origins, self.rows_per_band
        return [r[i : i + k] for i in range(0, len(r), k)]

    @property
    def buffer_height(self) -> int:
        """Rows the accumulator holds: enough for the tallest band (and the rows it carries)."""
        return max(band[-1] + self.tile_height - band[0] for band in self.bands)

    def buffer_shape(self, num_classes: int) -> tuple[int, int, int]:
        """Shape of the float32 logits accumulator, (num_classes, buffer_height, width)."""
        return (num_classes, self.buffer_height, self.width)

    def finished_until(self, band_index: int) -> int:
        """First scene row still open after band ``band_index``: rows above it are final."""
        bands = self.bands
        return bands[band_index + 1][0] if band_index + 1 < len(bands) else self.height


def plan_bands(
    height: int, width: int, tile: int, overlap: int, *, min_tiles_per_band: int = 1
) -> BandPlan:
    """Plan the streaming of a height x width scene in tiles of ``tile`` with ``overlap``.

    A band groups enough tile rows to hold at least ``min_tiles_per_band`` tiles (the batch
    size), so narrow scenes still fill a batch. Every pixel is covered by at least one tile and
    each tile appears exactly once (the last row/column is flush with the scene edge).
    """
    if height < 1 or width < 1:
        raise ValueError(f"scene size must be >= 1, got {height}x{width}")
    if tile < 1 or not 0 <= overlap < tile:
        raise ValueError(f"need tile >= 1 and 0 <= overlap < tile, got {tile=}, {overlap=}")
    stride = tile - overlap
    rows = tile_origins(height, tile, stride, cover=True)
    cols = tile_origins(width, tile, stride, cover=True)
    per_band = max(1, -(-max(1, min_tiles_per_band) // len(cols)))
    return BandPlan(
        height=height,
        width=width,
        tile_height=min(tile, height),
        tile_width=min(tile, width),
        row_origins=tuple(rows),
        col_origins=tuple(cols),
        rows_per_band=min(per_band, len(rows)),
    )
