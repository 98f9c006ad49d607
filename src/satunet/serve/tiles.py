"""Web-mercator tiles of a GeoTIFF/COG: imagery, live segmentation with context, PNG encoding.

A scene is read with rio-tiler (windowed reads from the best overview, reprojected to the
WebMercatorQuad grid). The model sees the imagery at the tile's own ground resolution, so it
runs only at zooms whose resolution is within ``ZOOM_FACTOR`` of the one it was trained at:

    ground resolution at zoom z = 2 * pi * 6378137 / (256 * 2**z) * cos(latitude)  m/px

Each segmentation tile is read with ``margin`` pixels of context on every side (rio-tiler's
``buffer``), padded to the model's size multiple with the same rule as ``satunet predict``
(:func:`satunet.data.pixels.pad_to_multiple`), predicted, and cropped back to 256 x 256: every
output pixel has context around it, so tile borders leave no seams. Pixels outside the scene
are transparent (palette index 255).
"""

from __future__ import annotations

import io
import logging
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from satunet.checkpoint import ModelInfo
from satunet.data.pixels import pad_to_multiple, pixel_scale, scale_pixels
from satunet.errors import ConfigError, DataError
from satunet.infer import Predictor

log = logging.getLogger(__name__)

TILE = 256
EARTH_CIRCUMFERENCE = 2 * math.pi * 6378137.0
ZOOM_FACTOR = 2.0  # segment at zooms within this factor of the model's resolution
MAX_ZOOM = 24  # the finest zoom any tile endpoint answers
TRANSPARENT = 255  # palette index of pixels outside the scene (or no-data in predictions)


class TileError(Exception):
    """A tile request that cannot be answered: ``status`` is the HTTP status to send."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def ground_resolution(zoom: int, latitude: float) -> float:
    """Metres of ground per pixel of a 256-pixel web-mercator tile at ``zoom`` and ``latitude``."""
    return EARTH_CIRCUMFERENCE / (TILE * 2**zoom) * math.cos(math.radians(latitude))


def segment_zooms(
    resolution: float, latitude: float, factor: float = ZOOM_FACTOR
) -> tuple[int, int]:
    """(min, max) zoom whose ground resolution is within ``factor`` of ``resolution`` m/px."""
    if not resolution > 0:
        raise ConfigError(f"model resolution must be positive metres per pixel, got {resolution}")
    # resolution(z) = r0 / 2**z  ->  z = log2(r0 / r); coarsest allowed is r * factor.
    r0 = ground_resolution(0, latitude)
    lo = math.ceil(math.log2(r0 / (resolution * factor)) - 1e-9)
    hi = math.floor(math.log2(r0 / (resolution / factor)) + 1e-9)
    lo, hi = max(0, lo), min(MAX_ZOOM, hi)
    return (lo, max(lo, hi))


def palette_png(classes: np.ndarray, colours: tuple[tuple[int, int, int], ...]) -> bytes:
    """A palette ("P") PNG of uint8 class ids; index 255 is fully transparent."""
    image = Image.fromarray(np.ascontiguousarray(classes, dtype=np.uint8), mode="P")
    palette = [0] * (256 * 3)
    for i, colour in enumerate(colours[:255]):
        palette[3 * i : 3 * i + 3] = list(colour)
    image.putpalette(palette)
    alpha = bytes([255] * 255 + [0])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", transparency=alpha, compress_level=1)
    return buffer.getvalue()


_EMPTY: dict[int, bytes] = {}


def empty_png(size: int = TILE) -> bytes:
    """A fully transparent tile (palette PNG, a few hundred bytes)."""
    if size not in _EMPTY:
        _EMPTY[size] = palette_png(np.full((size, size), TRANSPARENT, np.uint8), ())
    return _EMPTY[size]


def rgba_png(data: np.ndarray, mask: np.ndarray, scale: float) -> bytes:
    """An RGBA PNG of a (C, H, W) image for display: raw / ``scale`` * 255, grey for 1 band."""
    rgb = data[:3] if data.shape[0] >= 3 else np.repeat(data[:1], 3, axis=0)
    if rgb.dtype != np.uint8 or scale != 255.0:
        rgb = np.clip(rgb.astype(np.float32) * (255.0 / scale), 0, 255).astype(np.uint8)
    rgba = np.concatenate([rgb, (mask > 0).astype(np.uint8)[None] * 255]).transpose(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgba), mode="RGBA").save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


@dataclass
class Scene:
    """One GeoTIFF/COG the server may read, by name; opened once per reading thread."""

    name: str
    path: Path
    bounds: tuple[float, float, float, float]  # lon/lat west, south, east, north
    native_resolution: float  # metres per pixel (approximate for geographic CRSs)
    crs: str
    width: int
    height: int
    count: int
    dtype: str
    minzoom: int
    maxzoom: int
    predictions: Path | None = None
    zooms: tuple[int, int] = (0, 0)  # the zooms segmented live
    _local: threading.local = field(default_factory=threading.local, repr=False)

    @property
    def center(self) -> tuple[float, float]:
        w, s, e, n = self.bounds
        return ((w + e) / 2, (s + n) / 2)

    def reader(self, which: str = "image") -> Any:
        """This thread's rio-tiler Reader of the scene (or of its predictions)."""
        from rio_tiler.io import Reader

        readers = self._local.__dict__.setdefault("readers", {})
        if which not in readers:
            readers[which] = Reader(str(self.path if which == "image" else self.predictions))
        return readers[which]

    def check_tile(self, z: int, x: int, y: int, max_zoom: int) -> None:
        """Raise TileError for a zoom out of range or a tile that misses the scene."""
        if not 0 <= z <= max_zoom:
            raise TileError(400, f"zoom {z} is out of range for scene {self.name!r}: 0..{max_zoom}")
        if not (0 <= x < 2**z and 0 <= y < 2**z):
            raise TileError(400, f"tile {z}/{x}/{y} does not exist: x and y are 0..{2**z - 1}")
        w, s, e, n = tile_bounds(z, x, y)
        west, south, east, north = self.bounds
        if w >= east or e <= west or s >= north or n <= south:
            raise TileError(404, f"tile {z}/{x}/{y} is outside scene {self.name!r}")

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "bounds": list(self.bounds),
            "center": list(self.center),
            "crs": self.crs,
            "size": [self.width, self.height],
            "bands": self.count,
            "dtype": self.dtype,
            "resolution_m": round(self.native_resolution, 4),
            "minzoom": self.minzoom,
            "maxzoom": self.maxzoom,
            "segment_zooms": list(self.zooms),
            "predictions": self.predictions is not None,
        }


