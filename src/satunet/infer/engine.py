"""The streaming tiling engine: tiles in row bands, blended, read ahead and written behind.

A scene is cut into ``tile``-sized windows overlapping by ``overlap`` pixels (the last row and
column flush with the edge). Each window's logits are weighted by a smooth blend window (a
cosine ramp over the overlap, weight 1 on the scene edges) and summed into an accumulator,
which is divided by the summed weights: no seams, and a pixel covered by one tile is exactly
that tile's prediction. Windows smaller than the model's ``size_multiple`` are padded by
:func:`satunet.data.pixels.pad_to_multiple` (the rule evaluation uses) and cropped back.

The scene streams in row *bands* (see :func:`satunet.data.tiling.plan_bands`): read the band's
rows, predict its tiles in batches, blend into a band-sized accumulator, write the rows that no
later tile touches, shift the rest up. A background thread reads the next band and another
writes finished rows while the model runs. The blend windows are separable and the tiles form
a grid, so the summed weights are an outer product of two 1-D sums (no 2-D weight buffer).
With W the scene width, C input bands (s bytes each), K classes, b the band height (``tile``,
or ``tile + (n - 1) * (tile - overlap)`` when n tile rows are needed to fill a batch on a narrow
scene), B the batch size and T the tile, peak memory is about

    4*K*b*W                 the accumulator: float32 weighted logits, (K, b, W)
  + 2*s*C*b*W               raw input rows: the current band and the prefetched one
  + 4*(K+1)*32*W            one 32-row chunk of finished logits being divided and argmax'ed
  + 3*(1 + P*K)*32*W        finished uint8 chunks queued for the writer (P = 1 with probabilities)
  + model(B, T)             activations for one batch of tiles (unet_skinny fp32, B=1, T=512:
                            ~0.1-0.4 GB)
  + 16 MB                   GDAL's block cache (satunet.data.geotiff.GDAL_CACHE_MB)
  + torch, the weights      fixed (import torch alone is ~0.6 GB RSS with a CUDA build)

which depends on the tile, overlap, classes, batch and scene *width*, never on scene height.

Pixels are scaled by :func:`satunet.data.pixels.scale_pixels` with the checkpoint's ``scale``
(None: uint8 / 255, uint16 / 65535, floats as given) and ``normalization``: the numbers the
model was trained on. Non-finite pixels (NaN, inf in float images) are no-data: they are fed to
the model as 0 and marked no-data, so they never spread NaN into their neighbours' logits.
"""

from __future__ import annotations

import contextlib
import ctypes
import queue
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from satunet.checkpoint import ModelInfo
from satunet.data.pixels import pad_to_multiple, scale_pixels
from satunet.data.tiling import BandPlan, BlendKind, blend_ramp, plan_bands
from satunet.errors import ConfigError, InputSizeError
from satunet.infer.predictors import Precision, Predictor, TorchPredictor

NODATA = 255  # class value written where the input is no-data

Finish = Callable[[int, torch.Tensor, np.ndarray | None], None]
ReadRows = Callable[[int, int], tuple[np.ndarray, np.ndarray | None]]


def check_tiling(tile: int, overlap: int, batch_size: int, multiple: int) -> None:
    """Reject tile/overlap/batch values the model cannot run, saying which values work."""
    if tile < multiple or tile % multiple:
        lo, hi = max(multiple, tile // multiple * multiple), -(-tile // multiple) * multiple
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


@contextlib.contextmanager
def prefetch(read: ReadRows, spans: list[tuple[int, int]]) -> Iterator[Iterator[Any]]:
    """Read ``spans`` in a background thread, one ahead of the consumer.

    At most two bands are alive: the one in use and the one being read or waiting. The
    consumer gives its band back (a permit) when it asks for the next one.
    """
    q: queue.Queue = queue.Queue()
    permits = threading.Semaphore(2)
    stop = threading.Event()

    def work() -> None:
        for span in spans:
            while not permits.acquire(timeout=0.1):
                if stop.is_set():
                    return
            if stop.is_set():
                return
            try:
                q.put(("ok", read(*span)))
            except BaseException as e:  # noqa: BLE001 - handed to the consumer thread
                q.put(("error", e))
                return

    def items() -> Iterator[Any]:
        for k in range(len(spans)):
            if k:
                permits.release()  # the previous band is done with
            kind, value = q.get()
            if kind == "error":
                raise value
            yield value

    thread = threading.Thread(target=work, name="satunet-read", daemon=True)
    thread.start()
    try:
        yield items()
    finally:
        stop.set()
        thread.join()


_malloc_trim: Any = None


def release_free_memory() -> None:
    """Give freed heap memory back to the OS (glibc only; elsewhere a no-op).

    Band-sized arrays are allocated and freed once per band, from two threads; glibc keeps the
    freed space in per-thread arenas, so without a trim the resident size creeps up with the
    number of bands, i.e. with the scene height.
    """
    global _malloc_trim
    if _malloc_trim is None:
        _malloc_trim = False
        if sys.platform.startswith("linux"):
            try:
                _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
            except (OSError, AttributeError):
                pass
    if _malloc_trim:
        _malloc_trim(0)


class Writer:
    """Runs write jobs in a background thread, in order; the first error is raised on close."""

    def __init__(self) -> None:
        self.q: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._work, name="satunet-write", daemon=True)
        self.thread.start()

    def _work(self) -> None:
        while (job := self.q.get()) is not None:
            if self.error is None:
                try:
                    job()
                except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
                    self.error = e

    def submit(self, job: Callable[[], None]) -> None:
        if self.error is not None:
            raise self.error
        self.q.put(job)

    def close(self) -> None:
        self.q.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


