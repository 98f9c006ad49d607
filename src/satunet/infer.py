"""Scene inference at any size: tiled, blended, streamed in row bands; ONNX export and runtime.

A scene is cut into ``tile``-sized windows overlapping by ``overlap`` pixels (the last row and
column flush with the edge). Each window's logits are weighted by a smooth blend window (a
cosine ramp over the overlap, weight 1 on the scene edges) and summed into an accumulator,
which is divided by the summed weights: no seams, and a pixel covered by one tile is exactly
that tile's prediction. Windows smaller than the model's ``size_multiple`` are reflect-padded
and cropped back.

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
PNG/JPEG inputs are the exception: they cannot be decoded by window, so they are held whole.

Pixels are scaled to [0, 1] first (uint8 / 255, uint16 / 65535), then normalised with the
checkpoint's ``normalization`` mean/std per band when it has one.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import queue
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from satunet.data.geotiff import (
    RasterWriter,
    SceneInfo,
    check_output_dir,
    gdal_env,
    open_scene,
    temporary_name,
)
from satunet.data.tiling import BandPlan, BlendKind, blend_ramp, plan_bands
from satunet.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DeviceError,
    InputSizeError,
    OutputError,
)

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
Backend = Literal["torch", "onnx"]
Precision = Literal["fp32", "bf16", "fp16"]
OutputFormat = Literal["auto", "loveda-submission"]
NODATA = 255  # class value written where the input is no-data
PREVIEW_MAX_SIDE = 2048
# Distinct colours for checkpoints without a palette (tab10, then tab20's light shades).
DEFAULT_PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
)  # fmt: skip
LOVEDA_TEST_IMAGES = 1796  # official LoveDA test split: 820 urban + 976 rural
LOVEDA_SIZE = 1024


# ----------------------------------------------------------------------------- model side


@dataclass(frozen=True)
class ModelInfo:
    """What inference needs to know about a model besides its weights (from the checkpoint)."""

    name: str
    in_channels: int
    num_classes: int
    size_multiple: int
    classes: tuple[str, ...] | None = None
    normalization: dict[str, list[float]] | None = None
    ignore_index: int | None = None
    palette: tuple[tuple[int, int, int], ...] | None = None

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any], model: nn.Module) -> ModelInfo:
        palette = state.get("palette")
        return cls(
            name=str(state["model"]),
            in_channels=int(state["in_channels"]),
            num_classes=int(state["num_classes"]),
            size_multiple=int(getattr(model, "size_multiple", 1)),
            classes=tuple(state["classes"]) if state.get("classes") else None,
            normalization=state.get("normalization"),
            ignore_index=state.get("ignore_index"),
            palette=tuple(tuple(int(v) for v in c) for c in palette) if palette else None,
        )

    @classmethod
    def from_model(cls, model: nn.Module, **overrides: Any) -> ModelInfo:
        """Describe a bare module by its ``in_channels``/``num_classes``/``size_multiple``."""
        values = {
            "name": type(model).__name__,
            "in_channels": getattr(model, "in_channels", None),
            "num_classes": getattr(model, "num_classes", None),
            "size_multiple": getattr(model, "size_multiple", 1),
        } | overrides
        if values["in_channels"] is None or values["num_classes"] is None:
            raise ValueError(
                f"{type(model).__name__} has no in_channels/num_classes attributes; pass "
                "ModelInfo(...) or give the model those attributes"
            )
        return cls(**values)

    def class_names(self) -> tuple[str, ...]:
        return self.classes or tuple(f"class {i}" for i in range(self.num_classes))

    def colours(self) -> tuple[tuple[int, int, int], ...]:
        if self.palette and len(self.palette) >= self.num_classes:
            return self.palette
        n = len(DEFAULT_PALETTE)
        return tuple(DEFAULT_PALETTE[i % n] for i in range(self.num_classes))


class Predictor:
    """Runs a model on float32 (B, C, H, W) numpy batches and returns float32 logits."""

    info: ModelInfo

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """(B, C, H, W) float32 with H, W multiples of ``info.size_multiple`` -> (B, K, H, W)."""
        raise NotImplementedError


class TorchPredictor(Predictor):
    """A PyTorch model on ``device`` in ``precision`` (autocast), via :mod:`satunet.speed`.

    ``channels_last`` defaults to on for bf16/fp16, where oneDNN and tensor cores gain most.
    ``fold_bn`` folds BatchNorm into the convs (a copy): faster and less activation memory,
    equal to the original within float rounding; the copy's ReLUs also run in place when that
    leaves the output identical. Both are on in :func:`load_predictor`.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        info: ModelInfo | None = None,
        device: str = "cpu",
        precision: Precision = "fp32",
        channels_last: bool | None = None,
        fold_bn: bool = False,
    ):
        from satunet.errors import SatunetError
        from satunet.speed import prepare_for_inference

        self.info = info or ModelInfo.from_model(model)
        self.device, self.precision = device, precision
        self.channels_last = precision != "fp32" if channels_last is None else channels_last
        options = {"device": device, "precision": precision, "channels_last": self.channels_last}
        try:
            self.model = prepare_for_inference(model, fold_bn=fold_bn, **options)
        except SatunetError as e:
            if not fold_bn or isinstance(e, DeviceError):
                raise
            log.warning("running %s without BatchNorm folding: %s", self.info.name, e)
            self.model = prepare_for_inference(model, fold_bn=False, **options)
        else:
            if fold_bn:  # self.model is our own copy: safe to change
                self._relu_in_place()

    def _relu_in_place(self) -> None:
        """Make ReLUs in-place (one activation less per block) if the output stays identical."""
        relus = [m for m in self.model.modules() if type(m) is nn.ReLU and not m.inplace]
        side = max(64, 2 * self.info.size_multiple)
        x = torch.rand(1, self.info.in_channels, side, side, generator=torch.Generator())
        x = x.to(self.device)
        with torch.inference_mode():
            reference = self.model(x)
            for m in relus:
                m.inplace = True
            if not torch.equal(self.model(x), reference):
                for m in relus:
                    m.inplace = False

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        from satunet.speed import inference_context, to_input

        x = to_input(torch.from_numpy(batch), self.device, self.channels_last)
        with inference_context(self.device, self.precision):
            logits = self.model(x)
        return logits.float().cpu().numpy()


