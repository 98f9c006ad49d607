"""Scene input and output by row bands: read windows, write windows, keep CRS/transform/nodata.

TIFF/GeoTIFF (and anything else GDAL reads) goes through rasterio, imported lazily, by window, so
a scene never has to fit in memory. PNG/JPEG cannot be decoded by window: they are read whole
with Pillow (they are small in practice) and their masks are written as PNG. Outputs are written
under a hidden temporary name in the output folder and renamed at the end, so a failure
mid-scene never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import uuid
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from satunet import files
from satunet.data.blockrows import WRITE_BUFFER_MAX_BYTES, BlockRows
from satunet.errors import DataError, InputNotFoundError, OutputError

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
PIL_SUFFIXES = (".png", ".jpg", ".jpeg")
TIFF_SUFFIXES = (".tif", ".tiff")
IMAGE_SUFFIXES = PIL_SUFFIXES + TIFF_SUFFIXES
# Pixel types a scene may hold (satunet.data.pixels scales each to model input).
SCENE_DTYPES = ("uint8", "uint16", "float32", "float64")
# GDAL's block cache defaults to 5% of RAM; scenes are read and written once, in order, so a
# small cache is enough and keeps peak memory flat.
GDAL_CACHE_MB = 16


def expand_inputs(inputs: Sequence[PathLike]) -> list[Path]:
    """Files named by ``inputs``: files as given, folders' images (sorted), glob patterns."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                raise InputNotFoundError(
                    f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                    "pass image files, folders of images or a glob such as 'scenes/*.tif'"
                )
            found += images
        elif path.is_file():
            found.append(path)
        elif any(ch in str(item) for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(str(item)) if Path(p).is_file())
            if not matches:
                raise InputNotFoundError(f"no file matches {str(item)!r}; check the pattern")
            found += matches
        else:
            raise InputNotFoundError(f"input {path} does not exist; check the path")
    return list(dict.fromkeys(found))


@dataclass(frozen=True)
class SceneInfo:
    """What satunet needs to know about an input scene before predicting it."""

    path: Path
    height: int
    width: int
    bands: int  # image bands, not counting an alpha band
    dtype: str
    crs: Any = None  # rasterio.crs.CRS or None
    transform: Any = None  # affine.Affine or None
    nodata: tuple[float | None, ...] = ()
    block_shape: tuple[int, int] | None = None  # (rows, cols) of the source tiles, if tiled
    is_tiff: bool = True

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None

    @property
    def pixel_area_km2(self) -> float | None:
        """Ground area of one pixel, for a projected CRS (metres or feet...); else None."""
        if self.crs is None or self.transform is None or not self.crs.is_projected:
            return None
        t = self.transform
        _, to_metres = self.crs.linear_units_factor
        return abs(t.a * t.e - t.b * t.d) * to_metres**2 / 1e6


