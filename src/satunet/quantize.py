"""Static int8 ONNX models from a checkpoint, calibrated on real tiles and gated on accuracy.

:func:`quantize_checkpoint` exports the checkpoint to fp32 ONNX, calibrates activation ranges on
tiles of the named dataset (the checkpoint's own scale and normalisation), writes QDQ int8 models
with per-channel weights, and keeps one only if its mIoU on a labelled split is within
``max_drop`` points of fp32 (argmax agreement is reported beside it). The file appears under
its final name only after the gate passes (or with ``force``).

The scheme is chosen on the machine that quantizes: uint8 vs int8 activations (U8S8 / S8S8) by
timing both on one tile, ``reduce_range`` (7-bit weights) on x86 CPUs without VNNI, where the
u8 x s8 multiply-add can saturate. The choice, the timings, the calibration and the gate's
scores are stored in the model's ``metadata_props`` under ``satunet_quantization``.

:func:`export_deepness` writes a model for the QGIS Deepness plugin: fixed tile size, softmax out,
IR version <= 9 and the plugin's metadata keys.
"""

from __future__ import annotations

import json
import logging
import platform
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from satunet.checkpoint import ModelInfo, load_checkpoint
from satunet.config import DataConfig, config_from_dict
from satunet.data import create_dataset
from satunet.data.pixels import pad_to_multiple
from satunet.data.splits import dataset_kwargs, dataset_scale, split_by_group
from satunet.data.transforms import eval_transforms
from satunet.errors import ConfigError, SatunetError
from satunet.evaluate import carve_out_seed, trained_dataset
from satunet.files import PathLike, atomic_path, check_output_file, jsonable
from satunet.infer import OnnxPredictor, Predictor, export_onnx
from satunet.metrics import ConfusionMatrix

log = logging.getLogger(__name__)

METADATA_KEY = "satunet_quantization"
KEEP_FLOAT_CHOICES = ("first", "last")
# Measured on unet_fast trained on the LoveDA tiles (16 held-out 512 px tiles): no choice moved
# the mIoU by more than 0.01 point, but quantizing the first conv (3 normalised bands in) cost
# argmax agreement (99.57% all-int8 vs 99.83% with it in float) and keeping it in float cost no
# measurable speed (it is the smallest conv). The last conv (the head) made no difference.
DEFAULT_KEEP_FLOAT: tuple[str, ...] = ("first",)
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
SCHEMES = {"u8s8": ("QUInt8", "QInt8"), "s8s8": ("QInt8", "QInt8")}


class AccuracyGateError(SatunetError):
    """The int8 model lost more mIoU than allowed; ``report`` holds the scores."""

    def __init__(self, message: str, report: QuantizeReport):
        super().__init__(message)
        self.report = report


@dataclass
class QuantizeReport:
    """What :func:`quantize_checkpoint` measured and wrote (``output`` None if nothing)."""

    output: Path | None
    classes: list[str]
    fp32_miou: float
    int8_miou: float
    fp32_iou: list[float]
    int8_iou: list[float]
    agreement: float  # fraction of labelled pixels whose int8 argmax equals fp32's
    max_drop: float
    passed: bool
    forced: bool = False
    scheme: dict[str, Any] = field(default_factory=dict)
    calibration: str = ""
    evaluation: str = ""

    @property
    def drop(self) -> float:
        """fp32 mIoU minus int8 mIoU, in points (percent)."""
        return 100 * (self.fp32_miou - self.int8_miou)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self) | {"drop": self.drop}
        out["output"] = str(self.output) if self.output else None
        return jsonable(out)  # nan (a class absent from labels and predictions) -> None


# ----------------------------------------------------------------------------- CPU


def cpu_flags() -> set[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where it does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.partition(":")[2].split())
    return set()


