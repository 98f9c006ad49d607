"""Tile grids, blend windows and band plans: coverage, positivity, flat buffers."""

from __future__ import annotations

import numpy as np
import pytest

from satunet.data.tiling import (
    Window,
    blend_ramp,
    blend_window,
    plan_bands,
    tile_grid,
    tile_origins,
)


def test_tile_origins_dataset_and_cover() -> None:
    assert tile_origins(1024, 512, 512, cover=False) == [0, 512]
    assert tile_origins(1000, 512, 512, cover=False) == [0]
    assert tile_origins(1000, 512, 448, cover=True) == [0, 448, 488]
    assert tile_origins(100, 512, 448, cover=True) == [0]
    assert tile_origins(100, 512, 448, cover=False) == []
    assert tile_grid(1024, 1024, 512)[-1] == Window(512, 512, 512, 512)


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_blend_ramp_is_positive_and_flat_in_the_middle(kind: str) -> None:
    w = blend_ramp(64, 16, kind)
    assert w.shape == (64,) and (w > 0).all() and w.max() == 1
    np.testing.assert_array_equal(w[16:48], 1)
    np.testing.assert_allclose(w, w[::-1])
    assert (np.diff(w[:16]) > 0).all()  # rises monotonically over the overlap


def test_blend_ramp_keeps_weight_one_on_scene_edges() -> None:
    w = blend_ramp(32, 8, start=False, end=True)
    np.testing.assert_array_equal(w[:24], 1)
    assert w[-1] < 0.1
    np.testing.assert_array_equal(blend_ramp(32, 8, start=False, end=False), 1)
    # ramps wider than half the tile: both ends still ramp and stay positive
    short = blend_ramp(10, 8)
    assert (short > 0).all() and short.max() < 1


def test_blend_window_is_outer_product() -> None:
    w = blend_window(16, 24, 4, sides=(True, False, False, True))
    assert w.shape == (16, 24) and w.dtype == np.float32
    np.testing.assert_allclose(
        w, np.outer(blend_ramp(16, 4, end=False), blend_ramp(24, 4, start=False))
    )


def _coverage(plan) -> np.ndarray:
    count = np.zeros((plan.height, plan.width), dtype=int)
    for r in plan.row_origins:
        for c in plan.col_origins:
            count[r : r + plan.tile_height, c : c + plan.tile_width] += 1
    return count


@pytest.mark.parametrize(
    ("height", "width", "tile", "overlap"),
    [(100, 130, 32, 8), (64, 64, 64, 0), (50, 700, 64, 63), (513, 1000, 512, 64), (7, 9, 32, 4)],
)
def test_plan_covers_every_pixel_once_per_tile(height, width, tile, overlap) -> None:
    plan = plan_bands(height, width, tile, overlap)
    assert (_coverage(plan) >= 1).all()
    assert len(set(plan.row_origins)) == len(plan.row_origins)  # no tile twice
    assert plan.row_origins[-1] + plan.tile_height == height  # last row flush with the edge
    assert plan.col_origins[-1] + plan.tile_width == width


def test_band_buffer_does_not_grow_with_scene_height() -> None:
    short = plan_bands(600, 2000, 512, 64)
    tall = plan_bands(100_000, 2000, 512, 64)
    assert tall.buffer_height == short.buffer_height == 512
    assert tall.buffer_shape(7) == (7, 512, 2000)
    # every band's rows fit the buffer, and finished rows advance to the scene end
    for i, band in enumerate(tall.bands):
        assert band[-1] + tall.tile_height - band[0] <= tall.buffer_height
        assert tall.finished_until(i) > band[0]
    assert tall.finished_until(len(tall.bands) - 1) == 100_000


def test_narrow_scene_groups_tile_rows_to_fill_a_batch() -> None:
    plan = plan_bands(5000, 512, 512, 64, min_tiles_per_band=4)
    assert plan.rows_per_band == 4
    assert plan.buffer_height == 512 + 3 * 448
    assert sum(len(b) for b in plan.bands) == len(plan.row_origins)


@pytest.mark.parametrize(("tile", "overlap"), [(0, 0), (32, 32), (32, -1)])
def test_plan_rejects_bad_tiling(tile: int, overlap: int) -> None:
    with pytest.raises(ValueError, match="tile"):
        plan_bands(10, 10, tile, overlap)


def test_blended_weights_normalise_to_one_across_seams() -> None:
    plan = plan_bands(300, 260, 64, 16)
    weight = np.zeros((plan.height, plan.width))
    first_r, last_r = plan.row_origins[0], plan.row_origins[-1]
    first_c, last_c = plan.col_origins[0], plan.col_origins[-1]
    value = np.zeros_like(weight)
    for r in plan.row_origins:
        for c in plan.col_origins:
            sides = (r != first_r, r != last_r, c != first_c, c != last_c)
            w = blend_window(64, 64, 16, sides=sides)
            weight[r : r + 64, c : c + 64] += w
            value[r : r + 64, c : c + 64] += 3.5 * w
    assert (weight > 0).all()
    np.testing.assert_allclose(value / weight, 3.5, rtol=1e-6)
    # corners and edges are covered by one tile at weight 1: no darkening at the scene border
    assert weight[0, 0] == 1 and weight[-1, -1] == 1