class OnnxPredictor(Predictor):
    """An ONNX model run by ONNX Runtime with the CPU or CUDA execution provider."""

    def __init__(self, path: PathLike, *, info: ModelInfo | None = None, device: str = "cpu"):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(
                f"ONNX model {path} does not exist; create it with "
                "`satunet export CHECKPOINT --onnx FILE`"
            )
        available = ort.get_available_providers()
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in available:
                raise DeviceError(
                    f"--device {device} with --backend onnx needs onnxruntime-gpu (providers "
                    f"here: {', '.join(available)}); install onnxruntime-gpu or use --device cpu"
                )
            index = int(device.split(":")[1]) if ":" in device else 0
            providers: list[Any] = [("CUDAExecutionProvider", {"device_id": index})]
            providers.append("CPUExecutionProvider")
        elif device == "cpu":
            providers = ["CPUExecutionProvider"]
        else:
            raise DeviceError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N'")
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
            raise CheckpointError(
                f"{path} is not a valid ONNX model: {str(e).splitlines()[0]}"
            ) from e
        self.info = info or read_onnx_info(path)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch)})[0]


def load_predictor(
    checkpoint: PathLike,
    *,
    backend: Backend = "torch",
    device: str = "cpu",
    precision: Precision = "fp32",
    onnx: PathLike | None = None,
) -> Predictor:
    """A predictor from a satunet checkpoint (.pt) or an ONNX file made by :func:`export_onnx`.

    With ``backend="onnx"`` and a .pt checkpoint, ``onnx`` names the exported file (default: the
    checkpoint path with suffix .onnx); its embedded metadata must match the checkpoint.
    """
    from satunet.speed import check_device

    checkpoint = Path(checkpoint)
    if checkpoint.suffix.lower() == ".onnx":
        backend, onnx = "onnx", checkpoint
    if backend == "onnx":
        if precision != "fp32":
            raise ConfigError("--backend onnx runs the exported fp32 graph: use --precision fp32")
        onnx_path = Path(onnx) if onnx is not None else checkpoint.with_suffix(".onnx")
        predictor = OnnxPredictor(onnx_path, device=device)
        if onnx_path != checkpoint:
            from satunet.checkpoint import read_checkpoint

            state = read_checkpoint(checkpoint)
            for key in ("model", "in_channels", "num_classes"):
                ours = getattr(predictor.info, "name" if key == "model" else key)
                if ours != state[key]:
                    raise CheckpointError(
                        f"{onnx_path} was exported from another model ({key} {ours!r}, "
                        f"checkpoint {checkpoint} has {state[key]!r}); re-run satunet export"
                    )
        return predictor
    if backend != "torch":
        raise ConfigError(f"unknown backend {backend!r}: use 'torch' or 'onnx'")
    check_device(device, precision)
    from satunet.checkpoint import load_checkpoint

    model, state = load_checkpoint(checkpoint)
    info = ModelInfo.from_checkpoint(state, model)
    return TorchPredictor(
        model, info=info, device=device, precision=precision, channels_last=True, fold_bn=True
    )