def open_scene(name: str, path: Path, predictions_dir: Path | None = None) -> Scene:
    """Open a GeoTIFF/COG as a Scene (a readable raster with a CRS), or raise ConfigError."""
    from rasterio.errors import RasterioIOError
    from rio_tiler.io import Reader

    if not path.is_file():
        raise ConfigError(f"scene {path} does not exist")
    try:
        with Reader(str(path)) as reader:
            ds = reader.dataset
            if ds.crs is None:
                raise ConfigError(f"scene {path} has no CRS: serve needs a georeferenced GeoTIFF")
            bounds = tuple(float(v) for v in reader.get_geographic_bounds("EPSG:4326"))
            res = float(abs(ds.res[0]))
            if ds.crs.is_geographic:  # degrees -> metres at the scene's latitude
                res *= (
                    EARTH_CIRCUMFERENCE / 360 * math.cos(math.radians((bounds[1] + bounds[3]) / 2))
                )
            else:
                res *= ds.crs.linear_units_factor[1]
            scene = Scene(
                name,
                path,
                bounds,
                res,
                ds.crs.to_string(),
                ds.width,
                ds.height,
                ds.count,
                str(ds.dtypes[0]),
                int(reader.minzoom),
                int(reader.maxzoom),
            )
    except RasterioIOError as e:
        raise ConfigError(f"cannot read scene {path}: {e}") from e
    if predictions_dir is not None:
        candidate = predictions_dir / f"{path.stem}.tif"
        scene.predictions = candidate if candidate.is_file() else None
        if scene.predictions is None:
            log.warning(
                "no %s in %s: coarse zooms of %s show imagery only",
                candidate.name,
                predictions_dir,
                name,
            )
    return scene


