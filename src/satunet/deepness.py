"""ONNX models for the QGIS Deepness plugin: fixed-size RGB tiles in, class probabilities out.

Deepness (https://github.com/PUTvision/qgis-plugin-deepness) cuts the map into ``tiles_size``
tiles overlapping by ``tiles_overlap`` percent, divides the RGB pixels by 255, standardises them
with ``standardization_mean``/``standardization_std`` and expects per-class probabilities.
Its bundled onnxruntime is old, so the file must have IR version <= 9: the torchscript
exporter at opset 17 gives IR 8 (the dynamo exporter gives IR 10). Every metadata value is
JSON, as the plugin ``json.loads`` each one.

Load it in QGIS: Plugins -> Deepness -> Model type "Segmentor" -> Model file: the .onnx; the
resolution, tile size, overlap and class names are read from the file ("Load default
parameters").
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from satunet.checkpoint import ModelInfo, load_checkpoint
from satunet.errors import CheckpointError, ConfigError
from satunet.files import PathLike, atomic_path, check_output_file

MAX_IR_VERSION = 9
OPSET = 17
DEFAULT_OVERLAP_PERCENT = 12  # ~64 px on 512 px tiles, satunet's default overlap
# Ground sampling distance of the datasets satunet knows (cm per pixel).
DATASET_RESOLUTION_CM = {"loveda": 30.0, "landcoverai": 25.0}


class Softmax(nn.Module):
    """``model`` followed by a softmax over classes: what Deepness' Segmentor expects."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)


def dataset_resolution_cm(name: str | None) -> float | None:
    """The ground resolution (cm/px) of a dataset satunet knows, else None."""
    return DATASET_RESOLUTION_CM.get(name or "")


def training_resolution_cm(info: ModelInfo, state: dict[str, object]) -> float | None:
    """The checkpoint's training resolution in cm/px: its ``ModelInfo.resolution`` (m/px),
    else the resolution of the dataset named in its run config, else None."""
    if info.resolution:
        return round(info.resolution * 100, 4)
    config = state.get("config")
    data = config.get("data") if isinstance(config, dict) else None
    return dataset_resolution_cm(data.get("name") if isinstance(data, dict) else None)


def export_checkpoint(
    checkpoint: PathLike,
    path: PathLike,
    *,
    tile: int = 512,
    resolution_cm: float | None = None,
    overlap_percent: int = DEFAULT_OVERLAP_PERCENT,
) -> tuple[Path, ModelInfo, float]:
    """:func:`export_deepness` of a checkpoint; ``resolution_cm`` defaults to its training
    resolution. Returns (the file, the model record, the resolution written)."""
    check_output_file(path, inputs=[checkpoint], what="--onnx file")
    model, state = load_checkpoint(checkpoint)
    info = ModelInfo.from_checkpoint(state, model)
    cm = resolution_cm if resolution_cm is not None else training_resolution_cm(info, state)
    written = export_deepness(model, info, path, tile=tile, resolution_cm=cm,
                              overlap_percent=overlap_percent)  # fmt: skip
    return written, info, float(cm)  # type: ignore[arg-type]  # checked by export_deepness


def deepness_metadata(
    info: ModelInfo, tile: int, resolution_cm: float, overlap_percent: int
) -> dict[str, object]:
    """The plugin's metadata keys (values before JSON encoding)."""
    norm = info.normalization or {"mean": [0.0] * 3, "std": [1.0] * 3}
    return {
        "model_type": "Segmentor",
        "class_names": {i: name for i, name in enumerate(info.class_names())},
        "resolution": float(resolution_cm),
        "tile_size": tile,
        "tiles_size": tile,  # the plugin's documented spelling; tile_size for newer readers
        "tiles_overlap": overlap_percent,
        "standardization_mean": [float(v) for v in norm["mean"]],
        "standardization_std": [float(v) for v in norm["std"]],
    }


def check_deepness(info: ModelInfo, tile: int, resolution_cm: float | None, overlap: int) -> None:
    """Refuse what the plugin cannot use, saying what to change."""
    if info.in_channels != 3:
        raise ConfigError(
            f"Deepness feeds RGB tiles, but {info.name} takes {info.in_channels} bands: export "
            "a 3-band model"
        )
    if info.scale not in (None, 255, 255.0):
        raise ConfigError(
            f"Deepness divides pixels by 255, but this model was trained with scale {info.scale}"
        )
    multiple = info.size_multiple
    if tile < multiple or tile % multiple:
        raise ConfigError(f"--tile {tile} must be a multiple of {multiple} (the model's)")
    if resolution_cm is None or not resolution_cm > 0:
        raise ConfigError(
            "give the ground resolution in cm per pixel (--resolution; the checkpoint stores "
            "none), e.g. 30 for LoveDA, 25 or 50 for LandCover.ai"
        )
    if not 0 <= overlap < 100:
        raise ConfigError(f"tiles overlap is a percentage in [0, 100), got {overlap}")


def export_deepness(
    model: nn.Module,
    info: ModelInfo,
    path: PathLike,
    *,
    tile: int = 512,
    resolution_cm: float | None = None,
    overlap_percent: int = DEFAULT_OVERLAP_PERCENT,
) -> Path:
    """Write ``model`` as a Deepness Segmentor: input ``(N, 3, tile, tile)`` float32, output
    softmax ``(N, K, tile, tile)``, IR <= 9, the plugin's metadata; written atomically.

    The input is what the plugin feeds: RGB / 255, standardised with the model's normalisation
    (mean 0, std 1 when it has none).
    """
    import onnx

    check_deepness(info, tile, resolution_cm, overlap_percent)
    path = check_output_file(path, what="Deepness ONNX file")
    wrapped = Softmax(model.float().eval()).eval()
    x = torch.rand(1, 3, tile, tile, generator=torch.Generator().manual_seed(0))
    with atomic_path(path) as tmp:
        traced = tmp.with_name(f"{tmp.name}.onnx")
        try:
            with warnings.catch_warnings():  # the legacy exporter's tracer warnings
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    wrapped, (x,), traced, input_names=["input"], output_names=["output"],
                    dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                    dynamo=False, opset_version=OPSET,
                )  # fmt: skip
            graph = onnx.load(str(traced))
        except Exception as e:  # noqa: BLE001 - exporter errors are many types
            raise CheckpointError(f"Deepness export of {info.name!r} failed: {e}") from e
        finally:
            traced.unlink(missing_ok=True)
        if graph.ir_version > MAX_IR_VERSION:
            graph.ir_version = MAX_IR_VERSION  # opset 17 needs only IR 8
        for key, value in deepness_metadata(info, tile, resolution_cm, overlap_percent).items():
            graph.metadata_props.add(key=key, value=json.dumps(value))
        onnx.save(graph, str(tmp))
    return path