# ----------------------------------------------------------------------------- tiling engine


def scale_pixels(raw: np.ndarray, normalization: dict[str, list[float]] | None) -> np.ndarray:
    """uint8 / 255 or uint16 / 65535 (floats as given), then per-band (x - mean) / std."""
    if raw.dtype == np.uint8:
        x = raw.astype(np.float32) / np.float32(255)
    elif raw.dtype == np.uint16:
        x = raw.astype(np.float32) / np.float32(65535)
    else:
        x = raw.astype(np.float32, copy=False)
    if normalization:
        shape = (-1, 1, 1)  # per band, for (C, H, W) images and (B, C, H, W) batches
        mean = np.asarray(normalization["mean"], dtype=np.float32).reshape(shape)
        std = np.asarray(normalization["std"], dtype=np.float32).reshape(shape)
        x = (x - mean) / std
    return x


def pad_to_multiple(batch: np.ndarray, multiple: int) -> np.ndarray:
    """Reflect-pad (B, C, H, W) at the bottom/right to multiples of ``multiple``.

    numpy's reflect repeats the reflection when the pad is wider than the image.
    """
    h, w = batch.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if not ph and not pw:
        return batch
    mode = "reflect" if h > 1 and w > 1 else "edge"
    return np.pad(batch, ((0, 0), (0, 0), (0, ph), (0, pw)), mode=mode)


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


Finish = Callable[[int, torch.Tensor, np.ndarray | None], None]
ReadRows = Callable[[int, int], tuple[np.ndarray, np.ndarray | None]]


@contextlib.contextmanager
def _prefetch(read: ReadRows, spans: list[tuple[int, int]]) -> Iterator[Iterator[Any]]:
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


def _release_free_memory() -> None:
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


_malloc_trim: Any = None