class TileRenderer:
    """Turns tile requests into PNG bytes: imagery, segmentation (model), predictions files."""

    def __init__(self, predictor: Predictor, margin: int = 32):
        self.predictor = predictor
        self.info: ModelInfo = predictor.info
        multiple = max(1, self.info.size_multiple)
        # 256 + 2 * margin must be a multiple of the model's; margin a multiple of 0.5 px.
        side = -(-(TILE + 2 * max(0, margin)) // multiple) * multiple
        self.margin = (side - TILE) // 2
        self.padded = TILE + 2 * self.margin

    def _bands(self, scene: Scene) -> list[int]:
        need = self.info.in_channels
        if scene.count < need:
            raise DataError(f"scene {scene.name} has {scene.count} bands; the model needs {need}")
        return list(range(1, need + 1))

    def warm_up(self) -> float:
        """Run one blank tile through the model (the first call builds kernels); seconds."""
        import time

        start = time.perf_counter()
        blank = np.zeros((1, self.info.in_channels, self.padded, self.padded), np.float32)
        self.predictor(blank)
        return time.perf_counter() - start

    def classes(self, scene: Scene, z: int, x: int, y: int) -> tuple[np.ndarray, np.ndarray]:
        """(256, 256) uint8 classes of one tile, TRANSPARENT outside the scene, and the mask."""
        image = read_tile(scene, "image", z, x, y, buffer=self.margin, indexes=self._bands(scene))
        if image is None:  # in the scene's bounding box but not on its (rotated) footprint
            return np.full((TILE, TILE), TRANSPARENT, np.uint8), np.zeros((TILE, TILE), bool)
        raw, valid = image.data, image.mask > 0
        x_in = scale_pixels(raw, self.info.scale, self.info.normalization, where=scene.name)
        batch = pad_to_multiple(x_in[None], max(1, self.info.size_multiple))
        logits = self.predictor(np.ascontiguousarray(batch, dtype=np.float32))
        m = self.margin
        classes = logits[0, :, m : m + TILE, m : m + TILE].argmax(0).astype(np.uint8)
        inside = valid[m : m + TILE, m : m + TILE]
        classes[~inside] = TRANSPARENT
        return classes, inside

    def palette(self, classes: np.ndarray) -> bytes:
        """Classes as a PNG in the checkpoint's palette."""
        return palette_png(classes, self.info.colours())

    def overzoom_png(self, parent: np.ndarray, dz: int, x: int, y: int) -> bytes:
        """The part of a coarser tile's classes under tile (x, y), ``dz`` levels finer, upscaled."""
        n = 2**dz
        part = TILE // n
        r, c = (y % n) * part, (x % n) * part
        crop = parent[r : r + part, c : c + part]
        return palette_png(np.kron(crop, np.ones((n, n), np.uint8)), self.info.colours())

    def predictions_png(self, scene: Scene, z: int, x: int, y: int) -> bytes:
        """A tile of a `satunet predict` class mask (nearest resampling; 255 = no-data)."""
        image = read_tile(scene, "predictions", z, x, y, indexes=[1], resampling="nearest")
        if image is None:
            return empty_png()
        classes = image.data[0].astype(np.uint8)
        classes[image.mask == 0] = TRANSPARENT
        classes[classes >= self.info.num_classes] = TRANSPARENT
        return palette_png(classes, self.info.colours())

    def imagery_png(self, scene: Scene, z: int, x: int, y: int) -> bytes:
        image = read_tile(scene, "image", z, x, y, indexes=list(range(1, min(3, scene.count) + 1)))
        if image is None:
            return empty_png()
        return rgba_png(image.data, image.mask, pixel_scale(image.data.dtype, self.info.scale))

    def class_at(self, classes: np.ndarray, lon: float, lat: float, z: int) -> int | None:
        """The class id at lon/lat in the (256, 256) classes of the zoom-z tile holding it."""
        px, py = lonlat_to_pixel(lon, lat, z)
        value = int(classes[py % TILE, px % TILE])
        return None if value == TRANSPARENT else value


def read_tile(
    scene: Scene,
    which: str,
    z: int,
    x: int,
    y: int,
    *,
    indexes: list[int],
    buffer: int = 0,
    resampling: str = "bilinear",
) -> Any | None:
    """rio-tiler's ImageData of one tile (plus ``buffer`` pixels a side), None off the data."""
    from rio_tiler.errors import TileOutsideBounds

    try:
        return scene.reader(which).tile(
            x,
            y,
            z,
            tilesize=TILE,
            buffer=buffer or None,
            indexes=indexes,
            resampling_method=resampling,
            reproject_method=resampling,
        )
    except TileOutsideBounds:
        return None


def tile_bounds(z: int, x: int, y: int) -> tuple[float, float, float, float]:
    """Lon/lat (west, south, east, north) of web-mercator tile z/x/y."""
    n = 2**z
    lon = lambda i: i / n * 360.0 - 180.0  # noqa: E731
    lat = lambda j: math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * j / n))))  # noqa: E731
    return (lon(x), lat(y + 1), lon(x + 1), lat(y))


def lonlat_to_tile(lon: float, lat: float, z: int) -> tuple[int, int]:
    """The web-mercator tile (x, y) at zoom ``z`` that holds lon/lat."""
    px, py = lonlat_to_pixel(lon, lat, z)
    return px // TILE, py // TILE


def lonlat_to_pixel(lon: float, lat: float, z: int) -> tuple[int, int]:
    """Global pixel coordinates of lon/lat at zoom ``z`` (256-pixel tiles)."""
    lat = max(-85.05112878, min(85.05112878, lat))
    n = TILE * 2**z
    x = (lon + 180.0) / 360.0 * n
    s = math.sin(math.radians(lat))
    y = (0.5 - math.log((1 + s) / (1 - s)) / (4 * math.pi)) * n
    return min(n - 1, max(0, int(x))), min(n - 1, max(0, int(y)))
