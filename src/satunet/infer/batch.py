"""Many scenes: keep going past bad files, resume a batch, shard the scenes over torchrun ranks.

A scene that cannot be read or predicted (a corrupt or truncated file, a wrong band count, a
GDAL error) is logged, recorded in :attr:`BatchResult.failures` and skipped; the others are
still written. Option errors that would fail every scene (tile size, output format) are raised
before the first scene. Every output is written under a temporary name and renamed when
complete (:class:`satunet.data.geotiff.RasterWriter`), so ``resume`` can skip every scene whose
requested outputs all exist under their final names.

Under ``torchrun --nproc_per_node N -m satunet predict ...`` rank r of N takes scenes r, r + N,
r + 2N, ... of the sorted input list. Sharding needs no process group: ranks read ``RANK`` and
``WORLD_SIZE`` only, never talk to each other, and write disjoint files, so the outputs are
those of one process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from satunet.errors import ConfigError, SatunetError
from satunet.files import PathLike
from satunet.infer.engine import check_tiling
from satunet.infer.predictors import Predictor
from satunet.infer.scene import (
    OutputFormat,
    Polygons,
    SceneResult,
    check_scene_options,
    output_paths,
    predict_scene,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shard:
    """Which scenes this process predicts: every ``world``-th from ``rank``."""

    rank: int = 0
    world: int = 1

    @classmethod
    def from_env(cls) -> Shard:
        """torchrun's ``RANK`` and ``WORLD_SIZE`` (0 of 1 without torchrun)."""
        try:
            shard = cls(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))
        except ValueError as e:
            raise ConfigError(f"RANK and WORLD_SIZE must be integers: {e}") from e
        if not 0 <= shard.rank < shard.world:
            raise ConfigError(f"RANK={shard.rank} is not in 0..WORLD_SIZE-1 ({shard.world})")
        return shard

    def take(self, items: Sequence[Any]) -> list[Any]:
        return list(items[self.rank :: self.world])


@dataclass
class Failure:
    """A scene that was skipped, and why."""

    input: Path
    error: str


@dataclass
class BatchResult:
    """What a batch wrote, skipped as already complete, and failed on."""

    results: list[SceneResult] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    shard: Shard = field(default_factory=Shard)

    @property
    def ok(self) -> bool:
        return not self.failures


def requested_outputs(
    output_format: OutputFormat = "auto",
    probabilities: bool = False,
    preview: bool = False,
    polygons: Polygons | None = None,
) -> list[str]:
    """The output kinds (keys of :func:`output_paths`) a scene's prediction writes."""
    if output_format == "loveda-submission":
        return ["mask"]
    wanted = {"mask": True, "probabilities": probabilities, "preview": preview,
              "polygons": polygons is not None}  # fmt: skip
    return [name for name, on in wanted.items() if on]


def scene_complete(
    input: PathLike, out_dir: PathLike, kinds: Sequence[str], output_format: OutputFormat = "auto"
) -> bool:
    """Whether every output of ``kinds`` exists under its final name (renamed, so complete)."""
    paths = output_paths(input, out_dir, output_format)
    return all(paths[kind].is_file() for kind in kinds)


def scene_errors() -> tuple[type[BaseException], ...]:
    """The errors that skip one scene: satunet's own and GDAL's (rasterio's)."""
    import rasterio.errors

    return (SatunetError, rasterio.errors.RasterioError)


def predict_scenes(
    predictor: Predictor,
    inputs: Sequence[PathLike],
    out_dir: PathLike,
    *,
    resume: bool = False,
    keep_going: bool = True,
    shard: Shard | None = None,
    on_result: Callable[[SceneResult], None] | None = None,
    on_failure: Callable[[Failure], None] | None = None,
    **options: Any,
) -> BatchResult:
    """Predict ``inputs`` (this shard's share) with :func:`predict_scene` ``**options``.

    A failing scene is logged and recorded, and the batch goes on (with ``keep_going=False``
    its error is raised instead); ``resume`` skips scenes whose outputs are complete.
    ``on_result``/``on_failure`` are called after each scene (the CLI prints there).
    """
    shard = shard or Shard()
    check_tiling(options.get("tile", 512), options.get("overlap", 64),
                 options.get("batch_size", 1), predictor.info.size_multiple)  # fmt: skip
    output_format = options.get("output_format", "auto")
    check_scene_options(
        predictor.info, output_format == "loveda-submission", options.get("probabilities", False),
        options.get("cog", False), options.get("preview", False),
        options.get("polygons") is not None,
    )  # fmt: skip
    kinds = requested_outputs(output_format, options.get("probabilities", False),
                              options.get("preview", False), options.get("polygons"))  # fmt: skip
    errors = scene_errors() if keep_going else ()
    batch = BatchResult(shard=shard)
    for path in shard.take(list(inputs)):
        path = Path(path)
        if resume and scene_complete(path, out_dir, kinds, output_format):
            log.info("%s: outputs complete, skipped (--resume-batch)", path)
            batch.skipped.append(path)
            continue
        try:
            result = predict_scene(predictor, path, out_dir, **options)
        except errors as e:
            failure = Failure(path, str(e) or type(e).__name__)
            log.error("%s: skipped: %s", path, failure.error)
            batch.failures.append(failure)
            if on_failure is not None:
                on_failure(failure)
            continue
        batch.results.append(result)
        if on_result is not None:
            on_result(result)
    return batch