@dataclass
class SceneReader:
    """Rows of a scene as (bands, rows, width) arrays, plus a no-data mask (rows, width).

    Use :func:`open_scene`; close with :meth:`close` or a ``with`` block.
    """

    info: SceneInfo
    _dataset: Any = None  # rasterio dataset (TIFF) or None
    _array: np.ndarray | None = None  # whole (C, H, W) image for PNG/JPEG
    _alpha: int | None = None  # 0-based index of an alpha band, if any
    _image_bands: list[int] = field(default_factory=list)

    def read_rows(self, row0: int, row1: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Pixels of rows [row0, row1) in the file's dtype, and where they are no-data (or None)."""
        if self._array is not None:
            pixels = self._array[:, row0:row1]
        else:
            from rasterio.windows import Window

            window = Window(0, row0, self.info.width, row1 - row0)
            try:  # only the bands in use (and the alpha band), 1-based like GDAL
                pixels = self._dataset.read([i + 1 for i in self._read_bands], window=window)
            except Exception as e:  # noqa: BLE001 - GDAL read errors; re-raised with the path
                raise DataError(
                    f"cannot read rows {row0}..{row1} of {self.info.path}: {e}. The file is "
                    "truncated or corrupt; re-download or re-export it"
                ) from e
        if self._array is not None:
            pixels = pixels[self._read_bands]
        invalid = None
        if self._alpha is not None:  # the alpha band is read last
            invalid = pixels[-1] == 0
        image = pixels[: len(self._image_bands)]
        nodata = self.info.nodata
        if any(v is not None for v in nodata):
            # A pixel is no-data when every band holds its no-data value (GDAL's dataset mask).
            missing = np.ones(image.shape[1:], dtype=bool)
            for band, value in zip(image, nodata, strict=True):
                missing &= band == value if value is not None else False
            invalid = missing if invalid is None else invalid | missing
        return image, invalid

    @property
    def _read_bands(self) -> list[int]:
        """0-based bands to read: the image bands, then the alpha band if there is one."""
        return self._image_bands + ([self._alpha] if self._alpha is not None else [])

    def close(self) -> None:
        if self._dataset is not None:
            self._dataset.close()
            self._dataset = None

    def __enter__(self) -> SceneReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise InputNotFoundError(f"input {path} does not exist or is not a file")
    if path.stat().st_size == 0:
        raise DataError(f"input {path} is empty (0 bytes); re-export or re-download it")


def _check_dtype(path: Path, dtype: str) -> None:
    if dtype not in SCENE_DTYPES:
        raise DataError(
            f"{path} holds {dtype} pixels; satunet reads uint8, uint16, float32 and float64 "
            "images (scaled by the checkpoint's scale, else by 1/255, 1/65535 or 1). Convert it "
            "first, e.g. gdal_translate -ot UInt16 or -ot Float32"
        )


def select_bands(path: Path, count: int, bands: Sequence[int]) -> list[int]:
    """0-based indexes of the 1-based ``bands`` (GDAL's numbering) of a ``count``-band file."""
    bad = [b for b in bands if not 1 <= int(b) <= count]
    if bad or not bands:
        raise DataError(
            f"{path} has {count} band(s), numbered 1..{count} like GDAL: cannot select bands "
            f"{list(bands)}; pass e.g. --bands 4,3,2 (or data.options.bands = [4, 3, 2])"
        )
    return [int(b) - 1 for b in bands]


def open_scene(
    path: PathLike, expected_bands: int | None = None, bands: Sequence[int] | None = None
) -> SceneReader:
    """Open an image for reading by rows; errors name the file and say what to do.

    An alpha band (RGBA PNGs; GDAL also labels the 4th band of any 4-band uint8 GeoTIFF alpha)
    marks no-data where it is 0 and is not an image band, unless ``expected_bands`` counts it
    (a 4-band RGB+NIR model reading such a file). ``bands`` (1-based, e.g. (4, 3, 2)) reads
    those bands only, in that order; an alpha band not among them still marks no-data.
    """
    path = Path(path)
    _check_file(path)
    if path.suffix.lower() in PIL_SUFFIXES:
        return _open_pil(path, expected_bands, bands)
    import rasterio
    from rasterio.enums import ColorInterp

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            dataset = rasterio.open(path)
    except Exception as e:  # noqa: BLE001 - rasterio raises RasterioIOError and friends
        raise DataError(
            f"cannot open {path}: not an image GDAL can read ({str(e).splitlines()[0]}); "
            "pass PNG, JPEG or (Geo)TIFF files"
        ) from e
    try:
        _check_dtype(path, dataset.dtypes[0])
        alpha = [i for i, c in enumerate(dataset.colorinterp) if c == ColorInterp.alpha]
        if expected_bands == dataset.count and bands is None:
            alpha = []
        image_bands = [i for i in range(dataset.count) if i not in alpha]
        if bands is not None:
            image_bands = select_bands(path, dataset.count, bands)
            alpha = [a for a in alpha if a not in image_bands]
        nodata = tuple(dataset.nodatavals[i] for i in image_bands)
        block = dataset.block_shapes[0] if dataset.profile.get("tiled") else None
        info = SceneInfo(
            path=path,
            height=dataset.height,
            width=dataset.width,
            bands=len(image_bands),
            dtype=dataset.dtypes[0],
            crs=dataset.crs,
            transform=None if dataset.transform.is_identity else dataset.transform,
            nodata=nodata,
            block_shape=block,
        )
    except BaseException:
        dataset.close()
        raise
    return SceneReader(
        info, _dataset=dataset, _alpha=alpha[0] if alpha else None, _image_bands=image_bands
    )


def _open_pil(
    path: Path, expected_bands: int | None, bands: Sequence[int] | None = None
) -> SceneReader:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode in ("P", "CMYK", "YCbCr", "1"):
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            array = np.asarray(im)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise DataError(
            f"cannot read {path}: {e}. The file is corrupt, truncated or not an image"
        ) from e
    array = array[:, :, None] if array.ndim == 2 else array
    _check_dtype(path, str(array.dtype))
    array = np.ascontiguousarray(array.transpose(2, 0, 1))  # (H, W, C) -> (C, H, W)
    # LA or RGBA, unless the model counts the 4th band (or bands are selected explicitly)
    has_alpha = array.shape[0] in (2, 4) and (expected_bands != array.shape[0] or bool(bands))
    count = array.shape[0] - has_alpha
    image_bands = list(range(count)) if bands is None else select_bands(path, count, bands)
    info = SceneInfo(
        path, array.shape[1], array.shape[2], len(image_bands), str(array.dtype), is_tiff=False
    )
    return SceneReader(
        info, _array=array, _alpha=count if has_alpha else None, _image_bands=image_bands
    )


def check_output_dir(out: PathLike, inputs: Sequence[PathLike] = ()) -> Path:
    """Create ``out`` if needed and check a file can be written there, before any work starts.

    Refuses a folder that is, or holds, one of ``inputs`` (outputs there could replace them).
    """
    out = files.check_output_dir(out, inputs=inputs)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".satunet-write-test-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OutputError(
            f"cannot write to output folder {out}: {e.strerror or e}; choose another --out "
            "or fix its permissions"
        ) from e
    return out


