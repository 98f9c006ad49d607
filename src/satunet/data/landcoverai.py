"""LandCover.ai v1 read from its official release: orthophotos plus the official split lists.

The dataset's own ``split.py`` cuts every orthophoto into 512x512 tiles and the split lists
(``train.txt``, ``val.txt``, ``test.txt``) name those tiles ``{sheet}_{k}``. We reproduce that
cutting rule here (:func:`official_tiles`) and read each tile by window from the GeoTIFFs, so no
cutting step or OpenCV is needed; an ``output/`` folder already cut by ``split.py`` works too.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from satunet.data.base import PathLike, Record, SegmentationDataset, Transform, label_lut
from satunet.data.check import CheckReport, Part, check_pair, pairs_in, progress_bar
from satunet.data.download import Resource, download_resources
from satunet.data.readers import list_rasters, raster_info
from satunet.data.tiling import Window
from satunet.errors import ConfigError, DataError, DatasetNotFoundError, UnknownNameError

SPLITS = ("train", "val", "test")
CLASSES = ("background", "building", "woodland", "water", "road")
PALETTE = ((255, 255, 255), (97, 74, 74), (38, 115, 0), (0, 197, 255), (207, 207, 207))
TILE_SIZE = 512

# LandCover.ai v1 from the authors' site: one archive holds all splits.
RESOURCES = (
    Resource(
        "https://landcover.ai.linuxpolska.com/download/landcover.ai.v1.zip",
        "landcover.ai.v1.zip",
        "3268c89070e8734b4e91d531c0617e03",
    ),
)


def official_tiles(height: int, width: int, tile: int = TILE_SIZE) -> dict[int, Window]:
    """The tiles ``split.py`` writes for one orthophoto, keyed by their index k.

    ``split.py`` walks rows (outer loop) then columns on ``range(0, size, tile)``, so the grid
    includes the partial tiles at the right and bottom edges; it writes full tiles only, but k
    advances for every grid cell. Hence k = row * ceil(width / tile) + col, with gaps where
    partial tiles were skipped.
    """
    per_row = math.ceil(width / tile)
    tiles: dict[int, Window] = {}
    for r, y in enumerate(range(0, height, tile)):
        for c, x in enumerate(range(0, width, tile)):
            if y + tile <= height and x + tile <= width:
                tiles[r * per_row + c] = Window(y, x, tile, tile)
    return tiles


class LandCoverAI(SegmentationDataset):
    """LandCover.ai v1 (Boguszewski et al., CVPR Workshops 2021), CC BY-NC-SA 4.0.

    ``source="orthophotos"`` cuts ``images/*.tif`` and ``masks/*.tif`` on the fly by the
    official rule (lossless pixels); ``"tiles"`` reads ``output/{id}.jpg`` and ``{id}_m.png`` as
    ``split.py`` wrote them (JPEG, as most published results used); ``"auto"`` uses ``output/``
    when it holds tiles, else the orthophotos. Either way the official split lists select the
    samples, and ``groups`` are the orthophoto sheet names. ``download=True`` fetches and
    extracts the release when the split list is absent (``checksum`` as for :class:`LoveDA`).
    """

    resources = RESOURCES

    @staticmethod
    def check_layout(report: CheckReport, split: str | None, progress: bool | None) -> None:
        """Check this dataset's layout under ``report.root`` file by file (``data check``)."""
        check_landcoverai_layout(report, split, progress)

    def __init__(
        self,
        root: PathLike = "data/landcoverai",
        split: Literal["train", "val", "test"] = "train",
        tile_size: int = TILE_SIZE,
        source: Literal["auto", "orthophotos", "tiles"] = "auto",
        transforms: Transform | None = None,
        download: bool = False,
        checksum: bool = False,
    ) -> None:
        if split not in SPLITS:
            raise UnknownNameError("LandCover.ai split", split, SPLITS)
        if tile_size != TILE_SIZE:
            raise ConfigError(
                f"LandCover.ai tile_size must be {TILE_SIZE}: the official split lists name "
                f"512x512 tiles (got {tile_size}). Crop smaller with train_transforms(crop=...)."
            )
        if source not in ("auto", "orthophotos", "tiles"):
            raise UnknownNameError("LandCover.ai source", source, ("auto", "orthophotos", "tiles"))
        self.root, self.split = Path(root), split
        if download and not (self.root / f"{split}.txt").is_file():
            download_resources("landcoverai", self.resources, self.root, checksum=checksum)
        ids = self._split_ids()
        output = self.root / "output"
        if source == "auto":
            source = "tiles" if output.is_dir() and any(output.glob("*_m.png")) else "orthophotos"
        self.source = source
        records = self._tile_records(ids) if source == "tiles" else self._ortho_records(ids)
        super().__init__(
            records,
            classes=CLASSES,
            palette=PALETTE,
            ignore_index=None,
            in_channels=3,
            lut=label_lut({v: v for v in range(len(CLASSES))}),
            transforms=transforms,
        )

    def _split_ids(self) -> list[str]:
        hint = (
            f"Download it with `satunet data download landcoverai --root {self.root}` or pass "
            "download=True."
        )
        if not self.root.is_dir():
            raise DatasetNotFoundError(f"LandCover.ai root {self.root} does not exist. {hint}")
        listing = self.root / f"{self.split}.txt"
        if not listing.is_file():
            raise DatasetNotFoundError(
                f"{listing} does not exist: the official release has train.txt, val.txt and "
                f"test.txt next to images/ and masks/. {hint}"
            )
        ids = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        if not ids:
            raise DataError(f"{listing} lists no tiles: restore it from the official archive.")
        return ids

    def _ortho_records(self, ids: list[str]) -> list[Record]:
        images_dir, masks_dir = self.root / "images", self.root / "masks"
        for folder in (images_dir, masks_dir):
            if not folder.is_dir():
                raise DatasetNotFoundError(
                    f"{folder} does not exist: expected the orthophotos in images/*.tif and "
                    f"masks/*.tif under {self.root} (or tiles cut by split.py in output/)."
                )
        sheets, _ = list_rasters(images_dir, (".tif",))
        if not sheets:
            raise DatasetNotFoundError(f"{images_dir} holds no .tif orthophotos.")
        masks = {p.stem: p for p in list_rasters(masks_dir, (".tif",))[0]}
        tiles: dict[str, Record] = {}
        for image in sheets:
            mask = masks.get(image.stem, masks_dir / image.name)
            if not mask.is_file():
                raise DataError(
                    f"orthophoto {image} has no mask {mask}: restore it from the archive."
                )
            info, mask_info = raster_info(image), raster_info(mask)
            if (info.height, info.width) != (mask_info.height, mask_info.width):
                raise DataError(
                    f"mask {mask} is {mask_info.width}x{mask_info.height} but {image} is "
                    f"{info.width}x{info.height}: restore both from the archive."
                )
            for k, window in official_tiles(info.height, info.width).items():
                tiles[f"{image.stem}_{k}"] = Record(image, mask, window, image.stem)
        unknown = [i for i in ids if i not in tiles]
        if unknown:
            raise DataError(
                f"{len(unknown)} tile(s) listed in {self.root / (self.split + '.txt')} are not "
                f"produced by cutting the orthophotos in {images_dir}: "
                f"{', '.join(unknown[:5])}. An orthophoto is missing or differs from the "
                "official release; re-download it."
            )
        return [tiles[i] for i in ids]

    def _tile_records(self, ids: list[str]) -> list[Record]:
        output = self.root / "output"
        records, missing = [], []
        for tile_id in ids:
            image, mask = output / f"{tile_id}.jpg", output / f"{tile_id}_m.png"
            if not (image.is_file() and mask.is_file()):
                missing.append(tile_id)
                continue
            records.append(Record(image, mask, None, tile_id.rsplit("_", 1)[0]))
        if missing:
            raise DataError(
                f"{len(missing)} tile(s) of {self.split}.txt are missing from {output} (e.g. "
                f"{', '.join(missing[:5])}): split.py did not finish. Run it again, or pass "
                "source='orthophotos' to cut the orthophotos directly."
            )
        return records


def check_landcoverai_layout(report: CheckReport, split: str | None, progress: bool | None) -> None:
    """Check the official layout under ``report.root`` file by file (``satunet data check``)."""

    report.classes = dict(enumerate(CLASSES))
    part = Part("all", "orthophotos")
    report.parts.append(part)
    work: list[tuple[Path, Path | None]] = []
    output = report.root / "output"
    cut = {p.stem for p in output.glob("*.jpg")} if output.is_dir() else set()
    if (report.root / "images").is_dir():
        work = pairs_in(report, part, report.root / "images", report.root / "masks", (".tif",))
    else:
        part.present = False
    tiles: set[str] = set()
    for image, _ in work:
        try:
            info = raster_info(image)
        except DataError:
            continue  # reported by check_pair below
        tiles |= {f"{image.stem}_{k}" for k in official_tiles(info.height, info.width)}
    if not work and not cut:
        report.problem(
            report.root,
            "holds neither images/*.tif nor output/*.jpg: download the release with "
            "`satunet data download landcoverai`",
        )
    for s in [split] if split else list(SPLITS):
        listing = report.root / f"{s}.txt"
        ids = listing.read_text().split() if listing.is_file() else []
        split_part = Part(s, "tiles listed", images=len(ids), masks=len(ids), files=False)
        report.parts.append(split_part)
        if not listing.is_file():
            split_part.present = False
            report.problem(listing, "is missing (the official split list)")
            continue
        unknown = [i for i in ids if i not in tiles] if work else []
        if unknown:
            report.problem(
                listing,
                f"lists {len(unknown)} tile(s) the orthophotos do not produce, e.g. "
                f"{', '.join(unknown[:3])}",
            )
        if cut:
            absent = [i for i in ids if i not in cut]
            if absent:
                report.problem(
                    output, f"lacks {len(absent)} tile(s) of {s}.txt (split.py stopped?)"
                )
    if cut and work:
        report.notes.append(f"output/ holds {len(cut)} tiles cut by split.py (not decoded here)")
    elif cut:  # only split.py's tiles are left: check those
        tiles_part = Part("all", "output tiles", images=len(cut))
        report.parts.append(tiles_part)
        for stem in sorted(cut):
            mask = output / f"{stem}_m.png"
            if mask.is_file():
                tiles_part.masks += 1
                work.append((output / f"{stem}.jpg", mask))
            else:
                report.problem(output / f"{stem}.jpg", f"has no mask {mask.name}")
    for image, mask in progress_bar(work, "checking LandCover.ai", progress):
        check_pair(report, image, mask, set(range(len(CLASSES))), 3)