class _Writer:
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
    at most ``chunk_rows`` rows at a time. Returns the accumulator's shape (K, b, W).

    Every tile's blend window is an outer product of a row ramp and a column ramp, and the tiles
    form a grid, so the summed weights are the outer product of two 1-D sums: no 2-D weight
    buffer is needed.
    """
    from tqdm.auto import tqdm

    info = predictor.info
    th, tw = plan.tile_height, plan.tile_width
    bands = plan.bands
    shape = plan.buffer_shape(info.num_classes)
    acc = torch.zeros(shape, dtype=torch.float32)
    row_weight = torch.zeros(shape[1], dtype=torch.float64)
    first_row, last_row = plan.row_origins[0], plan.row_origins[-1]
    first_col, last_col = plan.col_origins[0], plan.col_origins[-1]

    def row_ramp(r: int) -> np.ndarray:
        return blend_ramp(th, overlap, blend, start=r != first_row, end=r != last_row)

    def col_ramp(c: int) -> np.ndarray:
        return blend_ramp(tw, overlap, blend, start=c != first_col, end=c != last_col)

    col_weight = torch.zeros(plan.width, dtype=torch.float64)
    for c in plan.col_origins:
        col_weight[c : c + tw] += torch.from_numpy(col_ramp(c))
    windows: dict[tuple[int, int], torch.Tensor] = {}  # keyed by the ramps' kinds

    def window(r: int, c: int) -> torch.Tensor:
        key = ((r != first_row) + 2 * (r != last_row), (c != first_col) + 2 * (c != last_col))
        if key not in windows:
            windows[key] = torch.from_numpy(np.outer(row_ramp(r), col_ramp(c)))
        return windows[key]

    spans = [(band[0], band[-1] + th) for band in bands]
    total = len(plan.row_origins) * len(plan.col_origins)
    bar = tqdm(total=total, unit="tile", disable=None if progress else True, leave=False)
    with _prefetch(read, spans) as inputs, bar:
        for i, (band, raw_and_mask) in enumerate(zip(bands, inputs, strict=True)):
            raw, nodata = raw_and_mask
            top = band[0]
            for r in band:
                row_weight[r - top : r - top + th] += torch.from_numpy(row_ramp(r))
            tiles = [(r, c) for r in band for c in plan.col_origins]
            for k in range(0, len(tiles), batch_size):
                batch_tiles = tiles[k : k + batch_size]
                x = np.stack([raw[:, r - top : r - top + th, c : c + tw] for r, c in batch_tiles])
                x = pad_to_multiple(scale_pixels(x, info.normalization), info.size_multiple)
                logits = torch.from_numpy(predictor(x))
                for (r, c), tile_logits in zip(batch_tiles, logits, strict=True):
                    rows, cols = slice(r - top, r - top + th), slice(c, c + tw)
                    acc[:, rows, cols].add_(tile_logits[:, :th, :tw] * window(r, c))
                bar.update(len(batch_tiles))
            done = plan.finished_until(i) - top
            for r0 in range(0, done, chunk_rows):
                r1 = min(done, r0 + chunk_rows)
                weight = torch.outer(row_weight[r0:r1], col_weight).float()
                mask = nodata[r0:r1] if nodata is not None else None
                finish(top + r0, acc[:, r0:r1] / weight, mask)
            # Shift the rows later tiles still add to up to the top; zero the rest.
            keep = shape[1] - done
            # (the usual case done >= keep does not overlap: copy without a temporary)
            acc[:, :keep] = acc[:, done:] if done >= keep else acc[:, done:].clone()
            acc[:, keep:] = 0
            row_weight[:keep] = row_weight[done:].clone()
            row_weight[keep:] = 0
            del raw, nodata, raw_and_mask
            _release_free_memory()
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
    device: str = "cpu",
    precision: Precision = "fp32",
) -> np.ndarray:
    """Predict an in-memory (C, H, W) image (uint8, uint16, or float already in [0, 1]).

    ``tile=None`` predicts the whole image at once (padded to the model's multiple). Returns
    (H, W) uint8 classes, or (K, H, W) float32 logits/probabilities. A bare module uses its
    ``in_channels``/``num_classes``/``size_multiple`` attributes and ``normalization``.
    """
    if isinstance(model, Predictor):
        predictor = model
    else:
        info = ModelInfo.from_model(model, normalization=normalization)
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
    result = np.zeros(
        (height, width) if output == "classes" else (info.num_classes, height, width),
        dtype=np.uint8 if output == "classes" else np.float32,
    )

    def finish(row0: int, logits: torch.Tensor, _nodata: np.ndarray | None) -> None:
        rows = slice(row0, row0 + logits.shape[1])
        if output == "classes":
            result[rows] = logits.argmax(0).numpy()
        elif output == "probabilities":
            result[:, rows] = logits.softmax(0).numpy()
        else:
            result[:, rows] = logits.numpy()

    def read(r0: int, r1: int) -> tuple[np.ndarray, None]:
        return image[:, r0:r1], None

    run_bands(read, plan, predictor, finish, overlap=overlap, batch_size=batch_size, blend=blend)
    return result


# ----------------------------------------------------------------------------- scenes


@dataclass
class SceneResult:
    """What :func:`predict_scene` wrote and how fast."""

    input: Path
    outputs: dict[str, Path]
    height: int
    width: int
    seconds: float
    buffer_shape: tuple[int, int, int]  # the accumulator: (K, band rows, width), never H-sized
    area_km2: float | None = None  # ground area, for a projected CRS
    nodata_pixels: int = 0

    @property
    def megapixels_per_s(self) -> float:
        return self.height * self.width / 1e6 / max(self.seconds, 1e-9)

    @property
    def km2_per_min(self) -> float | None:
        return None if self.area_km2 is None else self.area_km2 / max(self.seconds, 1e-9) * 60


def submission_classes(info: ModelInfo) -> list[int]:
    """Model class indices in LoveDA submission order (values 0..6): background..agriculture.

    Matched by class name when the checkpoint has names (a no-data class is left out); else a
    7-class model maps one to one and an 8-class model with no-data as class 0 drops it.
    """
    from satunet.data.loveda import OFFICIAL_CLASSES

    names = [n.lower() for n in info.classes] if info.classes else None
    aliases = {"agricultural": "agriculture"}
    if names:
        names = [aliases.get(n, n) for n in names]
        if all(c in names for c in OFFICIAL_CLASSES):
            return [names.index(c) for c in OFFICIAL_CLASSES]
    elif info.num_classes == 7:
        return list(range(7))
    elif info.num_classes == 8 and info.ignore_index in (0, None):
        return list(range(1, 8))
    raise ConfigError(
        f"--format loveda-submission needs a model of LoveDA's 7 classes "
        f"({', '.join(OFFICIAL_CLASSES)}); this checkpoint has {info.num_classes} classes "
        f"{list(info.classes) if info.classes else ''}. Train on LoveDA first"
    )


def output_paths(
    input: PathLike, out_dir: PathLike, output_format: OutputFormat = "auto"
) -> dict[str, Path]:
    """Where predicting ``input`` writes: mask (.tif for TIFF inputs, .png otherwise) and extras."""
    input, out_dir = Path(input), Path(out_dir)
    tiff = input.suffix.lower() in (".tif", ".tiff")
    if output_format == "loveda-submission":
        return {"mask": out_dir / f"{input.stem}.png"}
    return {
        "mask": out_dir / f"{input.stem}{'.tif' if tiff else '.png'}",
        "probabilities": out_dir / f"{input.stem}_probabilities.tif",
        "preview": out_dir / f"{input.stem}_preview.png",
    }


def predict_scene(
    predictor: Predictor,
    input: PathLike,
    out_dir: PathLike,
    *,
    tile: int = 512,
    overlap: int = 64,
    batch_size: int = 1,
    blend: BlendKind = "cosine",
    probabilities: bool = False,
    cog: bool = False,
    preview: bool = False,
    output_format: OutputFormat = "auto",
    progress: bool = False,
) -> SceneResult:
    """Predict one image file of any size into ``out_dir``, streaming in row bands.

    Writes ``<stem>.tif`` (uint8 classes with the source's CRS, transform and tiling; no-data
    input pixels become 255) for TIFF inputs or ``<stem>.png`` otherwise; with ``probabilities``
    ``<stem>_probabilities.tif`` (one uint8 band per class, p * 255); with ``preview`` a
    colourised ``<stem>_preview.png`` with a legend. In ``loveda-submission`` format it writes
    ``<id>.png`` with values 0..6. Files appear under their final names only when complete.
    """
    info = predictor.info
    check_tiling(tile, overlap, batch_size, info.size_multiple)
    paths = output_paths(input, out_dir, output_format)
    submission = output_format == "loveda-submission"
    if submission and (probabilities or cog or preview):
        raise ConfigError(
            "--format loveda-submission writes class PNGs only: drop "
            "--probabilities, --cog and --preview"
        )
    selected = submission_classes(info) if submission else None
    if info.num_classes >= NODATA:
        raise ConfigError(
            f"uint8 masks hold at most {NODATA} classes, model has {info.num_classes}"
        )
    check_output_dir(out_dir)
    start = time.perf_counter()
    with gdal_env(), open_scene(input, info.in_channels) as reader:
        scene = reader.info
        _check_scene(scene, info, submission)
        plan = plan_bands(scene.height, scene.width, tile, overlap, min_tiles_per_band=batch_size)
        log.debug(
            "%s: %dx%d px, %d bands of %d tile rows x %d tiles, accumulator %s",
            scene.path, scene.width, scene.height, len(plan.bands), plan.rows_per_band,
            len(plan.col_origins), plan.buffer_shape(info.num_classes),
        )  # fmt: skip
        writers = {"mask": RasterWriter(paths["mask"], scene, nodata=NODATA, cog=cog)}
        try:
            if probabilities:
                writers["probabilities"] = RasterWriter(
                    paths["probabilities"], scene, count=info.num_classes, cog=cog
                )
            thumb = _Preview(scene.height, scene.width) if preview else None
            writer = _Writer()
            nodata_count = 0

            def finish(row0: int, logits: torch.Tensor, nodata: np.ndarray | None) -> None:
                nonlocal nodata_count
                scores = logits[selected] if selected is not None else logits
                classes = scores.argmax(0).to(torch.uint8).numpy()
                probs = None
                if probabilities:
                    probs = (logits.softmax(0) * 255 + 0.5).to(torch.uint8).numpy()
                if nodata is not None:
                    classes[nodata] = NODATA
                    nodata_count += int(nodata.sum())
                    if probs is not None:
                        probs[:, nodata] = 0
                if thumb is not None:
                    thumb.add(row0, classes)

                def job() -> None:
                    writers["mask"].write(classes[None], row0)
                    if probs is not None:
                        writers["probabilities"].write(probs, row0)

                writer.submit(job)

            try:
                shape = run_bands(
                    reader.read_rows,
                    plan,
                    predictor,
                    finish,
                    overlap=overlap,
                    batch_size=batch_size,
                    blend=blend,
                    progress=progress,
                )
            finally:
                writer.close()
            outputs = {name: w.commit() for name, w in writers.items()}
        except BaseException:
            for w in writers.values():
                w.abort()
            raise
        if thumb is not None:
            outputs["preview"] = thumb.save(paths["preview"], info, nodata_count > 0)
    seconds = time.perf_counter() - start
    area = scene.pixel_area_km2
    return SceneResult(
        input=Path(input),
        outputs=outputs,
        height=scene.height,
        width=scene.width,
        seconds=seconds,
        buffer_shape=shape,
        area_km2=None if area is None else area * scene.height * scene.width,
        nodata_pixels=nodata_count,
    )


def _check_scene(scene: SceneInfo, info: ModelInfo, submission: bool) -> None:
    if scene.bands != info.in_channels:
        raise InputSizeError(
            f"{scene.path} has {scene.bands} bands but model {info.name!r} takes "
            f"{info.in_channels}; select the bands it was trained on (e.g. gdal_translate -b 1 "
            "-b 2 -b 3) or use a checkpoint trained on this band count"
        )
    if submission:
        if not re.fullmatch(r"\d+", scene.path.stem):
            raise DataError(
                f"{scene.path}: LoveDA submission files are named by the test image id "
                "(e.g. 4191.png); predict the official Test/*/images_png files"
            )
        if (scene.height, scene.width) != (LOVEDA_SIZE, LOVEDA_SIZE):
            raise DataError(
                f"{scene.path} is {scene.width}x{scene.height}, LoveDA test images are "
                f"{LOVEDA_SIZE}x{LOVEDA_SIZE}; predict the official, uncropped test images"
            )


class _Preview:
    """Every n-th pixel of the class rows, for a colourised preview at most PREVIEW_MAX_SIDE."""

    def __init__(self, height: int, width: int):
        self.step = max(1, -(-max(height, width) // PREVIEW_MAX_SIDE))
        self.rows: list[np.ndarray] = []

    def add(self, row0: int, classes: np.ndarray) -> None:
        first = -row0 % self.step
        self.rows.append(classes[first :: self.step, :: self.step].copy())

    def save(self, path: Path, info: ModelInfo, has_nodata: bool) -> Path:
        return save_preview(np.concatenate(self.rows), path, info, has_nodata=has_nodata)


def save_preview(
    classes: np.ndarray, path: PathLike, info: ModelInfo, *, has_nodata: bool = False
) -> Path:
    """Colourise (H, W) class ids with the model's palette and add a legend; written atomically."""
    from PIL import Image, ImageDraw, ImageFont

    path = Path(path)
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: info.num_classes] = info.colours()[: info.num_classes]
    rgb = lut[classes]
    names = list(info.class_names()) + (["no-data"] if has_nodata else [])
    colours = list(info.colours()[: info.num_classes]) + ([(0, 0, 0)] if has_nodata else [])
    font = ImageFont.load_default()
    line, swatch = 18, 12
    legend_w = 24 + max(int(font.getlength(n)) for n in names) + swatch + 8
    height = max(rgb.shape[0], 8 + line * len(names))
    canvas = Image.new("RGB", (rgb.shape[1] + legend_w, height), (255, 255, 255))
    canvas.paste(Image.fromarray(rgb), (0, 0))
    draw = ImageDraw.Draw(canvas)
    x = rgb.shape[1] + 8
    for i, (name, colour) in enumerate(zip(names, colours, strict=True)):
        y = 8 + i * line
        draw.rectangle((x, y, x + swatch, y + swatch), fill=tuple(colour), outline=(0, 0, 0))
        draw.text((x + swatch + 6, y), name, fill=(0, 0, 0), font=font)
    tmp = temporary_name(path)
    try:
        canvas.save(tmp, format="PNG")
        os.replace(tmp, path)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e}") from e
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ----------------------------------------------------------------------------- LoveDA submission


