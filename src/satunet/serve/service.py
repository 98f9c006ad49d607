"""The state behind `satunet serve`: a predictor, the named scenes, the cache and the workers.

Which tile source answers a segmentation request at zoom z of a scene whose live zooms are
``lo..hi`` (see :func:`satunet.serve.tiles.segment_zooms`):

- ``lo <= z <= hi``: the model, on the worker pool, cached;
- ``z > hi`` (up to ``hi + OVERZOOM``): the covering tile at ``hi``, cropped and upscaled;
- ``z < lo``: the scene's ``satunet predict`` output from ``--predictions DIR`` when there is
  one, else a transparent tile and the header ``X-Satunet-Hint: zoom-in``.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from satunet.errors import ConfigError
from satunet.files import PathLike
from satunet.infer import Predictor, load_predictor
from satunet.runtime import resolve_device
from satunet.serve.cache import Job, TileCache, WorkerPool
from satunet.serve.tiles import (
    MAX_ZOOM,
    Scene,
    TileError,
    TileRenderer,
    lonlat_to_tile,
    open_scene,
    segment_zooms,
)

log = logging.getLogger(__name__)

OVERZOOM = 3  # zoom levels past the finest live zoom that are still answered (upscaled)


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server."""

    max_upload_bytes: int = 16 * 2**20
    max_upload_pixels: int = 2048 * 2048
    max_pending: int = 32  # queued model jobs; past it the oldest is dropped (HTTP 503)


class LatencyLog:
    """The last ``size`` durations in milliseconds, with last / p50 / p95."""

    def __init__(self, size: int = 1000):
        self.values: deque[float] = deque(maxlen=size)

    def add(self, ms: float) -> None:
        self.values.append(ms)

    def summary(self) -> dict[str, Any]:
        if not self.values:
            return {"n": 0, "last_ms": None, "p50_ms": None, "p95_ms": None}
        ordered = sorted(self.values)
        pick = lambda q: round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)  # noqa: E731
        return {
            "n": len(ordered),
            "last_ms": round(self.values[-1], 1),
            "p50_ms": pick(0.5),
            "p95_ms": pick(0.95),
        }


def unique_names(paths: Sequence[Path]) -> list[str]:
    """URL-safe scene names from file stems, made unique with -2, -3, ..."""
    names: list[str] = []
    for path in paths:
        base = "".join(c if c.isalnum() or c in "-_." else "-" for c in path.stem) or "scene"
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base}-{n}"
        names.append(name)
    return names