def temporary_name(final: Path) -> Path:
    """A hidden sibling of ``final`` to write to before the rename that publishes it."""
    return final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.part")


@dataclass(frozen=True)
class RasterStyle:
    """What GIS software shows a raster with: colours, names and units (TIFF outputs only).

    ``colormap`` is band 1's colour table ({value: (r, g, b, a)}); ``descriptions`` one name per
    band; ``tags`` band 1's metadata items; ``scales`` per-band factors to physical values
    (GDAL's scale/offset); ``aux_xml`` the text of a GDAL PAM sidecar (``NAME.tif.aux.xml``,
    e.g. category names and a raster attribute table, which GeoTIFF tags cannot hold).
    """

    colormap: dict[int, tuple[int, int, int, int]] | None = None
    descriptions: tuple[str, ...] | None = None
    tags: dict[str, str] | None = None
    scales: tuple[float, ...] | None = None
    aux_xml: str | None = None

    def apply(self, dataset: Any) -> None:
        """Set these on a rasterio dataset open for writing."""
        if self.colormap:
            dataset.write_colormap(1, self.colormap)
        for i, text in enumerate(self.descriptions or (), start=1):
            dataset.set_band_description(i, text)
        if self.tags:
            dataset.update_tags(1, **self.tags)
        if self.scales:
            dataset.scales = self.scales