def validate_loveda_submission(folder: PathLike, expected: int | None = None) -> list[Path]:
    """Check a LoveDA submission folder: ``<id>.png`` files, 1024x1024, uint8, values 0..6.

    ``expected`` is the number of files there must be (default: the official 1796). Raises
    :class:`DataError` listing the problems; returns the files when all is well.
    """
    from PIL import Image

    folder = Path(folder)
    files = sorted(folder.glob("*.png"))
    problems = []
    want = LOVEDA_TEST_IMAGES if expected is None else expected
    if len(files) != want:
        problems.append(f"{len(files)} PNG files, expected {want}")
    for path in files:
        if not re.fullmatch(r"\d+\.png", path.name):
            problems.append(f"{path.name}: name is not <image id>.png")
            continue
        try:
            with Image.open(path) as im:
                mode, size = im.mode, im.size
                values = np.asarray(im) if mode == "L" else None
        except OSError as e:
            problems.append(f"{path.name}: unreadable ({e})")
            continue
        if size != (LOVEDA_SIZE, LOVEDA_SIZE):
            problems.append(f"{path.name}: {size[0]}x{size[1]}, expected 1024x1024")
        if mode != "L":
            problems.append(f"{path.name}: mode {mode}, expected single-band 8-bit (L)")
        elif values is not None and values.max(initial=0) > 6:
            problems.append(f"{path.name}: value {int(values.max())} outside 0..6")
    if problems:
        shown = "; ".join(problems[:5]) + (
            f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        )
        raise DataError(f"LoveDA submission in {folder} is not valid: {shown}")
    return files


