"""One tile grid for dataset tiling (full tiles only) and scene inference (every pixel covered)."""

from __future__ import annotations

from dataclasses import dataclass


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
