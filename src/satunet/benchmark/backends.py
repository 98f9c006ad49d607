"""One model on every inference backend x precision, side by side: `satunet benchmark --backends`.

:func:`benchmark_backends` times the :mod:`satunet.infer` predictors of one model (inference
only) on one fixed batch: eager PyTorch (``TorchPredictor``, BatchNorm folded, channels_last, as
``satunet predict`` runs it) in fp32 / bf16 (CPU autocast) / fp16 (CUDA autocast), ONNX Runtime
on an exported fp32 file or on a QDQ int8 file, and OpenVINO on the same files (fp32 / bf16
float layers; int8 = the QDQ file). The int8 file is made by ``satunet quantize`` (layer 5) and
passed down as a path; this module never quantizes.

Every pair asked for is a row. A pair that cannot run here is a row too, ``status
"unsupported"`` with the reason (no bf16 on this CPU, OpenVINO not installed, no int8 file,
...), never silently left out. The timed rounds are interleaved (each round runs every variant
once), so a change in machine load hits all rows alike. Each row gives images/s and Mpx/s (of
the median round), the round-to-round spread, the speed-up against eager torch fp32 (always
measured: the reference) and the argmax agreement with it; with labelled tiles also the mIoU.
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from satunet.benchmark.machine import describe_machine
from satunet.benchmark.noise import DEFAULT_MAX_SPREAD, load_average, load_warning, relative_spread
from satunet.checkpoint import ModelInfo
from satunet.data import create_dataset, dataset_options
from satunet.data.transforms import eval_transforms
from satunet.errors import ConfigError, SatunetError
from satunet.files import PathLike, atomic_write_text
from satunet.infer import OnnxPredictor, Predictor, TorchPredictor, export_onnx, with_tta
from satunet.infer.openvino import INSTALL_HINT, OpenVinoPredictor, import_openvino
from satunet.metrics import ConfusionMatrix
from satunet.report import fmt, markdown_table
from satunet.runtime import resolve_device, usable_cores

log = logging.getLogger(__name__)

BACKEND_CHOICES: tuple[str, ...] = ("torch", "onnx", "openvino")
PRECISION_CHOICES: tuple[str, ...] = ("fp32", "bf16", "fp16", "int8")
REFERENCE = ("torch", "fp32")
ONNX_HINT = "pip install 'satunet[onnx]'"
ROW_KEYS: tuple[str, ...] = (
    "backend", "precision", "status", "why", "note", "images_s", "mpx_s", "spread",
    "speedup", "agreement", "miou", "gate", "round_s",
)  # fmt: skip
# The accuracy gate of `satunet quantize`, applied to every fast path: with labels, at most this
# many mIoU points below eager fp32; without labels, at least this argmax agreement with it.
MAX_DROP_POINTS = 1.0
MIN_AGREEMENT = 0.98
FILES = ("backends.md", "backends.json")

# Pairs no setup can run, and why (the others depend on the machine and what is installed).
NEVER = {
    ("torch", "int8"): "eager PyTorch has no int8 path here; int8 runs as the QDQ ONNX file "
    "(`satunet quantize`) on onnx or openvino",
    ("onnx", "bf16"): "ONNX Runtime runs the file's own graph (fp32, or the QDQ int8 file); "
    "use openvino for bf16",
    ("onnx", "fp16"): "satunet exports fp32 ONNX files; fp16 is a torch (CUDA) option",
    ("openvino", "fp16"): "OpenVINO here runs the CPU plugin: fp32, bf16 or the int8 file",
}


class Unsupported(Exception):
    """A backend x precision pair that cannot run here; ``str()`` says why."""


@dataclass
class Tiles:
    """The fixed batch every variant runs on, what it is, and its masks when labelled."""

    x: np.ndarray
    source: str
    masks: np.ndarray | None = None
    ignore_index: int | None = None


@dataclass
class BackendsReport:
    """Rows (one per backend x precision, unsupported ones included) and the run's settings."""

    rows: list[dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"settings": self.settings, "rows": self.rows}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    def to_markdown(self) -> str:
        return backends_markdown(self)

    def save(self, out_dir: PathLike) -> dict[str, Path]:
        """Write backends.md and backends.json into ``out_dir`` (atomically)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        texts = dict(zip(FILES, (self.to_markdown() + "\n", self.to_json() + "\n"), strict=True))
        for name, text in texts.items():
            atomic_write_text(out / name, text)
        return {name: out / name for name in FILES}


def parse_list(text: str | None, choices: Sequence[str], flag: str) -> list[str]:
    """A checked, de-duplicated comma list (``None`` -> every choice)."""
    if text is None:
        return list(choices)
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in choices]
    if not names or unknown:
        raise ConfigError(
            f"{flag} {text!r}: give a comma list of {', '.join(choices)}"
            + (f" (unknown: {', '.join(unknown)})" if unknown else "")
        )
    return list(dict.fromkeys(names))


def synthetic_tiles(info: ModelInfo, batch: int, size: int, seed: int = 0) -> Tiles:
    """Seeded standard-normal tiles (already 'normalised'): speed only, agreement indicative."""
    x = np.random.default_rng(seed).standard_normal(
        (batch, info.in_channels, size, size), dtype=np.float32
    )
    return Tiles(x, f"synthetic: {batch} seeded normal-noise tiles (agreement only indicative)")


def dataset_tiles(info: ModelInfo, dataset: Any, description: str, batch: int, size: int) -> Tiles:
    """The first ``batch`` tiles of ``dataset`` (eval transforms), cut to ``size`` x ``size``."""
    if len(dataset) < batch:
        raise ConfigError(f"{description} has {len(dataset)} tiles, fewer than the batch {batch}")
    samples = [dataset[i] for i in range(batch)]
    h, w = samples[0]["image"].shape[-2:]
    if min(h, w) < size:
        raise ConfigError(f"{description} tiles are {h}x{w}, smaller than --size {size}")
    x = np.stack([s["image"][:, :size, :size].numpy() for s in samples]).astype(np.float32)
    labelled = all(s.get("mask") is not None for s in samples)
    masks = np.stack([s["mask"][:size, :size].numpy() for s in samples]) if labelled else None
    if masks is not None and getattr(dataset, "num_classes", info.num_classes) != info.num_classes:
        raise ConfigError(
            f"the model predicts {info.num_classes} classes but {description} has "
            f"{dataset.num_classes}: give the dataset it was trained on"
        )
    ignore = getattr(dataset, "ignore_index", None)
    return Tiles(x, f"{description}: the first {batch} tiles", masks, ignore)


def open_dataset(
    info: ModelInfo, name: str, root: PathLike, split: str, scene: str | None = None,
    size: int | None = None,
) -> Any:  # fmt: skip
    """A registered dataset with the model's own normalisation (eval transforms), cut into
    ``size`` tiles where the dataset takes a ``tile_size``."""
    kwargs: dict[str, Any] = {"scene": scene} if scene else {}
    if size is not None and "tile_size" in dataset_options(name):
        kwargs["tile_size"] = size
    transforms = eval_transforms(info.normalization)
    return create_dataset(name, root, split=split, transforms=transforms, **kwargs)


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 runs natively here (CPU: AVX-512 BF16 / AMX, via oneDNN; CUDA: Ampere+)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass
class Sources:
    """What the predictors are built from: the model, its record, the files, the device."""

    model: nn.Module
    info: ModelInfo
    work: Path
    device: str
    int8: Path | None
    int8_why: str
    onnx: Path | None = None
    streams: int = 1

    def fp32_onnx(self) -> Path:
        """The fp32 ONNX file (exported once, torchscript exporter, opset 17)."""
        if self.onnx is None:
            try:
                self.onnx = export_onnx(self.model, self.work / "fp32.onnx", self.info,
                                        exporter="torchscript", opset=17)  # fmt: skip
            except ImportError as e:
                raise Unsupported(f"ONNX export needs onnx: {ONNX_HINT} ({e})") from e
        return self.onnx

    def int8_file(self) -> Path:
        if self.int8 is None:
            raise Unsupported(self.int8_why)
        return self.int8


def runtime_available(backend: str) -> None:
    """ImportError / DeviceError (naming what to install) when ``backend``'s runtime is missing."""
    if backend == "onnx":
        import onnxruntime  # noqa: F401
    elif backend == "openvino":
        import_openvino()


