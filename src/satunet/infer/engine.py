"""The streaming tiling engine: tiles in row bands, blended, read ahead and written behind.

A scene is cut into ``tile``-sized windows overlapping by ``overlap`` pixels (the last row and
column flush with the edge). Each window's logits are weighted by a smooth blend window (a
cosine ramp over the overlap, weight 1 on the scene edges) and summed into an accumulator,
which is divided by the summed weights: no seams, and a pixel covered by one tile is exactly
that tile's prediction. Windows smaller than the model's ``size_multiple`` are padded by
:func:`satunet.data.pixels.pad_to_multiple` (the rule evaluation uses) and cropped back.

The scene streams in row *bands* (see :func:`satunet.data.tiling.plan_bands`): read the band's
rows, predict its tiles in batches, blend into a band-sized accumulator, write the rows that no
later tile touches, shift the rest up. Three things run beside the main thread
(:mod:`satunet.infer.pipeline`): a reader thread reads the next band, the model runs
``in_flight`` batches ahead (the predictor's async ``map`` for OpenVINO, else a model thread),
and a writer thread encodes finished rows. The main thread cuts tiles from the raw band and
applies the pixel rule to each batch (bands stay in their file type, uint8 mostly: normalising
a whole band would hold three float32 copies of it, 4x the memory, to save the ~30% of the
normalising that overlapping tiles repeat), multiply-adds the logits into the accumulator
(numpy, in place) and argmaxes finished rows. The blend windows are separable and
the tiles form a grid, so the summed weights are an outer product of two 1-D sums (no 2-D
weight buffer). With W the scene width, C input bands, K classes, b the band height (``tile``,
or ``tile + (n - 1) * (tile - overlap)`` when n tile rows are needed to fill a batch on a
narrow scene), B the batch size and T the tile, peak memory is about

    4*K*b*W                 the accumulator: float32 weighted logits, (K, b, W)
  + 3*D*C*b*W               raw input rows (D bytes per sample, 1 for uint8): the band being
                            cut, the next one (prefetched) and the one being read
  + 4*C*B*T*T               the batch being normalised
  + 4*(K+1)*32*W            one 32-row chunk of finished rows being argmax'ed
  + 16*(1 + P*K)*32*W       finished uint8 chunks queued for the writer (P = 1 with probabilities)
  + (1 + P*K)*R*W           the writers' rows of output tiles being gathered (R: the tile height
                            of a tiled output, e.g. 256; see satunet.data.blockrows)
  + (in_flight+1)*model(B, T)  inputs, activations and logits of the batches in flight
                            (unet_skinny fp32, B=1, T=512: ~0.1-0.4 GB each)
  + 16 MB                   GDAL's block cache (satunet.data.geotiff.GDAL_CACHE_MB)
  + torch, the weights      fixed (import torch alone is ~0.6 GB RSS with a CUDA build)

which depends on the tile, overlap, classes, batch and scene *width*, never on scene height.

Pixels are scaled by :func:`satunet.data.pixels.scale_pixels` with the checkpoint's ``scale``
(None: uint8 / 255, uint16 / 65535, floats as given) and ``normalization``: the numbers the
model was trained on. Non-finite pixels (NaN, inf in float images) are no-data: they are fed to
the model as 0 and marked no-data, so they never spread NaN into their neighbours' logits.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Literal

import numpy as np
import torch
from torch import nn

from satunet.checkpoint import ModelInfo
from satunet.data.pixels import pad_to_multiple, scale_pixels
from satunet.data.tiling import BandPlan, BlendKind, blend_ramp, plan_bands
from satunet.errors import ConfigError, InputSizeError
from satunet.infer.pipeline import (
    StageTimes,
    predict_ahead,
    prefetch,
    release_free_memory,
    timed,
)
from satunet.infer.predictors import Precision, Predictor, TorchPredictor

NODATA = 255  # class value written where the input is no-data

Finish = Callable[[int, torch.Tensor, np.ndarray | None], None]
ReadRows = Callable[[int, int], tuple[np.ndarray, np.ndarray | None]]


def check_tiling(tile: int, overlap: int, batch_size: int, multiple: int) -> None:
    """Reject tile/overlap/batch values the model cannot run, saying which values work."""
    if tile < multiple or tile % multiple:
        # Never suggest a value that is itself refused (--tile 0 once suggested 0).
        lo = max(multiple, tile // multiple * multiple)
        hi = max(multiple, -(-tile // multiple) * multiple)
        hint = f"{lo}" if lo == hi else f"{lo} or {hi}"
        raise ConfigError(
            f"--tile {tile} does not fit the model: tiles must be multiples of {multiple} (its "
            f"size_multiple) and at least {multiple}; use --tile {hint}"
        )
    if not 0 <= overlap < tile:
        raise ConfigError(
            f"--overlap {overlap} must be >= 0 and smaller than --tile {tile}; about the "
            "model's receptive field (e.g. 64 for tile 512) removes seams"
        )
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")


def finite_rows(read: ReadRows) -> ReadRows:
    """``read`` with non-finite pixels (NaN, inf) set to 0 and added to the no-data mask."""

    def wrapped(row0: int, row1: int) -> tuple[np.ndarray, np.ndarray | None]:
        raw, nodata = read(row0, row1)
        if raw.dtype.kind != "f":
            return raw, nodata
        bad = ~np.isfinite(raw).all(axis=0)
        if not bad.any():
            return raw, nodata
        raw = np.where(bad[None], np.zeros((), raw.dtype), raw)
        return raw, bad if nodata is None else nodata | bad

    return wrapped


class BlendWeights:
    """The separable blend windows of a band plan and their running 1-D weight sums.

    Windows are float32 (the accumulator's type: one multiply-add per logit, no promotion);
    the 1-D sums stay float64 and their outer product is rounded once per finished row.
    """

    def __init__(self, plan: BandPlan, overlap: int, blend: BlendKind, rows: int):
        self.plan, self.overlap, self.blend = plan, overlap, blend
        self.first_row, self.last_row = plan.row_origins[0], plan.row_origins[-1]
        self.first_col, self.last_col = plan.col_origins[0], plan.col_origins[-1]
        self.row = np.zeros(rows, dtype=np.float64)
        self.col = np.zeros(plan.width, dtype=np.float64)
        for c in plan.col_origins:
            self.col[c : c + plan.tile_width] += self.col_ramp(c)
        self.windows: dict[tuple[int, int], np.ndarray] = {}  # keyed by the ramps' kinds

    def row_ramp(self, r: int) -> np.ndarray:
        start, end = r != self.first_row, r != self.last_row
        return blend_ramp(self.plan.tile_height, self.overlap, self.blend, start=start, end=end)

    def col_ramp(self, c: int) -> np.ndarray:
        start, end = c != self.first_col, c != self.last_col
        return blend_ramp(self.plan.tile_width, self.overlap, self.blend, start=start, end=end)

    def window(self, r: int, c: int) -> np.ndarray:
        key = (
            (r != self.first_row) + 2 * (r != self.last_row),
            (c != self.first_col) + 2 * (c != self.last_col),
        )
        if key not in self.windows:
            outer = np.outer(self.row_ramp(r), self.col_ramp(c)).astype(np.float32)
            self.windows[key] = outer
        return self.windows[key]

    def add_band(self, band: Iterable[int]) -> None:
        band = list(band)
        top, th = band[0], self.plan.tile_height
        for r in band:
            self.row[r - top : r - top + th] += self.row_ramp(r)

    def weight(self, r0: int, r1: int) -> np.ndarray:
        """The summed float32 weights of band rows [r0, r1): (r1 - r0, W)."""
        return np.outer(self.row[r0:r1], self.col).astype(np.float32)

    def shift(self, done: int) -> None:
        keep = self.row.shape[0] - done
        self.row[:keep] = self.row[done:].copy()
        self.row[keep:] = 0


# One batch of one band: (band index, its tiles' origins, the band's no-data mask on its last
# batch, last batch of the band?).
BatchTicket = tuple[int, list[tuple[int, int]], np.ndarray | None, bool]


def band_batches(
    plan: BandPlan,
    inputs: Iterator[tuple[np.ndarray, np.ndarray | None]],
    info: ModelInfo,
    batch_size: int,
    tickets: deque[BatchTicket],
    times: StageTimes | None,
) -> Iterator[np.ndarray]:
    """The model input of every batch of every band, in order; a ticket per batch says which."""
    th, tw = plan.tile_height, plan.tile_width
    for i, (band, (x, nodata)) in enumerate(zip(plan.bands, inputs, strict=True)):
        top = band[0]
        tiles = [(r, c) for r in band for c in plan.col_origins]
        for k in range(0, len(tiles), batch_size):
            group = tiles[k : k + batch_size]
            with timed(times, "prepare"):
                # Bands stay raw (uint8: a quarter of float32's memory, x3 bands held at once
                # on a wide scene); the pixel rule runs per batch, on the model's input only.
                batch = np.stack([x[:, r - top : r - top + th, c : c + tw] for r, c in group])
                batch = scale_pixels(batch, info.scale, info.normalization)
                batch = pad_to_multiple(batch, info.size_multiple)
            last = k + batch_size >= len(tiles)
            tickets.append((i, group, nodata if last else None, last))
            yield batch
        del x, nodata


def add_tiles(
    acc: np.ndarray, logits: np.ndarray, tiles: list[tuple[int, int]], top: int, w: BlendWeights
) -> None:
    """Add each tile's weighted logits to the band accumulator (in place, no temporaries).

    One class plane at a time: the weighted plane (1 MB for a 512 px tile) is still in the
    CPU cache when it is added, ~15% less CPU than weighting the whole tile first."""
    th, tw = w.plan.tile_height, w.plan.tile_width
    logits = np.asarray(logits, dtype=np.float32)
    if not logits.flags.writeable:
        logits = logits.copy()
    for (r, c), tile_logits in zip(tiles, logits, strict=True):
        window, targets = w.window(r, c), acc[:, r - top : r - top + th, c : c + tw]
        for plane, target in zip(tile_logits, targets, strict=True):
            part = plane[:th, :tw]
            np.multiply(part, window, out=part)
            np.add(target, part, out=target)


def argmax_classes(logits: np.ndarray) -> np.ndarray:
    """(K, n, W) logits -> (n, W) uint8 class ids, the first class on ties (``argmax(0)``).

    numpy's ``argmax`` over the leading axis runs a scalar loop per pixel (~2.5 s of main-thread
    CPU for an 86 Mpx scene, torch's was ~5x slower); the maximum over that axis is a vector
    reduction, so this takes it and marks, from the last class to the first, where each class
    reaches it: the same ids about 10x faster, in uint8 passes. A NaN logit (never made by the
    engine: non-finite pixels are fed as 0) falls back to ``argmax``, which treats NaN as largest.
    """
    k = logits.shape[0]
    if k >= 256:
        return logits.argmax(0).astype(np.uint8)  # ids that do not fit uint8 wrap as before
    top = logits.max(0)
    if np.isnan(top).any():
        return logits.argmax(0).astype(np.uint8)
    ids = np.zeros(top.shape, dtype=np.uint8)
    hit = np.empty(top.shape, dtype=bool)
    hit8, step = hit.view(np.uint8), np.empty_like(ids)
    for c in range(k - 1, 0, -1):
        np.equal(logits[c], top, out=hit)
        # ids = c where hit, else ids; uint8 arithmetic wraps, so ids - (ids - c) * hit does it
        np.subtract(ids, np.uint8(c), out=step)
        np.multiply(step, hit8, out=step)
        np.subtract(ids, step, out=ids)
    np.not_equal(logits[0], top, out=hit)  # class 0 wins wherever it reaches the maximum
    np.multiply(ids, hit8, out=ids)
    return ids


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the class axis of (K, n, W) logits, float32, as a new array."""
    e = logits - logits.max(0, keepdims=True)
    np.exp(e, out=e)
    e /= e.sum(0, keepdims=True)
    return e


def finish_band(
    i: int,
    plan: BandPlan,
    acc: np.ndarray,
    weights: BlendWeights,
    nodata: np.ndarray | None,
    finish: Finish,
    chunk_rows: int,
) -> None:
    """Hand band ``i``'s final rows to ``finish``, then shift the rows still open to the top."""
    top = plan.bands[i][0]
    done = plan.finished_until(i) - top
    for r0 in range(0, done, chunk_rows):
        r1 = min(done, r0 + chunk_rows)
        rows = acc[:, r0:r1]
        np.divide(rows, weights.weight(r0, r1), out=rows)  # final rows: divided in place
        finish(top + r0, torch.from_numpy(rows), nodata[r0:r1] if nodata is not None else None)
    # Shift the rows later tiles still add to up to the top (numpy copies overlaps safely).
    keep = acc.shape[1] - done
    acc[:, :keep] = acc[:, done:]
    acc[:, keep:] = 0
    weights.shift(done)


def run_bands(
    read: ReadRows,
    plan: BandPlan,
    predictor: Predictor,
    finish: Finish,
    *,
    overlap: int,
    batch_size: int = 1,
    blend: BlendKind = "cosine",
    progress: bool = False,
    chunk_rows: int = 32,
    in_flight: int = 2,
    times: StageTimes | None = None,
) -> tuple[int, int, int]:
    """Predict a scene band by band; ``finish(row0, logits, nodata)`` gets final rows in order.

    ``logits`` is a float32 (K, n, W) tensor of blended logits for scene rows [row0, row0 + n),
    at most ``chunk_rows`` rows at a time, valid only during the call (it is a view of the
    accumulator); ``nodata`` marks no-data input pixels (a mask from ``read``, plus
    non-finite pixels), or is None. Up to ``in_flight`` batches are predicted ahead (see
    :func:`satunet.infer.pipeline.predict_ahead`); ``times`` collects seconds per stage.
    Returns the accumulator's shape (K, b, W).
    """
    from tqdm.auto import tqdm

    info = predictor.info
    shape = plan.buffer_shape(info.num_classes)
    acc = np.zeros(shape, dtype=np.float32)
    weights = BlendWeights(plan, overlap, blend, shape[1])
    spans = [(band[0], band[-1] + plan.tile_height) for band in plan.bands]
    total = len(plan.row_origins) * len(plan.col_origins)
    bar = tqdm(total=total, unit="tile", disable=None if progress else True, leave=False)
    tickets: deque[BatchTicket] = deque()
    current = -1
    with prefetch(finite_rows(read), spans, times) as inputs, bar:
        batches = band_batches(plan, inputs, info, batch_size, tickets, times)
        for logits in predict_ahead(predictor, batches, max(1, in_flight), times):
            i, tiles, nodata, last = tickets.popleft()
            if i != current:  # the band's first batch: its rows' weights join the sums
                weights.add_band(plan.bands[i])
                current = i
            with timed(times, "blend"):
                add_tiles(acc, logits, tiles, plan.bands[i][0], weights)
            bar.update(len(tiles))
            del logits
            if last:
                with timed(times, "finish"):
                    finish_band(i, plan, acc, weights, nodata, finish, chunk_rows)
                del nodata
                release_free_memory()
    return shape


def predict_array(
    model: nn.Module | Predictor,
    image: np.ndarray,
    *,
    tile: int | None = 512,
    overlap: int = 64,
    batch_size: int = 1,
    blend: BlendKind = "cosine",
    output: Literal["classes", "logits", "probabilities"] = "classes",
    normalization: dict[str, list[float]] | None = None,
    scale: float | None = None,
    device: str = "cpu",
    precision: Precision = "fp32",
) -> np.ndarray:
    """Predict an in-memory (C, H, W) image (uint8, uint16, or float already in [0, 1]).

    ``tile=None`` predicts the whole image at once (padded to the model's multiple). Returns
    (H, W) uint8 classes, or (K, H, W) float32 logits/probabilities. A bare module uses its
    ``in_channels``/``num_classes``/``size_multiple`` attributes, ``scale`` and
    ``normalization``. Non-finite pixels (NaN/inf in any band) are no-data: their class is
    :data:`NODATA` (255) and their logits/probabilities are NaN; other pixels are predicted
    as if those pixels were 0.
    """
    if isinstance(model, Predictor):
        predictor = model
    else:
        info = ModelInfo.from_model(model, normalization=normalization, scale=scale)
        predictor = TorchPredictor(model, info=info, device=device, precision=precision)
    info = predictor.info
    if image.ndim != 3 or image.shape[0] != info.in_channels:
        raise InputSizeError(
            f"expected a (C, H, W) image with C = {info.in_channels} bands, got shape "
            f"{tuple(image.shape)}; transpose (H, W, C) arrays with image.transpose(2, 0, 1)"
        )
    height, width = image.shape[1:]
    multiple = info.size_multiple
    if tile is None:
        tile = -(-max(height, width) // multiple) * multiple
    check_tiling(tile, overlap, batch_size, multiple)
    plan = plan_bands(height, width, tile, overlap, min_tiles_per_band=batch_size)
    classes = output == "classes"
    result = np.zeros(
        (height, width) if classes else (info.num_classes, height, width),
        dtype=np.uint8 if classes else np.float32,
    )

    def finish(row0: int, logits: torch.Tensor, nodata: np.ndarray | None) -> None:
        rows = slice(row0, row0 + logits.shape[1])
        if classes:
            result[rows] = argmax_classes(logits.numpy())
        elif output == "probabilities":
            result[:, rows] = softmax(logits.numpy())
        else:
            result[:, rows] = logits.numpy()
        if nodata is not None:
            if classes:
                result[rows][nodata] = NODATA
            else:
                result[:, rows][:, nodata] = np.nan

    def read(r0: int, r1: int) -> tuple[np.ndarray, None]:
        return image[:, r0:r1], None

    run_bands(read, plan, predictor, finish, overlap=overlap, batch_size=batch_size, blend=blend)
    return result