def zip_submission(files: Sequence[Path], path: PathLike) -> Path:
    """Zip the PNGs flat (no folders), as the LoveDA server expects; written atomically."""
    import zipfile

    path = Path(path)
    tmp = temporary_name(path)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
            for f in files:
                z.write(f, arcname=f.name)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ----------------------------------------------------------------------------- ONNX


ONNX_METADATA_KEY = "satunet"
Exporter = Literal["dynamo", "torchscript"]


@dataclass(frozen=True)
class Parity:
    """How closely ONNX Runtime reproduces PyTorch on one random batch."""

    max_abs_diff: float
    agreement: float  # fraction of pixels with the same argmax class
    shape: tuple[int, ...] = field(default=())


def export_onnx(
    model: nn.Module,
    path: PathLike,
    info: ModelInfo,
    *,
    size: int | None = None,
    exporter: Exporter = "dynamo",
    opset: int = 18,
) -> Path:
    """Export ``model`` to ONNX with dynamic batch, height and width; written atomically.

    ``size`` is the square example size used for tracing (default 64 or 2 * size_multiple); any
    batch and any height/width that are multiples of the model's ``size_multiple`` run after.
    The dynamo exporter (the maintained one) states the multiple in the graph's input shape;
    "torchscript" is the legacy exporter, faster to run and kept as a fallback. ``info`` is
    stored as metadata, so `satunet predict model.onnx` needs no checkpoint.
    """
    import onnx

    path = Path(path)
    multiple = info.size_multiple
    size = size or max(2 * multiple, -(-64 // multiple) * multiple)
    if size % multiple:
        raise ConfigError(f"export size {size} must be a multiple of {multiple}")
    model = model.float().eval()
    x = torch.rand(1, info.in_channels, size, size, generator=torch.Generator().manual_seed(0))
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.onnx")
    try:
        if exporter == "dynamo":
            from torch.export import Dim

            h, w = Dim("h", min=1, max=8192), Dim("w", min=1, max=8192)
            dims = {"x": {0: Dim("batch", min=1, max=4096), 2: multiple * h, 3: multiple * w}}
            torch.onnx.export(
                model, (x,), tmp, input_names=["x"], output_names=["logits"],
                dynamic_shapes=dims, dynamo=True, opset_version=opset, verbose=False,
            )  # fmt: skip
        elif exporter == "torchscript":
            axes = {0: "batch", 2: "height", 3: "width"}
            with _quiet_warnings():
                torch.onnx.export(
                    model, (x,), tmp, input_names=["x"], output_names=["logits"],
                    dynamic_axes={"x": axes, "logits": axes}, dynamo=False,
                    opset_version=min(opset, 17),
                )  # fmt: skip
        else:
            raise ConfigError(f"unknown exporter {exporter!r}: use 'dynamo' or 'torchscript'")
        graph = onnx.load(str(tmp))
        entry = graph.metadata_props.add()
        entry.key, entry.value = ONNX_METADATA_KEY, json.dumps(asdict(info))
        onnx.save(graph, str(tmp))
        os.replace(tmp, path)
    except (ConfigError, OSError):
        raise
    except Exception as e:  # noqa: BLE001 - exporter errors are many types and very long
        raise CheckpointError(
            f"ONNX export of {info.name!r} failed: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}; try exporter='torchscript'"
        ) from e
    finally:
        tmp.unlink(missing_ok=True)
        Path(f"{tmp}.data").unlink(missing_ok=True)
    return path


@contextlib.contextmanager
def _quiet_warnings() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def read_onnx_info(path: PathLike) -> ModelInfo:
    """The :class:`ModelInfo` that :func:`export_onnx` stored in an ONNX file."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf decode errors
        raise CheckpointError(f"{path} is not an ONNX model: {e}") from e
    meta = {p.key: p.value for p in graph.metadata_props}
    if ONNX_METADATA_KEY not in meta:
        raise CheckpointError(
            f"{path} was not written by `satunet export` (no '{ONNX_METADATA_KEY}' metadata), "
            "so its classes and normalisation are unknown; export it with satunet export"
        )
    values = json.loads(meta[ONNX_METADATA_KEY])
    for key in ("classes", "palette"):
        if values.get(key) is not None:
            values[key] = tuple(tuple(v) if isinstance(v, list) else v for v in values[key])
    return ModelInfo(**values)


def onnx_parity(
    model: nn.Module,
    onnx_path: PathLike,
    *,
    height: int,
    width: int,
    batch: int = 2,
    device: str = "cpu",
    seed: int = 0,
) -> Parity:
    """Run PyTorch (fp32) and ONNX Runtime on one random batch and compare their logits."""
    runtime = OnnxPredictor(onnx_path, device=device)
    info = runtime.info
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, info.in_channels, height, width, generator=gen)
    x = torch.from_numpy(scale_pixels(x.numpy(), info.normalization))
    with torch.inference_mode():
        expected = model.float().eval()(x).numpy()
    got = runtime(x.numpy())
    return Parity(
        max_abs_diff=float(np.abs(got - expected).max()),
        agreement=float((got.argmax(1) == expected.argmax(1)).mean()),
        shape=tuple(got.shape),
    )
