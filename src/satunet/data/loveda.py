"""LoveDA read from its official tree: ``Train|Val|Test/Urban|Rural/images_png|masks_png``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from satunet.data.base import (
    PathLike,
    Record,
    SegmentationDataset,
    Transform,
    label_lut,
)
from satunet.data.check import CheckReport, Part, check_pair, pairs_in, progress_bar
from satunet.data.download import Resource, download_resources
from satunet.data.readers import list_rasters, raster_info
from satunet.data.tiling import tile_grid
from satunet.errors import ConfigError, DataError, DatasetNotFoundError, UnknownNameError

SPLITS = {"train": "Train", "val": "Val", "test": "Test"}
SCENES = {"urban": "Urban", "rural": "Rural"}

# Raw mask values as published: 0 is no-data, 1..7 the classes below.
OFFICIAL_CLASSES = ("background", "building", "road", "water", "barren", "forest", "agriculture")
# Colours of the LoveDA authors' visualisation (github.com/Junjue-Wang/LoveDA).
OFFICIAL_PALETTE = (
    (255, 255, 255),
    (255, 0, 0),
    (255, 255, 0),
    (0, 0, 255),
    (159, 129, 183),
    (0, 255, 0),
    (255, 195, 128),
)
IGNORE_INDEX = 255

# Zenodo record 5706578: one archive per split.
RESOURCES = (
    Resource(
        "https://zenodo.org/records/5706578/files/Train.zip?download=1",
        "Train.zip",
        "de2b196043ed9b4af1690b3f9a7d558f",
        "train",
    ),
    Resource(
        "https://zenodo.org/records/5706578/files/Val.zip?download=1",
        "Val.zip",
        "84cae2577468ff0b5386758bb386d31d",
        "val",
    ),
    Resource(
        "https://zenodo.org/records/5706578/files/Test.zip?download=1",
        "Test.zip",
        "a489be0090465e01fb067795d24e6b47",
        "test",
    ),
)


class LoveDA(SegmentationDataset):
    """LoveDA (Wang et al., NeurIPS 2021 Datasets and Benchmarks), CC BY-NC-SA 4.0.

    ``labels="official"`` is the benchmark protocol: 7 classes, raw value v -> v-1, and no-data
    (raw 0) -> ``ignore_index=255`` so loss and metrics skip it. ``labels="study"`` reproduces
    the study: 8 classes with no-data as class 0 and nothing ignored. ``tile_size=512`` cuts each
    1024x1024 image into 4 tiles in row-major order (the study's tiling); ``None`` keeps whole
    images. ``scene="both"`` reads the scene folders that exist (a partial download is fine).
    ``download=True`` fetches the split's official archive when its folder is absent (fresh
    downloads are always md5-checked); ``checksum=True`` also re-checks an archive already there.
    """

    resources = RESOURCES

    @staticmethod
    def check_layout(report: CheckReport, split: str | None, progress: bool | None) -> None:
        """Check this dataset's layout under ``report.root`` file by file (``data check``)."""
        check_loveda_layout(report, split, progress)

    def __init__(
        self,
        root: PathLike = "data/loveda",
        split: Literal["train", "val", "test"] = "train",
        scene: Literal["urban", "rural", "both"] = "both",
        tile_size: int | None = 512,
        labels: Literal["official", "study"] = "official",
        transforms: Transform | None = None,
        download: bool = False,
        checksum: bool = False,
    ) -> None:
        if split not in SPLITS:
            raise UnknownNameError("LoveDA split", split, SPLITS)
        if scene not in (*SCENES, "both"):
            raise UnknownNameError("LoveDA scene", scene, (*SCENES, "both"))
        if labels not in ("official", "study"):
            raise UnknownNameError("LoveDA labels", labels, ("official", "study"))
        if tile_size is not None and tile_size < 1:
            raise ConfigError(f"tile_size must be a positive number of pixels or None: {tile_size}")
        self.root, self.split, self.scene, self.tile_size = Path(root), split, scene, tile_size
        split_dir = self.root / SPLITS[split]
        if download and not split_dir.is_dir():
            download_resources(
                "loveda", self.resources, self.root, splits=[split], checksum=checksum
            )
        records = self._find(split_dir)
        if labels == "official":
            classes, palette, ignore = OFFICIAL_CLASSES, OFFICIAL_PALETTE, IGNORE_INDEX
            lut = label_lut({0: IGNORE_INDEX} | {v: v - 1 for v in range(1, 8)})
        else:
            classes, palette = ("no-data", *OFFICIAL_CLASSES), ((0, 0, 0), *OFFICIAL_PALETTE)
            ignore, lut = None, label_lut({v: v for v in range(8)})
        super().__init__(
            records,
            classes=classes,
            palette=palette,
            ignore_index=ignore,
            in_channels=3,
            lut=lut,
            transforms=transforms,
        )
        self.labels = labels

    def _find(self, split_dir: Path) -> list[Record]:
        hint = (
            f"Download it with `satunet data download loveda --root {self.root}` or pass "
            "download=True (Zenodo record 5706578)."
        )
        if not self.root.is_dir():
            raise DatasetNotFoundError(f"LoveDA root {self.root} does not exist. {hint}")
        if not split_dir.is_dir():
            raise DatasetNotFoundError(
                f"LoveDA split folder {split_dir} does not exist (expected "
                f"{split_dir.name}/Urban|Rural/images_png under {self.root}). {hint}"
            )
        wanted = list(SCENES.values()) if self.scene == "both" else [SCENES[self.scene]]
        present = [s for s in wanted if (split_dir / s / "images_png").is_dir()]
        if self.scene != "both" and not present:
            raise DatasetNotFoundError(
                f"LoveDA scene folder {split_dir / wanted[0] / 'images_png'} does not exist. "
                f"Use scene='both' to read the scenes that exist, or download it: {hint}"
            )
        if not present:
            raise DatasetNotFoundError(
                f"{split_dir} holds neither Urban/images_png nor Rural/images_png. {hint}"
            )
        records: list[Record] = []
        for scene in present:
            records += self._scene_records(split_dir / scene, scene)
        return records

    def _scene_records(self, scene_dir: Path, scene: str) -> list[Record]:
        images, _ = list_rasters(scene_dir / "images_png", (".png",))
        if not images:
            raise DatasetNotFoundError(
                f"{scene_dir / 'images_png'} holds no .png images: the download or extraction "
                "was incomplete. Delete the folder and download again."
            )
        mask_dir = scene_dir / "masks_png"
        labeled = self.split != "test"
        if labeled and not mask_dir.is_dir():
            raise DatasetNotFoundError(
                f"{mask_dir} does not exist but the {self.split} split is labeled: extract the "
                "archive again (the official layout has masks_png next to images_png)."
            )
        masks = {p.stem: p for p in list_rasters(mask_dir, (".png",))[0]} if labeled else {}
        records: list[Record] = []
        missing: list[str] = []
        for image in images:
            mask = masks.get(image.stem) if labeled else None
            if labeled and mask is None:
                missing.append(image.name)
                continue
            group = f"{scene}/{image.stem}"
            if self.tile_size is None:
                records.append(Record(image, mask, None, group))
                continue
            info = raster_info(image)
            windows = tile_grid(info.height, info.width, self.tile_size)
            if not windows:
                raise DataError(
                    f"{image} is {info.width}x{info.height}, smaller than tile_size="
                    f"{self.tile_size}: use a smaller tile_size or tile_size=None."
                )
            records += [Record(image, mask, w, group) for w in windows]
        if missing:
            raise DataError(
                f"{len(missing)} image(s) in {scene_dir / 'images_png'} have no mask in "
                f"{mask_dir}: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}. "
                "Restore the masks or remove those images; `satunet data check loveda` lists all."
            )
        return records


def check_loveda_layout(report: CheckReport, split: str | None, progress: bool | None) -> None:
    """Check the official layout under ``report.root`` file by file (``satunet data check``)."""

    report.classes = {0: "no-data (ignored)"} | {i + 1: c for i, c in enumerate(OFFICIAL_CLASSES)}
    splits = [split] if split else list(SPLITS)
    work: list[tuple[Path, Path | None]] = []
    for s in splits:
        for scene in SCENES.values():
            folder = report.root / SPLITS[s] / scene
            part = Part(s, scene.lower())
            report.parts.append(part)
            if not (folder / "images_png").is_dir():
                part.present = False
                continue
            masks = folder / "masks_png" if s != "test" else None
            work += pairs_in(report, part, folder / "images_png", masks, (".png",))
    if not any(p.present for p in report.parts):
        report.problem(
            report.root,
            f"holds no LoveDA split ({'/'.join(SPLITS[s] for s in splits)}/Urban|Rural/"
            "images_png): download it with `satunet data download loveda`",
        )
    for image, mask in progress_bar(work, "checking LoveDA", progress):
        check_pair(report, image, mask, set(range(8)), 3)
