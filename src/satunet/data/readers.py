"""Read images and masks (PNG/JPEG with Pillow, TIFF/GeoTIFF with rasterio) by window.

Every read error becomes a :class:`~satunet.errors.DataError` that names the file, so a corrupt
PNG deep inside an epoch says which file to replace instead of printing a decoder traceback.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from satunet.data.tiling import Window
from satunet.errors import DataError

PathLike = str | os.PathLike[str]

PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
TIFF_SUFFIXES = (".tif", ".tiff")
SUFFIXES = PIL_SUFFIXES + TIFF_SUFFIXES


@dataclass(frozen=True)
class RasterInfo:
    """What a file header says: size, band count and pixel type."""

    height: int
    width: int
    bands: int
    dtype: str


def natural_key(path: Path) -> tuple:
    """Sort key that puts 2.png before 10.png (LoveDA ids are numbers)."""
    stem = path.stem
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)


def list_rasters(
    folder: PathLike, suffixes: tuple[str, ...] = SUFFIXES
) -> tuple[list[Path], list[Path]]:
    """The one rule by which every loader and ``data check`` lists a folder's image files.

    Returns (files whose suffix, in any letter case, is one of ``suffixes``, in natural order;
    the other entries, which are ignored). ``1.PNG`` and ``1.png`` are both images; hidden files
    (``.DS_Store``, editors' temporaries) are neither listed nor reported.
    """
    wanted = {s.lower() for s in suffixes}
    files: list[Path] = []
    ignored: list[Path] = []
    for entry in Path(folder).iterdir():
        if entry.name.startswith("."):
            continue
        (files if entry.is_file() and entry.suffix.lower() in wanted else ignored).append(entry)
    return sorted(files, key=natural_key), sorted(ignored)


def _is_tiff(path: Path) -> bool:
    return path.suffix.lower() in TIFF_SUFFIXES


def _unreadable(path: Path, error: Exception) -> DataError:
    return DataError(
        f"cannot read {path}: {error}. The file is corrupt, truncated or not an image: "
        "replace it (re-download or re-export), or remove it together with its pair."
    )


def raster_info(path: PathLike) -> RasterInfo:
    """Header of an image file without decoding its pixels."""
    path = Path(path)
    try:
        if _is_tiff(path):
            import rasterio

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                with rasterio.open(path) as src:
                    return RasterInfo(src.height, src.width, src.count, src.dtypes[0])
        from PIL import Image

        with Image.open(path) as im:
            bands = len(im.getbands())
            dtype = "uint16" if im.mode.startswith("I;16") else "uint8"
            if im.mode in ("I", "F"):
                dtype = "int32" if im.mode == "I" else "float32"
            return RasterInfo(im.height, im.width, bands, dtype)
    except DataError:
        raise
    except Exception as e:  # decoders raise many types (OSError, RasterioIOError, SyntaxError...)
        raise _unreadable(path, e) from e


def _read_pil(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        # Palette ("P") PNG masks come back as their indices, which are the class ids.
        with Image.open(path) as im:
            return np.asarray(im)
    except Exception as e:  # noqa: BLE001 - decoder errors are many types; re-raised with the path
        raise _unreadable(path, e) from e


def _read_tiff(path: Path, window: Window | None) -> np.ndarray:
    import rasterio
    from rasterio.windows import Window as RioWindow

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                win = None
                if window is not None:
                    win = RioWindow(window.col, window.row, window.width, window.height)
                return src.read(window=win)  # (C, H, W)
    except Exception as e:  # noqa: BLE001 - rasterio/GDAL errors; re-raised with the path
        raise _unreadable(path, e) from e


class RasterReader:
    """Reads (C, H, W) image and (H, W) mask arrays, keeping the last decoded image and mask.

    PNG and JPEG cannot be decoded by window, so a 1024x1024 LoveDA image cut into four tiles
    would be decoded four times; keeping the last two files (an image and its mask) makes an
    in-order pass (evaluation, or a DataLoader worker handed consecutive indices) decode each
    file once. TIFFs are read by window and not kept.
    """

    KEEP = 2

    def __init__(self) -> None:
        self._kept: dict[Path, np.ndarray] = {}

    def _whole(self, path: Path) -> np.ndarray:
        if path in self._kept:
            return self._kept[path]
        array = _read_pil(path)
        if len(self._kept) >= self.KEEP:
            del self._kept[next(iter(self._kept))]  # the oldest entry
        self._kept[path] = array
        return array

    def read(self, path: PathLike, window: Window | None = None) -> np.ndarray:
        """Pixels of ``path`` in ``window`` (whole file when None), shape (C, H, W)."""
        path = Path(path)
        if _is_tiff(path):
            array = _read_tiff(path, window)
        else:
            whole = self._whole(path)
            whole = whole[:, :, None] if whole.ndim == 2 else whole
            array = whole.transpose(2, 0, 1)  # (H, W, C) -> (C, H, W)
            if window is not None:
                rows = slice(window.row, window.row + window.height)
                array = array[:, rows, window.col : window.col + window.width]
        if window is not None and array.shape[1:] != (window.height, window.width):
            raise DataError(
                f"{path} is {array.shape[2]}x{array.shape[1]} pixels (WxH), too small for the "
                f"tile at row {window.row}, col {window.col} of size {window.width}x"
                f"{window.height}: the file changed since the dataset was built, or its pair "
                "has another size. Run `satunet data check` on the dataset."
            )
        return array

    def read_mask(self, path: PathLike, window: Window | None = None) -> np.ndarray:
        """Single-band mask (H, W); 3-band masks are accepted only when the bands are equal."""
        array = self.read(path, window)
        if array.shape[0] == 1:
            return array[0]
        if (
            array.shape[0] in (3, 4)
            and np.array_equal(array[0], array[1])
            and np.array_equal(array[0], array[2])
        ):  # grey masks saved as RGB(A), as OpenCV writes them
            return array[0]
        raise DataError(
            f"mask {path} has {array.shape[0]} bands with different values: a mask must hold one "
            "class id per pixel (a single band). Convert colour-coded masks to class ids first."
        )