def needs_reduce_range(flags: set[str] | None = None, machine: str | None = None) -> bool:
    """True on x86 CPUs without VNNI (AVX-512 VNNI, AVX-VNNI or AMX), where 8-bit products
    summed in pairs into int16 (vpmaddubsw) can saturate: weights then use 7 bits."""
    flags = cpu_flags() if flags is None else flags
    machine = (machine or platform.machine()).lower()
    x86 = machine in ("x86_64", "amd64", "i386", "i686")
    return x86 and not any(f in flags for f in VNNI_FLAGS)


# ----------------------------------------------------------------------------- data


def resolve_data(
    state: dict[str, Any],
    data: str | None,
    root: PathLike | None,
    scene: str | None,
    options: dict[str, Any] | None = None,
) -> tuple[DataConfig, DataConfig, int]:
    """(dataset to use, dataset trained on, seed): arguments win, else what the checkpoint
    records (``options`` are dataset arguments such as tile_size)."""
    cfg = config_from_dict(state["config"]) if state.get("config") else None
    d, trained, _ = trained_dataset(cfg, data, root, scene, options, "the checkpoint")
    return d, trained, carve_out_seed(cfg)


def tile_sets(
    state: dict[str, Any],
    d: DataConfig,
    seed: int,
    split: str,
    eval_split: str | None,
    val_fraction: float | None,
) -> tuple[Dataset, str, Dataset, str]:
    """(calibration tiles, description, labelled evaluation tiles, description).

    With a carve-out (``val_fraction`` > 0) the evaluation tiles are that fraction of the
    training split by source image, as in training; calibration then uses the other images.
    """
    eval_split = eval_split or d.val_split
    if val_fraction is None:
        val_fraction = d.val_fraction if eval_split == d.val_split else 0.0
    transforms = eval_transforms(state.get("normalization"))
    kwargs = dataset_kwargs(d)
    calib: Dataset = create_dataset(d.name, d.root, split=split, transforms=transforms, **kwargs)
    calib_desc = f"{d.name} {split}"
    if val_fraction > 0:
        base = create_dataset(d.name, d.root, split=d.train_split, transforms=transforms, **kwargs)
        keep, val_idx = split_by_group(base.groups, val_fraction, seed)
        evaluation: Dataset = Subset(base, val_idx)
        eval_desc = f"{eval_split} = {val_fraction:g} of {d.train_split} by image, seed {seed}"
        if split == d.train_split:
            calib = Subset(base, keep)
            calib_desc = f"{calib_desc} (without the {eval_split} images)"
    else:
        base = evaluation = create_dataset(
            d.name, d.root, split=eval_split, transforms=transforms, **kwargs
        )
        eval_desc = f"{d.name} {eval_split}"
    check_tiles(state, base, eval_split)
    return calib, calib_desc, evaluation, eval_desc


def check_tiles(state: dict[str, Any], base: Any, split: str) -> None:
    """Refuse unlabelled splits and datasets that do not match the checkpoint."""
    if not getattr(base, "labeled", True):
        raise ConfigError(
            f"the {split} split has no masks, so the accuracy gate cannot score it: give "
            "--eval-split with labels, or --val-fraction F to carve one out of the training split"
        )
    if base.num_classes != state["num_classes"]:
        raise ConfigError(
            f"the checkpoint predicts {state['num_classes']} classes but the dataset has "
            f"{base.num_classes} ({', '.join(base.classes)}): quantize on its training data"
        )
    scale, ours = dataset_scale(base), state.get("scale")
    if ours is not None and scale is not None and float(ours) != scale:
        raise ConfigError(
            f"the dataset scales pixels by {scale:g} but the checkpoint was trained with "
            f"{ours:g}: pass the dataset options it was trained with"
        )


def spread(n: int, samples: int) -> list[int]:
    """``samples`` indices spread evenly over range(n) (all of them if n <= samples)."""
    if n <= samples:
        return list(range(n))
    return sorted({int(i) for i in np.linspace(0, n - 1, samples)})