def build(backend: str, precision: str, src: Sources) -> tuple[Predictor, str]:
    """(predictor, note) for one pair, or :class:`Unsupported` saying why not."""
    if (backend, precision) in NEVER:
        raise Unsupported(NEVER[backend, precision])
    try:
        runtime_available(backend)  # a missing runtime is the first reason to give
        if backend == "torch":
            device = resolve_device(src.device, precision)
            if precision == "bf16" and not native_bf16(device):
                raise Unsupported(f"no native bf16 on this {device.type} (autocast would emulate)")
            p = TorchPredictor(src.model, info=src.info, device=src.device, precision=precision,
                               channels_last=True, fold_bn=True)  # fmt: skip
            return p, f"eager on {device}, BatchNorm folded, channels_last"
        if backend == "onnx":
            path = src.int8_file() if precision == "int8" else src.fp32_onnx()
            return OnnxPredictor(path, info=src.info, device=src.device), path.name
        if src.device not in ("auto", "cpu"):
            raise Unsupported(f"OpenVINO runs on the CPU here, not --device {src.device}")
        path = src.int8_file() if precision == "int8" else src.fp32_onnx()
        ov_precision = "fp32" if precision == "int8" else precision
        p = OpenVinoPredictor(path, info=src.info, precision=ov_precision, streams=src.streams)
        return p, f"{path.name}, {p.streams} stream(s)"
    except ImportError as e:
        hint = INSTALL_HINT if backend == "openvino" else ONNX_HINT
        raise Unsupported(f"{hint} ({e})") from e
    except SatunetError as e:
        raise Unsupported(str(e)) from e