class RasterWriter:
    """Writes a (count, H, W) uint8 raster by row bands, to a temporary name until :meth:`commit`.

    TIFF outputs are GeoTIFFs with the source's CRS, transform and tiling (deflate-compressed;
    rows are handed to GDAL in whole rows of tiles, see :mod:`satunet.data.blockrows`), turned
    into a Cloud-Optimized GeoTIFF on commit when ``cog``, styled by ``style``; other
    outputs are PNGs built in memory (their inputs were whole in memory too).
    """

    def __init__(
        self,
        path: PathLike,
        like: SceneInfo,
        *,
        count: int = 1,
        nodata: int | None = None,
        cog: bool = False,
        style: RasterStyle | None = None,
    ):
        self.path = Path(path)
        self.tiff = self.path.suffix.lower() in TIFF_SUFFIXES
        self.cog, self.style = cog, style
        self.height, self.width, self.count = like.height, like.width, count
        self._tmp = temporary_name(self.path)
        self._dataset: Any = None
        self._array: np.ndarray | None = None
        self._rows: BlockRows | None = None  # rows gathered into whole block rows
        if not self.tiff:
            self._array = np.zeros((count, like.height, like.width), dtype=np.uint8)
            return
        import rasterio

        profile: dict[str, Any] = {
            "driver": "GTiff",
            "height": like.height,
            "width": like.width,
            "count": count,
            "dtype": "uint8",
            "crs": like.crs,
            "transform": like.transform,
            "nodata": nodata,
            "compress": "deflate",
            "BIGTIFF": "IF_SAFER",
        }
        if like.block_shape is not None:
            profile |= {
                "tiled": True,
                "blockysize": like.block_shape[0],
                "blockxsize": like.block_shape[1],
            }
        if count > 1:
            profile["interleave"] = "band"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                self._dataset = rasterio.open(self._tmp, "w", **profile)
                if style is not None:
                    style.apply(self._dataset)
        except Exception as e:  # noqa: BLE001 - GDAL create errors; re-raised with the path
            self.abort()
            raise OutputError(f"cannot create {self._tmp}: {e}; check --out") from e
        block_rows = self._dataset.block_shapes[0][0]
        if 1 < block_rows and count * block_rows * like.width <= WRITE_BUFFER_MAX_BYTES:
            self._rows = BlockRows(count, block_rows, like.width, like.height)

    def write(self, rows: np.ndarray, row0: int) -> None:
        """Write ``rows`` (count, n, width) uint8 at scene row ``row0``."""
        if self._array is not None:
            self._array[:, row0 : row0 + rows.shape[1]] = rows
            return
        if self._rows is None:
            self._write(rows, row0)
            return
        for ready, start in self._rows.add(rows, row0):
            self._write(ready, start)

    def _write(self, rows: np.ndarray, row0: int) -> None:
        from rasterio.windows import Window

        window = Window(0, row0, self.width, rows.shape[1])
        try:
            self._dataset.write(rows, window=window)
        except Exception as e:  # noqa: BLE001 - disk full and friends
            raise OutputError(f"cannot write {self._tmp}: {e}") from e

    def commit(self) -> Path:
        """Finish the file and rename it to its final name."""
        try:
            if self._array is not None:
                from PIL import Image

                array = self._array[0] if self.count == 1 else self._array.transpose(1, 2, 0)
                Image.fromarray(array).save(self._tmp, format="PNG")
            else:
                for ready, start in self._rows.flush() if self._rows is not None else ():
                    self._write(ready, start)
                self._rows = None
                self._dataset.close()
                self._dataset = None
                if self.cog:
                    self._to_cog()
                if self.style is not None and self.style.aux_xml:  # before the file appears
                    files.atomic_write_text(f"{self.path}.aux.xml", self.style.aux_xml)
            os.replace(self._tmp, self.path)
        except OSError as e:
            self.abort()
            raise OutputError(f"cannot write {self.path}: {e}") from e
        return self.path

    def _to_cog(self) -> None:
        import rasterio.shutil

        cog = temporary_name(self.path)
        try:
            rasterio.shutil.copy(
                self._tmp,
                cog,
                driver="COG",
                compress="DEFLATE",
                BIGTIFF="IF_SAFER",
                OVERVIEW_RESAMPLING="NEAREST",
            )
            os.replace(cog, self._tmp)
        finally:
            Path(cog).unlink(missing_ok=True)

    def abort(self) -> None:
        """Drop the temporary file (after an error): nothing appears under the final name."""
        if self._dataset is not None:
            with contextlib.suppress(Exception):
                self._dataset.close()
            self._dataset = None
        self._array = None
        self._rows = None
        self._tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def gdal_env() -> Iterator[None]:
    """A rasterio environment with a small block cache (see GDAL_CACHE_MB)."""
    import rasterio

    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
        yield


def write_geotiff(
    path: PathLike,
    array: np.ndarray,
    *,
    crs: Any = None,
    transform: Any = None,
    nodata: float | None = None,
    tiled: bool = True,
) -> Path:
    """Write a whole (C, H, W) array as a GeoTIFF (for generated scenes and tests), atomically."""
    import rasterio

    path = Path(path)
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "height": array.shape[1],
        "width": array.shape[2],
        "count": array.shape[0],
        "dtype": str(array.dtype),
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
        "BIGTIFF": "IF_SAFER",
    }
    if tiled:
        profile |= {"tiled": True, "blockxsize": 256, "blockysize": 256}
    with files.atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(array)
    return path
