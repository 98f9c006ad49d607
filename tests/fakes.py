"""Tiny datasets in the official layouts, generated (seeded) so no binaries are committed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

LOVEDA_SPLITS = {"train": "Train", "val": "Val", "test": "Test"}
LOVEDA_SCENES = {"urban": "Urban", "rural": "Rural"}


def make_loveda(
    root: Path,
    *,
    splits: Sequence[str] = ("train", "val", "test"),
    scenes: Sequence[str] = ("urban", "rural"),
    n: int = 2,
    size: int = 64,
    seed: int = 0,
) -> Path:
    """LoveDA tree ``Split/Scene/images_png|masks_png/{id}.png`` (no masks for test).

    Masks hold raw values 0..7 (0 = no-data), every value present in each mask.
    """
    rng = np.random.default_rng(seed)
    next_id = 0
    for split in splits:
        for scene in scenes:
            folder = Path(root) / LOVEDA_SPLITS[split] / LOVEDA_SCENES[scene]
            (folder / "images_png").mkdir(parents=True, exist_ok=True)
            if split != "test":
                (folder / "masks_png").mkdir(parents=True, exist_ok=True)
            for _ in range(n):
                image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(image).save(folder / "images_png" / f"{next_id}.png")
                if split != "test":
                    mask = rng.integers(0, 8, (size, size), dtype=np.uint8)
                    mask.flat[:8] = np.arange(8)
                    Image.fromarray(mask, mode="L").save(folder / "masks_png" / f"{next_id}.png")
                next_id += 1
    return Path(root)


def make_geotiff(
    path: Path,
    *,
    height: int = 64,
    width: int = 64,
    bands: int = 3,
    dtype: str = "uint8",
    data: np.ndarray | None = None,
    crs: str = "EPSG:2180",
    origin: tuple[float, float] = (500000.0, 300000.0),
    resolution: float = 0.25,
    seed: int = 0,
) -> Path:
    """A GeoTIFF with a real CRS and affine transform; random pixels unless ``data`` (C,H,W)."""
    import rasterio
    from affine import Affine

    if data is None:
        rng = np.random.default_rng(seed)
        high = np.iinfo(dtype).max if np.issubdtype(np.dtype(dtype), np.integer) else 1
        data = rng.integers(0, int(high) + 1, (bands, height, width)).astype(dtype)
    data = data[None] if data.ndim == 2 else data
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=data.shape[1],
        width=data.shape[2],
        count=data.shape[0],
        dtype=data.dtype,
        crs=crs,
        transform=Affine(resolution, 0.0, origin[0], 0.0, -resolution, origin[1]),
    ) as dst:
        dst.write(data)
    return path


def split_py_tiles(height: int, width: int, tile: int = 512) -> dict[int, tuple[int, int]]:
    """The (y, x) of every tile LandCover.ai's split.py writes, by k: a loop like the script's."""
    tiles, k = {}, 0
    for y in range(0, height, tile):
        for x in range(0, width, tile):
            if min(tile, height - y) == tile and min(tile, width - x) == tile:
                tiles[k] = (y, x)
            k += 1
    return tiles


def make_landcoverai(
    root: Path,
    *,
    sheets: Sequence[tuple[str, int, int]] = (("M-33-7-A-d-2-3", 1100, 1300), ("N-34-1", 700, 520)),
    output: bool = False,
    seed: int = 0,
) -> Path:
    """LandCover.ai release: ``images/*.tif``, ``masks/*.tif`` and train/val/test.txt.

    ``sheets`` are (name, height, width); the split lists take the tiles split.py would cut,
    dealt round-robin to train, val, test. ``output=True`` also writes split.py's
    ``output/{id}.jpg`` and ``{id}_m.png``.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    ids: list[str] = []
    for name, height, width in sheets:
        image = rng.integers(0, 256, (3, height, width), dtype=np.uint8)
        mask = rng.integers(0, 5, (height, width), dtype=np.uint8)
        make_geotiff(root / "images" / f"{name}.tif", data=image)
        make_geotiff(root / "masks" / f"{name}.tif", data=mask)
        for k, (y, x) in split_py_tiles(height, width).items():
            ids.append(f"{name}_{k}")
            if output:
                out = root / "output"
                out.mkdir(exist_ok=True)
                tile = image[:, y : y + 512, x : x + 512].transpose(1, 2, 0)
                Image.fromarray(tile).save(out / f"{name}_{k}.jpg", quality=95)
                Image.fromarray(mask[y : y + 512, x : x + 512]).save(out / f"{name}_{k}_m.png")
    for i, split in enumerate(("train", "val", "test")):
        (root / f"{split}.txt").write_text("".join(f"{t}\n" for t in ids[i::3]))
    return root


def make_folder(
    root: Path,
    *,
    n: int = 2,
    size: int = 64,
    num_classes: int = 3,
    suffix: str = ".png",
    bands: int = 3,
    dtype: str = "uint8",
    classes_file: bool = True,
    seed: int = 0,
) -> Path:
    """A user folder ``images/`` + ``masks/`` (+ ``classes.json``); TIFF for other bands/dtypes."""
    import json

    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        mask = rng.integers(0, num_classes, (size, size), dtype=np.uint8)
        if suffix in (".tif", ".tiff"):
            make_geotiff(
                root / "images" / f"tile{i}{suffix}",
                height=size,
                width=size,
                bands=bands,
                dtype=dtype,
                seed=seed + i,
            )
            make_geotiff(root / "masks" / f"tile{i}{suffix}", data=mask)
        else:
            image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / "images" / f"tile{i}{suffix}")
            Image.fromarray(mask).save(root / "masks" / f"tile{i}.png")
    if classes_file:
        names = [f"c{i}" for i in range(num_classes)]
        (root / "classes.json").write_text(json.dumps({"classes": names}))
    return root