class BlendWeights:
    """The separable blend windows of a band plan and their running 1-D weight sums."""

    def __init__(self, plan: BandPlan, overlap: int, blend: BlendKind, rows: int):
        self.plan, self.overlap, self.blend = plan, overlap, blend
        self.first_row, self.last_row = plan.row_origins[0], plan.row_origins[-1]
        self.first_col, self.last_col = plan.col_origins[0], plan.col_origins[-1]
        self.row = torch.zeros(rows, dtype=torch.float64)
        self.col = torch.zeros(plan.width, dtype=torch.float64)
        for c in plan.col_origins:
            self.col[c : c + plan.tile_width] += torch.from_numpy(self.col_ramp(c))
        self.windows: dict[tuple[int, int], torch.Tensor] = {}  # keyed by the ramps' kinds

    def row_ramp(self, r: int) -> np.ndarray:
        start, end = r != self.first_row, r != self.last_row
        return blend_ramp(self.plan.tile_height, self.overlap, self.blend, start=start, end=end)

    def col_ramp(self, c: int) -> np.ndarray:
        start, end = c != self.first_col, c != self.last_col
        return blend_ramp(self.plan.tile_width, self.overlap, self.blend, start=start, end=end)

    def window(self, r: int, c: int) -> torch.Tensor:
        key = (
            (r != self.first_row) + 2 * (r != self.last_row),
            (c != self.first_col) + 2 * (c != self.last_col),
        )
        if key not in self.windows:
            self.windows[key] = torch.from_numpy(np.outer(self.row_ramp(r), self.col_ramp(c)))
        return self.windows[key]

    def add_band(self, band: list[int]) -> None:
        top, th = band[0], self.plan.tile_height
        for r in band:
            self.row[r - top : r - top + th] += torch.from_numpy(self.row_ramp(r))

    def shift(self, done: int) -> None:
        keep = self.row.shape[0] - done
        self.row[:keep] = self.row[done:].clone()
        self.row[keep:] = 0


def predict_band(
    raw: np.ndarray,
    band: list[int],
    acc: torch.Tensor,
    weights: BlendWeights,
    predictor: Predictor,
    batch_size: int,
) -> int:
    """Predict every tile of one band and add its weighted logits to ``acc``; returns tiles run."""
    info, plan = predictor.info, weights.plan
    th, tw, top = plan.tile_height, plan.tile_width, band[0]
    tiles = [(r, c) for r in band for c in plan.col_origins]
    for k in range(0, len(tiles), batch_size):
        batch_tiles = tiles[k : k + batch_size]
        x = np.stack([raw[:, r - top : r - top + th, c : c + tw] for r, c in batch_tiles])
        x = scale_pixels(x, info.scale, info.normalization)
        logits = torch.from_numpy(predictor(pad_to_multiple(x, info.size_multiple)))
        for (r, c), tile_logits in zip(batch_tiles, logits, strict=True):
            rows, cols = slice(r - top, r - top + th), slice(c, c + tw)
            acc[:, rows, cols].add_(tile_logits[:, :th, :tw] * weights.window(r, c))
    return len(tiles)


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
) -> tuple[int, int, int]:
    """Predict a scene band by band; ``finish(row0, logits, nodata)`` gets final rows in order.

    ``logits`` is a float32 (K, n, W) tensor of blended logits for scene rows [row0, row0 + n),
    at most ``chunk_rows`` rows at a time; ``nodata`` marks no-data input pixels (a mask from
    ``read``, plus non-finite pixels), or is None. Returns the accumulator's shape (K, b, W).
    """
    from tqdm.auto import tqdm

    shape = plan.buffer_shape(predictor.info.num_classes)
    acc = torch.zeros(shape, dtype=torch.float32)
    weights = BlendWeights(plan, overlap, blend, shape[1])
    spans = [(band[0], band[-1] + plan.tile_height) for band in plan.bands]
    total = len(plan.row_origins) * len(plan.col_origins)
    bar = tqdm(total=total, unit="tile", disable=None if progress else True, leave=False)
    with prefetch(finite_rows(read), spans) as inputs, bar:
        for i, (band, raw_and_mask) in enumerate(zip(plan.bands, inputs, strict=True)):
            raw, nodata = raw_and_mask
            top = band[0]
            weights.add_band(band)
            bar.update(predict_band(raw, band, acc, weights, predictor, batch_size))
            done = plan.finished_until(i) - top
            for r0 in range(0, done, chunk_rows):
                r1 = min(done, r0 + chunk_rows)
                weight = torch.outer(weights.row[r0:r1], weights.col).float()
                mask = nodata[r0:r1] if nodata is not None else None
                finish(top + r0, acc[:, r0:r1] / weight, mask)
            # Shift the rows later tiles still add to up to the top; zero the rest.
            keep = shape[1] - done
            # (the usual case done >= keep does not overlap: copy without a temporary)
            acc[:, :keep] = acc[:, done:] if done >= keep else acc[:, done:].clone()
            acc[:, keep:] = 0
            weights.shift(done)
            del raw, nodata, raw_and_mask
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
            result[rows] = logits.argmax(0).numpy()
        elif output == "probabilities":
            result[:, rows] = logits.softmax(0).numpy()
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