class TileReader:
    """ONNX Runtime calibration data: one tile per call, padded to the model's multiple."""

    def __init__(self, dataset: Dataset, indices: list[int], input_name: str, multiple: int):
        self.dataset, self.indices = dataset, indices
        self.input_name, self.multiple = input_name, multiple
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.indices):
            return None
        image = self.dataset[self.indices[self.position]]["image"].numpy()
        self.position += 1
        return {self.input_name: pad_to_multiple(image[None], self.multiple)}

    def rewind(self) -> None:
        self.position = 0

    def __len__(self) -> int:
        return len(self.indices)


# ----------------------------------------------------------------------------- gate


def score_pair(
    reference: Predictor, candidate: Predictor, dataset: Dataset, ignore_index: int | None
) -> tuple[ConfusionMatrix, ConfusionMatrix, float]:
    """Confusion matrices of both predictors on ``dataset`` and their argmax agreement on the
    pixels that are scored (labelled, not ``ignore_index``)."""
    k, multiple = reference.info.num_classes, reference.info.size_multiple
    matrices = (ConfusionMatrix(k, ignore_index), ConfusionMatrix(k, ignore_index))
    same = counted = 0
    for i in range(len(dataset)):
        sample = dataset[i]
        mask = sample["mask"][None]
        h, w = mask.shape[-2:]
        x = pad_to_multiple(sample["image"].numpy()[None], multiple)
        preds = [torch.from_numpy(p(x)[..., :h, :w]).argmax(1) for p in (reference, candidate)]
        for matrix, pred in zip(matrices, preds, strict=True):
            matrix.update(pred, mask)
        scored = torch.ones_like(mask, dtype=torch.bool)
        if ignore_index is not None:
            scored = mask != ignore_index
        same += int(((preds[0] == preds[1]) & scored).sum())
        counted += int(scored.sum())
    return matrices[0], matrices[1], same / max(counted, 1)


def time_models(
    paths: dict[str, Path], info: ModelInfo, shape: tuple[int, ...], rounds: int = 3
) -> dict[str, float]:
    """Median Mpx/s of each ONNX file on one random batch of ``shape``, rounds interleaved."""
    sessions = {name: OnnxPredictor(path, info=info) for name, path in paths.items()}
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for predictor in sessions.values():
        predictor(x)  # warm-up: kernel selection, allocations
    for _ in range(rounds):
        for name, predictor in sessions.items():
            start = time.perf_counter()
            predictor(x)
            times[name].append(time.perf_counter() - start)
    pixels = shape[0] * shape[-2] * shape[-1] / 1e6
    return {name: round(pixels / statistics.median(t), 3) for name, t in times.items()}


# ----------------------------------------------------------------------------- ONNX