def add_tta_variants(
    variants: dict[tuple[str, str], Predictor], notes: dict[tuple[str, str], str], tta: str
) -> list[tuple[str, str]]:
    """A test-time-augmented twin of every runnable pair; returns the new pairs."""
    if tta == "none":
        return []
    added = []
    for (backend, precision), predictor in list(variants.items()):
        pair = (backend, f"{precision}+{tta}")
        variants[pair] = with_tta(predictor, tta)
        notes[pair] = f"{notes[backend, precision]}, tta {tta} ({variants[pair].passes} passes)"
        added.append(pair)
    return added


def time_rounds(
    variants: dict[tuple[str, str], Predictor], x: np.ndarray, rounds: int, warmup: int
) -> tuple[dict[tuple[str, str], list[float]], dict[tuple[str, str], np.ndarray]]:
    """(seconds per round, class map) of every variant; rounds interleaved after warm-up.

    The first untimed call of each variant gives its class map (for agreement and mIoU) and
    counts as its first warm-up call.
    """
    classes = {key: p(x).argmax(1) for key, p in variants.items()}
    for _ in range(max(0, warmup - 1)):
        for p in variants.values():
            p(x)
    times: dict[tuple[str, str], list[float]] = {key: [] for key in variants}
    for _ in range(rounds):
        for key, p in variants.items():
            start = time.perf_counter()
            p(x)
            times[key].append(time.perf_counter() - start)
    return times, classes


def miou(classes: np.ndarray, tiles: Tiles, num_classes: int) -> float | None:
    """mIoU of a class map on the labelled tiles (None without masks)."""
    if tiles.masks is None:
        return None
    matrix = ConfusionMatrix(num_classes, tiles.ignore_index)
    matrix.update(torch.from_numpy(classes), torch.from_numpy(tiles.masks).long())
    return float(matrix.miou())


def measured_row(
    key: tuple[str, str], seconds: list[float], classes: dict, tiles: Tiles, num_classes: int
) -> dict[str, Any]:
    """A measured row (speed-up filled in later, against the reference)."""
    b, _, h, w = tiles.x.shape
    median = statistics.median(seconds)
    agreement = float((classes[key] == classes[REFERENCE]).mean())
    return {
        "backend": key[0], "precision": key[1], "status": "ok", "why": None,
        "images_s": b / median, "mpx_s": b * h * w / 1e6 / median,
        "spread": relative_spread([1 / s for s in seconds]), "agreement": agreement,
        "miou": miou(classes[key], tiles, num_classes), "round_s": seconds,
    }  # fmt: skip


def check_args(size: int, batch_size: int, rounds: int, warmup: int, multiple: int) -> None:
    if size < 1 or size % multiple:
        raise ConfigError(f"--size {size} must be a positive multiple of {multiple} for this model")
    if batch_size < 1 or rounds < 1 or warmup < 0:
        raise ConfigError(
            f"need batch >= 1, rounds >= 1, warmup >= 0 (got {batch_size}, {rounds}, {warmup})"
        )