class TileService:
    """Everything the HTTP layer asks: tiles, points, uploads, info and health."""

    def __init__(
        self,
        predictor: Predictor,
        scenes: Sequence[Scene],
        *,
        resolution: float | None = None,
        cache_mb: float = 256,
        margin: int = 32,
        workers: int = 1,
        limits: Limits = Limits(),
        runtime: dict[str, str] | None = None,
    ):
        if not scenes:
            raise ConfigError("serve needs at least one scene")
        self.predictor = predictor
        self.info = predictor.info
        self.renderer = TileRenderer(predictor, margin=margin)
        self.resolution = resolution
        self.scenes = {s.name: s for s in scenes}
        for scene in scenes:
            scene.zooms = segment_zooms(resolution or scene.native_resolution, scene.center[1])
        self.cache = TileCache(int(cache_mb * 2**20))
        self.pool = WorkerPool(workers=workers, max_pending=limits.max_pending)
        self.limits = limits
        self.runtime = runtime or {}
        self.model_latency = LatencyLog()
        self.started = time.time()

    def scene(self, name: str) -> Scene:
        """The scene named on the command line, or a 404 (no other file is reachable)."""
        scene = self.scenes.get(name)
        if scene is None:
            raise TileError(404, f"unknown scene {name!r}; scenes: {', '.join(self.scenes)}")
        return scene

    def max_zoom(self, scene: Scene) -> int:
        return min(MAX_ZOOM, scene.zooms[1] + OVERZOOM)

    def _segment(self, scene: Scene, z: int, x: int, y: int) -> tuple[bytes, np.ndarray]:
        start = time.perf_counter()
        classes, _ = self.renderer.classes(scene, z, x, y)
        png = self.renderer.palette(classes)
        self.model_latency.add((time.perf_counter() - start) * 1000)
        value = (png, classes)
        self.cache.put(("seg", scene.name, z, x, y), value)
        return value

    def segmentation(self, scene: Scene, z: int, x: int, y: int) -> tuple[Any, Job | None]:
        """(cached (png, classes), None) or (None, the job computing them)."""
        key = ("seg", scene.name, z, x, y)
        value = self.cache.get(key)
        if value is not None:
            return value, None
        return None, self.pool.submit(key, lambda: self._segment(scene, z, x, y))

    def source(self, scene: Scene, z: int) -> str:
        """Which source answers zoom ``z``: model, overzoom, predictions or none."""
        lo, hi = scene.zooms
        if z > hi:
            return "overzoom"
        if z >= lo:
            return "model"
        return "predictions" if scene.predictions is not None else "none"

    def cached_io(self, kind: str, scene: Scene, z: int, x: int, y: int) -> tuple[bytes, bool]:
        """Imagery or predictions PNG (read here, in the calling thread); (png, was cached)."""
        key = (kind, scene.name, z, x, y)
        png = self.cache.get(key)
        if png is not None:
            return png, True
        render = self.renderer.imagery_png if kind == "img" else self.renderer.predictions_png
        png = render(scene, z, x, y)
        self.cache.put(key, png)
        return png, False

    def point_tile(self, scene: Scene, lon: float, lat: float, z: int) -> tuple[int, int, int]:
        """The live-zoom tile (z, x, y) that holds lon/lat, ``z`` clamped to the live zooms."""
        w, s, e, n = scene.bounds
        if not (w <= lon <= e and s <= lat <= n):
            raise TileError(404, f"point {lon:.6f}, {lat:.6f} is outside scene {scene.name!r}")
        z = min(max(z, scene.zooms[0]), scene.zooms[1])
        return (z, *lonlat_to_tile(lon, lat, z))

    def class_record(self, index: int | None) -> dict[str, Any]:
        if index is None:
            return {"class": None, "name": None, "colour": None}
        colour = self.info.colours()[index]
        return {"class": index, "name": self.info.class_names()[index], "colour": list(colour)}

    def describe(self) -> dict[str, Any]:
        info = self.info
        return {
            "model": info.name,
            "in_channels": info.in_channels,
            "num_classes": info.num_classes,
            "classes": [self.class_record(i) for i in range(info.num_classes)],
            "palette": [list(c) for c in info.colours()],
            "resolution_m": self.resolution,
            "margin_px": self.renderer.margin,
            "tile_size": 256,
            **self.runtime,
            "scenes": [s.describe() | {"max_zoom": self.max_zoom(s)} for s in self.scenes.values()],
            "limits": {
                "max_upload_mb": self.limits.max_upload_bytes / 2**20,
                "max_upload_pixels": self.limits.max_upload_pixels,
            },
        }

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "uptime_s": round(time.time() - self.started, 1),
            "model": self.info.name,
            **self.runtime,
            "cache": self.cache.stats(),
            "pool": self.pool.stats(),
            "model_latency": self.model_latency.summary(),
        }

    def close(self) -> None:
        self.pool.close()


def build_service(
    checkpoint: PathLike,
    scenes: Sequence[PathLike],
    *,
    backend: str = "torch",
    device: str = "auto",
    precision: str = "fp32",
    cache_mb: float = 256,
    predictions: PathLike | None = None,
    resolution: float | None = None,
    margin: int = 32,
    workers: int | None = None,
    limits: Limits = Limits(),
) -> TileService:
    """Load the model and open the scenes: everything `satunet serve` needs but the server."""
    if cache_mb < 0 or (resolution is not None and not resolution > 0) or margin < 0:
        raise ConfigError("--cache-mb and margin must be >= 0 and --resolution > 0")
    paths = [Path(p) for p in scenes]
    pred_dir = Path(predictions) if predictions is not None else None
    if pred_dir is not None and not pred_dir.is_dir():
        raise ConfigError(f"--predictions {pred_dir} is not a folder")
    opened = [open_scene(n, p, pred_dir) for n, p in zip(unique_names(paths), paths, strict=True)]
    dev = resolve_device(device, precision)
    checkpoint = Path(checkpoint)
    predictor = load_predictor(checkpoint, backend=backend, device=str(dev), precision=precision)
    resolution = resolution or predictor.info.resolution  # ModelInfo: .pt and .onnx alike
    if resolution is None:
        log.info(
            "the checkpoint stores no training resolution and --resolution is not given: "
            "segmenting each scene at zooms near its own pixel size"
        )
    service = TileService(
        predictor,
        opened,
        resolution=resolution,
        cache_mb=cache_mb,
        margin=margin,
        workers=workers or (2 if dev.type == "cuda" else 1),
        limits=limits,
        runtime={"backend": backend, "precision": precision, "device": str(dev)},
    )
    seconds = service.renderer.warm_up()
    log.info(
        "model %s ready on %s (%s, %s) in %.2f s",
        service.info.name,
        dev,
        backend,
        precision,
        seconds,
    )
    return service