def conv_nodes(path: Path, keep_float: Sequence[str]) -> list[str]:
    """Names of the first and/or last Conv of the graph (in the graph's topological order)."""
    import onnx

    unknown = set(keep_float) - set(KEEP_FLOAT_CHOICES)
    if unknown:
        raise ConfigError(f"keep_float takes {KEEP_FLOAT_CHOICES}, not {sorted(unknown)}")
    convs = [n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"]
    chosen = {"first": convs[:1], "last": convs[-1:]}
    return sorted({name for key in keep_float for name in chosen[key]})


def quantize_file(
    source: Path, target: Path, reader: TileReader, cache: Path, *, scheme: str,
    reduce_range: bool, exclude: list[str],
) -> None:  # fmt: skip
    """QDQ static quantization of ``source`` (ranges cached in ``cache``: calibrated once)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    activations, weights = SCHEMES[scheme]
    reader.rewind()
    quantize_static(
        str(source), str(target), reader, quant_format=QuantFormat.QDQ, per_channel=True,
        reduce_range=reduce_range, activation_type=getattr(QuantType, activations),
        weight_type=getattr(QuantType, weights), nodes_to_exclude=exclude,
        calibration_cache_path=str(cache),
    )  # fmt: skip
    # (MinMax keeps only per-tile ReduceMin/ReduceMax values, so memory stays small; ORT's
    # CalibMaxIntermediateOutputs would drop collected ranges instead of merging them.)


def write_metadata(source: Path, target: Path, entries: dict[str, Any], base: Path) -> None:
    """Copy ``source`` to ``target`` with ``base``'s metadata and ``entries`` (JSON) added."""
    import onnx

    graph = onnx.load(str(source))
    present = {p.key for p in graph.metadata_props}
    for prop in onnx.load(str(base), load_external_data=False).metadata_props:
        if prop.key not in present:
            graph.metadata_props.add(key=prop.key, value=prop.value)
    for key, value in entries.items():
        graph.metadata_props.add(key=key, value=json.dumps(value, default=str))
    onnx.save(graph, str(target))


def prepare_fp32(model: nn.Module, info: ModelInfo, work: Path) -> Path:
    """Export fp32 ONNX (torchscript exporter: 8x faster to export, same graph) and run ORT's
    pre-processing (constant folding, Conv+BN fusion) that quantization expects."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32 = export_onnx(model, work / "fp32.onnx", info, exporter="torchscript", opset=17)
    prepared = work / "fp32.pre.onnx"
    # Symbolic shape inference cannot follow the dynamic H/W through Resize: skip it.
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    return prepared


def choose_scheme(
    fp32: Path, work: Path, reader: TileReader, info: ModelInfo, activations: str,
    keep_float: Sequence[str],
) -> tuple[Path, dict[str, Any]]:  # fmt: skip
    """Quantize with each candidate scheme (one calibration, cached) and keep the fastest here.

    U8S8 wins ties within 5%: it is ONNX Runtime's recommendation for x86, and its int8 kernels
    on VNNI CPUs take uint8 activations natively (int8 ones need an extra shift).
    """
    if activations not in ("auto", *SCHEMES):
        raise ConfigError(f"activations must be auto, {' or '.join(SCHEMES)}; got {activations!r}")
    reduce_range = needs_reduce_range()
    exclude = conv_nodes(fp32, keep_float)
    names = list(SCHEMES) if activations == "auto" else [activations]
    paths = {name: work / f"{name}.onnx" for name in names}
    cache = work / "calibration.json"
    for name, path in paths.items():
        start = time.perf_counter()
        quantize_file(
            fp32, path, reader, cache, scheme=name, reduce_range=reduce_range, exclude=exclude
        )
        log.info("quantized %s in %.1f s", name, time.perf_counter() - start)
    speeds: dict[str, float] = {}
    if len(paths) > 1:
        reader.rewind()
        first = reader.get_next()
        shape = next(iter(first.values())).shape if first else (1, info.in_channels, 512, 512)
        speeds = time_models(paths, info, tuple(shape))
        log.info("measured Mpx/s: %s", speeds)
    best = names[0]
    if speeds and speeds["s8s8"] > 1.05 * speeds["u8s8"]:
        best = "s8s8"
    activation_type, weight_type = SCHEMES[best]
    flags = cpu_flags()
    return paths[best], {
        "scheme": best.upper(),
        "format": "QDQ",
        "activation_type": activation_type,
        "weight_type": weight_type,
        "per_channel": True,
        "reduce_range": reduce_range,
        "calibration_method": "MinMax",
        "float_nodes": exclude,
        "keep_float": list(keep_float),
        "chosen_by": "measured" if speeds else "given",
        "measured_mpx_s": speeds,
        "cpu": {
            "machine": platform.machine(),
            "vnni": [f for f in VNNI_FLAGS if f in flags],
            "bf16": [f for f in ("avx512_bf16", "amx_bf16") if f in flags],
        },
    }


def gate_message(report: QuantizeReport) -> str:
    """Why the gate refused the model, and what to try."""
    return (
        f"int8 mIoU {100 * report.int8_miou:.2f} is {report.drop:.2f} points below fp32 "
        f"{100 * report.fp32_miou:.2f} (allowed: {report.max_drop:g}); no model written. Try more "
        "calibration tiles (--samples), keeping the first/last conv in float (--keep-float "
        "first,last), or --force to write it anyway"
    )


def base_of(dataset: Dataset) -> Any:
    """The dataset under a Subset."""
    return dataset.dataset if isinstance(dataset, Subset) else dataset


def quantize_checkpoint(
    checkpoint: PathLike,
    *,
    out: PathLike,
    data: str | None = None,
    root: PathLike | None = None,
    split: str = "train",
    samples: int = 64,
    eval_split: str | None = None,
    max_drop: float = 1.0,
    force: bool = False,
    scene: str | None = None,
    val_fraction: float | None = None,
    activations: str = "auto",
    keep_float: Sequence[str] = DEFAULT_KEEP_FLOAT,
    options: dict[str, Any] | None = None,
) -> QuantizeReport:
    """Write a QDQ int8 ONNX model of ``checkpoint`` to ``out`` if it passes the accuracy gate.

    Calibrates on ``samples`` tiles of ``split``, scores fp32 and int8 ONNX on ``eval_split``
    (default: the validation split the checkpoint was trained with, a carve-out of ``split``
    when it was trained with ``val_fraction``), and raises :class:`AccuracyGateError` (nothing
    written) if the mIoU drops by more than ``max_drop`` points, unless ``force``.
    ``activations`` is "auto" (time u8s8 and s8s8 here, keep the faster), "u8s8" or "s8s8";
    ``keep_float`` names convs left in float: "first" and/or "last"; ``options`` are dataset
    arguments (e.g. ``{"tile_size": 512}``; default: as trained).
    """
    out = check_output_file(out, inputs=[checkpoint], what="int8 ONNX file")
    if samples < 1 or not max_drop >= 0:
        raise ConfigError(f"need samples >= 1 and max_drop >= 0, got {samples} and {max_drop}")
    model, state = load_checkpoint(checkpoint)
    info = ModelInfo.from_checkpoint(state, model)
    d, _, seed = resolve_data(state, data, root, scene, options)
    calib, calib_desc, evaluation, eval_desc = tile_sets(
        state, d, seed, split, eval_split, val_fraction
    )
    indices = spread(len(calib), samples)
    with tempfile.TemporaryDirectory(prefix="satunet-quantize-") as tmp:
        work = Path(tmp)
        fp32 = prepare_fp32(model, info, work)
        reader = TileReader(calib, indices, "x", info.size_multiple)
        int8, scheme = choose_scheme(fp32, work, reader, info, activations, keep_float)
        log.info("scoring fp32 and int8 on %s (%d tiles)", eval_desc, len(evaluation))
        reference = OnnxPredictor(work / "fp32.onnx")
        ignore = base_of(evaluation).ignore_index
        m32, m8, agreement = score_pair(
            reference, OnnxPredictor(int8, info=info), evaluation, ignore
        )
        report = QuantizeReport(
            output=None, classes=list(info.class_names()), fp32_miou=m32.miou(),
            int8_miou=m8.miou(), fp32_iou=m32.iou().tolist(), int8_iou=m8.iou().tolist(),
            agreement=agreement, max_drop=max_drop, passed=False, forced=force, scheme=scheme,
            calibration=f"{len(indices)} tiles of {calib_desc}",
            evaluation=f"{len(evaluation)} tiles of {eval_desc}",
        )  # fmt: skip
        report.passed = bool(report.drop <= max_drop)
        if not report.passed and not force:
            raise AccuracyGateError(gate_message(report), report)
        scores = report.as_dict()
        gate = {k: scores[k] for k in ("fp32_miou", "int8_miou", "agreement", "drop", "passed")}
        gate |= {"evaluation": report.evaluation, "max_drop": max_drop}
        record = scheme | {"calibration": report.calibration, "gate": gate}
        with atomic_path(out) as target:
            write_metadata(int8, target, {METADATA_KEY: record}, base=work / "fp32.onnx")
        report.output = out
    log.info("wrote %s (%s)", out, scheme["scheme"])
    return report