def benchmark_backends(
    model: nn.Module, info: ModelInfo, backends: Sequence[str], precisions: Sequence[str], *,
    size: int = 512, batch_size: int = 4, rounds: int = 3, warmup: int = 1,
    device: str = "cpu", tiles: Tiles | None = None, int8: PathLike | None = None,
    int8_source: str | None = None, onnx: PathLike | None = None, streams: int | None = None,
    max_spread: float = DEFAULT_MAX_SPREAD, tta: str = "none",
) -> BackendsReport:  # fmt: skip
    """Time ``model`` on every backend x precision pair (see the module docstring).

    ``int8``: a QDQ int8 ONNX file of this model (``satunet quantize``), described by
    ``int8_source`` (how it was made / calibrated); without it int8 rows are unsupported.
    ``onnx``: its fp32 ONNX file (default: exported here). ``tiles``: the batch (default:
    seeded noise of ``batch_size`` x ``size``²). ``streams``: OpenVINO requests (default
    min(2, usable cores)). Eager torch fp32 is always measured: it is the reference.
    ``tta`` ("flip", "d4"): every runnable pair also gets a row with test-time augmentation
    (precision "fp32+d4", ...), so its cost and accuracy sit beside the plain row.
    """
    check_args(size, batch_size, rounds, warmup, info.size_multiple)
    tiles = tiles or synthetic_tiles(info, batch_size, size)
    pairs = [(b, p) for b in backends for p in precisions]
    if REFERENCE not in pairs:
        pairs.insert(0, REFERENCE)
    load_start = load_average()
    with tempfile.TemporaryDirectory(prefix="satunet-backends-") as work:
        src = Sources(model.eval(), info, Path(work), device, Path(int8) if int8 else None,
                      "needs an int8 file: `satunet quantize` (or --int8 FILE)",
                      Path(onnx) if onnx else None, streams or min(2, usable_cores()))  # fmt: skip
        variants: dict[tuple[str, str], Predictor] = {}
        notes: dict[tuple[str, str], str] = {}
        for pair in pairs:
            try:
                variants[pair], notes[pair] = build(*pair, src)
            except Unsupported as e:
                notes[pair] = str(e)
        if REFERENCE not in variants:
            raise ConfigError(f"eager torch fp32 (the reference) cannot run: {notes[REFERENCE]}")
        pairs += add_tta_variants(variants, notes, tta)
        times, classes = time_rounds(variants, tiles.x, rounds, warmup)
    rows = assemble_rows(pairs, variants, notes, times, classes, tiles, info.num_classes)
    settings = run_settings(info, tiles, rounds, warmup, device, src, int8_source)
    settings.update(noise_settings(rows, load_start, load_average(), rounds, max_spread))
    settings["asked"] = {"backends": list(backends), "precisions": list(precisions)}
    return BackendsReport(rows, settings)


def assemble_rows(
    pairs: list[tuple[str, str]], variants: dict, notes: dict, times: dict, classes: dict,
    tiles: Tiles, num_classes: int,
) -> list[dict[str, Any]]:  # fmt: skip
    """One row per pair in order: measured (with speed-up) or unsupported (with why)."""
    rows = []
    for pair in pairs:
        if pair in variants:
            row = measured_row(pair, times[pair], classes, tiles, num_classes)
            row["note"] = notes[pair]
        else:
            row = {"backend": pair[0], "precision": pair[1], "status": "unsupported",
                   "why": notes[pair], "note": None}  # fmt: skip
        rows.append({k: row.get(k) for k in ROW_KEYS})
    base = next(r for r in rows if (r["backend"], r["precision"]) == REFERENCE)
    for row in rows:
        if row["status"] == "ok":
            row["speedup"] = row["mpx_s"] / base["mpx_s"]
            row["gate"] = accuracy_gate(row, base)
    return rows


