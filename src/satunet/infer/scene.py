"""Scenes on disk: predict an image file of any size into class masks, probabilities, a preview.

PNG/JPEG inputs cannot be decoded by window, so they are held whole; (Geo)TIFFs stream in row
bands through :mod:`satunet.infer.engine`. Every output appears under its final name only
when complete.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from satunet import files
from satunet.checkpoint import ModelInfo
from satunet.data.geotiff import (
    RasterWriter,
    SceneInfo,
    SceneReader,
    check_output_dir,
    gdal_env,
    open_scene,
)
from satunet.data.tiling import BlendKind, plan_bands
from satunet.data.vectorize import vectorize_classes
from satunet.errors import ConfigError, InputSizeError, OutputError
from satunet.files import PathLike
from satunet.infer.engine import NODATA, argmax_classes, check_tiling, run_bands, softmax
from satunet.infer.gis import PROBABILITY_MAX, class_style, probability_style
from satunet.infer.loveda import check_submission_input, submission_classes
from satunet.infer.pipeline import StageTimes, Writer
from satunet.infer.predictors import Predictor
from satunet.report import plot_scene_preview

log = logging.getLogger(__name__)

OutputFormat = Literal["auto", "loveda-submission"]
PREVIEW_MAX_SIDE = 2048


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
    profile: dict[str, float] | None = None  # seconds per stage (predict_scene(profile=True))

    @property
    def megapixels_per_s(self) -> float:
        return self.height * self.width / 1e6 / max(self.seconds, 1e-9)

    @property
    def km2_per_min(self) -> float | None:
        return None if self.area_km2 is None else self.area_km2 / max(self.seconds, 1e-9) * 60


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
        "polygons": out_dir / f"{input.stem}.gpkg",
    }


def check_outputs(
    inputs: Iterable[PathLike], out_dir: PathLike, output_format: OutputFormat = "auto"
) -> Path:
    """Refuse, before any work, an output folder that holds an input or would overwrite one.

    Also refuses two inputs that would write the same output name. Returns the folder, created.
    """
    inputs = [Path(p) for p in inputs]
    out_dir = files.check_output_dir(out_dir, inputs=inputs)
    resolved = {p.resolve() for p in inputs}
    seen: dict[str, Path] = {}
    for path in inputs:
        for target in output_paths(path, out_dir, output_format).values():
            if target.resolve() in resolved:
                raise OutputError(
                    f"--out {out_dir} would write {target.name} over the input {target}: "
                    "choose another --out"
                )
        name = output_paths(path, out_dir, output_format)["mask"].name
        if name in seen and seen[name] != path:
            raise ConfigError(
                f"output name {name} would be written twice ({seen[name]} and {path}): inputs "
                "from different folders share a file name; predict them into separate --out folders"
            )
        seen[name] = path
    return check_output_dir(out_dir)


def check_scene(scene: SceneInfo, info: ModelInfo, submission: bool) -> None:
    """Refuse a scene whose band count (or, for a submission, name or size) does not fit."""
    if scene.bands != info.in_channels:
        raise InputSizeError(
            f"{scene.path} has {scene.bands} bands but model {info.name!r} takes "
            f"{info.in_channels}; select the bands it was trained on (e.g. gdal_translate -b 1 "
            "-b 2 -b 3) or use a checkpoint trained on this band count"
        )
    if submission:
        check_submission_input(scene.path, scene.height, scene.width)


class Preview:
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
    return plot_scene_preview(
        classes, path, names=info.class_names(), colours=info.colours(),
        nodata=NODATA if has_nodata else None,
    )  # fmt: skip


class SceneSink:
    """Turns finished logit rows into class (and probability) rows for the writers and preview."""

    def __init__(
        self,
        writers: dict[str, RasterWriter],
        selected: list[int] | None,
        probabilities: bool,
        preview: Preview | None,
        times: StageTimes | None = None,
    ):
        self.writers, self.selected = writers, selected
        self.probabilities, self.preview = probabilities, preview
        self.times = times
        self.writer = Writer(times)
        self.nodata_count = 0
        self.outputs: dict[str, Path] = {}

    def __call__(self, row0: int, logits: torch.Tensor, nodata: np.ndarray | None) -> None:
        values = logits.numpy()
        classes = argmax_classes(values[self.selected] if self.selected is not None else values)
        probs = None
        if self.probabilities:
            probs = softmax(values)
            probs *= PROBABILITY_MAX
            probs += 0.5
            probs = probs.astype(np.uint8)
        if nodata is not None:
            classes[nodata] = NODATA
            self.nodata_count += int(nodata.sum())
            if probs is not None:
                probs[:, nodata] = NODATA
        if self.preview is not None:
            self.preview.add(row0, classes)

        def job() -> None:
            self.writers["mask"].write(classes[None], row0)
            if probs is not None:
                self.writers["probabilities"].write(probs, row0)

        self.writer.submit(job)


def check_scene_options(
    info: ModelInfo,
    submission: bool,
    probabilities: bool,
    cog: bool,
    preview: bool,
    vectorize: bool = False,
) -> None:
    """Refuse option combinations predict_scene cannot honour."""
    if submission and (probabilities or cog or preview or vectorize):
        raise ConfigError(
            "--format loveda-submission writes class PNGs only: drop "
            "--probabilities, --cog, --preview and --vectorize"
        )
    if info.num_classes >= NODATA:
        raise ConfigError(
            f"uint8 masks hold at most {NODATA} classes, model has {info.num_classes}"
        )


@dataclass(frozen=True)
class Polygons:
    """``--vectorize`` options (see :func:`satunet.data.vectorize.vectorize_classes`)."""

    min_area: float = 0.0  # map units² (m² in a metric CRS): smaller regions are dropped
    simplify: float = 0.0  # Douglas-Peucker tolerance in map units (0: pixel edges as they are)

    def write(self, classes: Path, out: Path, info: ModelInfo) -> Path:
        """Vectorise the finished class raster ``classes`` into the GeoPackage ``out``."""
        names = info.class_names()
        stats = vectorize_classes(classes, out, classes=names, min_area=self.min_area,
                                  simplify=self.simplify, nodata=NODATA)  # fmt: skip
        log.info("%s: %d polygons (%d small regions dropped)", out, stats.polygons, stats.dropped)
        return out


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
    bands: Sequence[int] | None = None,
    polygons: Polygons | None = None,
    in_flight: int = 2,
    profile: bool = False,
) -> SceneResult:
    """Predict one image file of any size into ``out_dir``, streaming in row bands.

    Writes ``<stem>.tif`` (uint8 classes with the source's CRS, transform and tiling, the
    model's colour table and class names; no-data input pixels, NaN included, become 255) for
    TIFF inputs or ``<stem>.png`` otherwise; with ``probabilities`` ``<stem>_probabilities.tif``
    (one uint8 band per class, named after it, round(p * 254), no-data 255); with ``preview``
    a colourised ``<stem>_preview.png`` with a legend; with ``polygons`` ``<stem>.gpkg`` (see
    :mod:`satunet.infer.gis`, :func:`satunet.data.vectorize.vectorize_classes`). ``bands``
    (1-based) selects the input bands; by default the checkpoint's (``info.bands``). In
    ``loveda-submission`` format it writes ``<id>.png`` with values 0..6. Files appear under
    their final names only when complete. Refuses an ``out_dir`` where an output would
    replace ``input``. ``in_flight`` batches are predicted ahead while the last ones are
    blended; ``profile`` records seconds per stage in ``SceneResult.profile`` (see
    :class:`satunet.infer.pipeline.StageTimes`).
    """
    info = predictor.info
    check_tiling(tile, overlap, batch_size, info.size_multiple)
    submission = output_format == "loveda-submission"
    check_scene_options(info, submission, probabilities, cog, preview, polygons is not None)
    paths = output_paths(input, out_dir, output_format)
    if polygons is not None and paths["mask"].suffix != ".tif":
        raise ConfigError(f"--vectorize needs GeoTIFF inputs; {input} gives a PNG mask")
    check_outputs([input], out_dir, output_format)
    start = time.perf_counter()
    selected = bands if bands is not None else info.bands
    with gdal_env(), open_scene(input, info.in_channels, selected) as reader:
        scene = reader.info
        check_scene(scene, info, submission)
        thumb = Preview(scene.height, scene.width) if preview else None
        classes = submission_classes(info) if submission else None
        sink = SceneSink({}, classes, probabilities, thumb, StageTimes() if profile else None)
        shape = _write_scene(
            reader,
            paths,
            predictor,
            sink,
            tile=tile,
            overlap=overlap,
            batch_size=batch_size,
            blend=blend,
            cog=cog,
            progress=progress,
            in_flight=in_flight,
        )
        outputs = sink.outputs
        if thumb is not None:
            outputs["preview"] = thumb.save(paths["preview"], info, sink.nodata_count > 0)
    if polygons is not None:
        outputs["polygons"] = polygons.write(outputs["mask"], paths["polygons"], info)
    area = scene.pixel_area_km2
    return SceneResult(
        input=Path(input),
        outputs=outputs,
        height=scene.height,
        width=scene.width,
        seconds=time.perf_counter() - start,
        buffer_shape=shape,
        area_km2=None if area is None else area * scene.height * scene.width,
        nodata_pixels=sink.nodata_count,
        profile=sink.times.summary() if sink.times is not None else None,
    )


def _write_scene(
    reader: SceneReader,
    paths: dict[str, Path],
    predictor: Predictor,
    sink: SceneSink,
    *,
    tile: int,
    overlap: int,
    batch_size: int,
    blend: BlendKind,
    cog: bool,
    progress: bool,
    in_flight: int = 2,
) -> tuple[int, int, int]:
    """Stream the scene through the engine into its writers; commit them, or abort on error."""
    info, scene = predictor.info, reader.info
    plan = plan_bands(scene.height, scene.width, tile, overlap, min_tiles_per_band=batch_size)
    log.debug(
        "%s: %dx%d px, %d bands of %d tile rows x %d tiles, accumulator %s",
        scene.path, scene.width, scene.height, len(plan.bands), plan.rows_per_band,
        len(plan.col_origins), plan.buffer_shape(info.num_classes),
    )  # fmt: skip
    writers = sink.writers
    try:
        writers["mask"] = RasterWriter(
            paths["mask"], scene, nodata=NODATA, cog=cog, style=class_style(info)
        )
        if sink.probabilities:
            writers["probabilities"] = RasterWriter(
                paths["probabilities"], scene, count=info.num_classes, nodata=NODATA, cog=cog,
                style=probability_style(info),
            )  # fmt: skip
        try:
            shape = run_bands(
                reader.read_rows, plan, predictor, sink, overlap=overlap,
                batch_size=batch_size, blend=blend, progress=progress, in_flight=in_flight,
                times=sink.times,
            )  # fmt: skip
        finally:
            sink.writer.close()
        sink.outputs = {name: w.commit() for name, w in writers.items()}
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    return shape