def accuracy_gate(row: dict[str, Any], base: dict[str, Any]) -> str:
    """ "passed" or "failed: why": mIoU drop against eager fp32 with labels, else agreement."""
    if row["miou"] is not None and base["miou"] is not None:
        drop = 100 * (base["miou"] - row["miou"])
        if drop > MAX_DROP_POINTS:
            return f"failed: mIoU {drop:.2f} points below fp32 (> {MAX_DROP_POINTS:g})"
        return "passed"
    if row["agreement"] < MIN_AGREEMENT:
        return (
            f"failed: argmax agreement {100 * row['agreement']:.2f}% (< {100 * MIN_AGREEMENT:g}%)"
        )
    return "passed"


def run_settings(
    info: ModelInfo, tiles: Tiles, rounds: int, warmup: int, device: str, src: Sources,
    int8_source: str | None,
) -> dict[str, Any]:  # fmt: skip
    b, _, h, w = tiles.x.shape
    return {
        "model": info.name, "batch": b, "size": h if h == w else f"{h}x{w}", "rounds": rounds,
        "warmup": warmup, "device": device, "input": tiles.source,
        "labelled": tiles.masks is not None, "openvino_streams": src.streams,
        "int8": str(src.int8) if src.int8 else None,
        "int8_source": int8_source if src.int8 else src.int8_why,
        "machine": describe_machine("cpu" if device == "auto" else device)["summary"],
    }  # fmt: skip


def noise_settings(
    rows: list[dict[str, Any]], load_start: list[float] | None, load_end: list[float] | None,
    rounds: int, max_spread: float,
) -> dict[str, Any]:  # fmt: skip
    """Load before/after and warnings (loaded machine, noisy rows, a single round)."""
    warnings = []
    loaded = load_warning(load_start, usable_cores())
    if loaded:
        warnings.append(loaded)
    if rounds < 2:
        warnings.append("1 timed round: no round-to-round spread, noise cannot be detected")
    gated = [f"{r['backend']} {r['precision']} ({r['gate']})" for r in rows
             if str(r.get("gate") or "").startswith("failed")]  # fmt: skip
    if gated:
        warnings.append("accuracy gate failed for " + ", ".join(gated))
    noisy = [f"{r['backend']} {r['precision']} ({100 * r['spread']:.0f} %)" for r in rows
             if r.get("spread") is not None and r["spread"] > max_spread]  # fmt: skip
    if noisy:
        warnings.append(
            f"noisy: round-to-round spread above {100 * max_spread:.0f} % for " + ", ".join(noisy)
        )
    return {"load_start": load_start, "load_end": load_end, "usable_cores": usable_cores(),
            "max_spread": max_spread, "warnings": warnings}  # fmt: skip


def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}%"


def backends_markdown(report: BackendsReport) -> str:
    """The table: one line per pair; unsupported pairs say so and why, in the last column."""
    s = report.settings
    labelled = s.get("labelled")
    headers = ["backend", "precision", "images/s", "Mpx/s", "spread", "vs torch fp32",
               "agreement"] + (["mIoU %"] if labelled else []) + ["gate", "notes"]  # fmt: skip
    lines = []
    for r in report.rows:
        ok = r["status"] == "ok"
        cells = [r["backend"], r["precision"], fmt(r["images_s"], 2), fmt(r["mpx_s"], 2),
                 percent(r["spread"]), f"{r['speedup']:.2f}x" if ok else "–",
                 percent(r["agreement"])]  # fmt: skip
        if labelled:
            cells.append(fmt(r["miou"] * 100 if r["miou"] is not None else None, 2))
        cells.append(r["gate"] or "–")
        note = r["note"] if ok else f"unsupported: {r['why']}"
        cells.append(str(note).replace("|", "/"))
        lines.append(cells)
    head = (
        f"{s.get('model')}: {s.get('batch')} x {s.get('size')}² per call, {s.get('rounds')} "
        f"interleaved rounds after {s.get('warmup')} warm-up, {s.get('device')}; "
        f"{s.get('machine')}; load average {s.get('load_start')} before, "
        f"{s.get('load_end')} after"
    )
    foot = [f"Input: {s.get('input')}.", f"int8: {s.get('int8_source')}."]
    foot.append("Speed-up and argmax agreement are against eager torch fp32 on the same batch.")
    warn = [f"**⚠ Warning:** {w}." for w in s.get("warnings") or []]
    table = markdown_table(headers, lines, "ll" + "r" * (len(headers) - 3) + "l")
    return "\n\n".join([head, table, " ".join(foot)] + warn)
