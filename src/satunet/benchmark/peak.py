"""The real peak 3x3-convolution throughput of this machine, per precision, over every path.

A model's achieved GOP/s means little against a low ceiling, so :func:`measure_conv_peaks` times
compute-bound 3x3 convs (128-512 channels) on each path satunet can run them:

- torch (oneDNN): fp32 and bf16, channels_last and contiguous (:func:`machine.torch_conv_peaks`),
  and int8 through its quantized engines (x86, onednn, fbgemm);
- ONNX Runtime (MLAS): an fp32 stack of convs and its QDQ int8 copy (per-channel, U8S8, as
  ``satunet quantize`` writes them);
- OpenVINO CPU plugin: the fp32 stack with ``INFERENCE_PRECISION_HINT`` f32 and bf16, and the
  int8 stack.

and returns the best GOP/s of each precision with the path that gave it, next to the
theoretical vector-unit peak (:func:`machine.theoretical_peak_gops`) and the clock that the
measured peak implies, so a reader can tell a real peak from a low one. ONNX Runtime and
OpenVINO are optional extras, imported inside the functions that use them.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from satunet.benchmark.machine import (
    PeakPath,
    best_rate,
    conv_ops,
    theoretical_peak_gops,
    torch_conv_peaks,
    torch_int8_conv_peaks,
)
from satunet.errors import ConfigError, DeviceError
from satunet.infer.onnx import quiet_warnings
from satunet.runtime import usable_cores

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime", "openvino")
PEAK_PRECISIONS = ("fp32", "bf16", "int8")
# (channels, side, batch) of the ONNX conv stacks: the large-channel torch shapes.
STACK_SHAPES: tuple[tuple[int, int, int], ...] = ((128, 64, 8), (256, 64, 4), (512, 32, 4))
STACK_LAYERS = 4  # convs per stack: the per-call overhead is spread over several
_INSTALL = {
    "onnxruntime": "pip install 'satunet[onnx]'",
    "openvino": "pip install 'satunet[openvino]'",
}


@dataclass
class ConvPeaks:
    """Every measured path, the best per precision and the theoretical peak beside it."""

    paths: list[PeakPath]
    theory: dict[str, Any] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def best(self, precision: str) -> PeakPath | None:
        """The fastest path of ``precision`` (None where none was measured)."""
        found = [p for p in self.paths if p.precision == precision]
        return max(found, key=lambda p: p.gops) if found else None

    def merge(self, other: ConvPeaks) -> ConvPeaks:
        """The best of two measurements, path by path (one taken while the machine was busy
        then no longer lowers the peak)."""
        best = {p.path: p for p in self.paths}
        for p in other.paths:
            if p.path not in best or p.gops > best[p.path].gops:
                best[p.path] = p
        skipped = list(dict.fromkeys(self.skipped + other.skipped))
        return ConvPeaks(list(best.values()), self.theory or other.theory, skipped)

    def summary(self) -> dict[str, dict[str, Any]]:
        """precision -> {gops, path, theory_gops, fraction_of_theory, implied_ghz}."""
        out = {}
        order = {p: i for i, p in enumerate(PEAK_PRECISIONS)}
        measured = sorted({p.precision for p in self.paths}, key=lambda p: (order.get(p, 9), p))
        for precision in measured:
            best = self.best(precision)
            assert best is not None
            theory = self.theory.get("gops", {}).get(precision)
            row: dict[str, Any] = {"gops": best.gops, "path": best.path}
            if theory:
                ghz = self.theory["ghz"]
                row |= {"theory_gops": theory, "fraction_of_theory": best.gops / theory,
                        "implied_ghz": best.gops / theory * ghz}  # fmt: skip
            out[precision] = row
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"best": self.summary(), "theory": self.theory, "skipped": self.skipped,
                "paths": [p.as_dict() for p in self.paths]}  # fmt: skip


def import_backend(name: str) -> Any:
    """The ``onnxruntime`` or ``openvino`` module, or a clear error naming its extra."""
    try:
        if name == "onnxruntime":
            import onnxruntime

            return onnxruntime
        if name == "openvino":
            import openvino

            return openvino
    except ImportError as e:
        raise DeviceError(
            f"the {name} conv peak needs {name}, which is not installed: run `{_INSTALL[name]}`"
        ) from e
    raise ConfigError(f"unknown backend {name!r}: choose from {', '.join(BACKENDS)}")


def conv_stack_onnx(path: Path, channels: int, side: int, batch: int, layers: int) -> Path:
    """An fp32 ONNX file of ``layers`` 3x3 conv + ReLU (channels -> channels), static shape."""
    torch.manual_seed(0)
    blocks = [(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU()) for _ in range(layers)]
    stack = nn.Sequential(*(m for block in blocks for m in block)).eval()
    x = torch.randn(batch, channels, side, side)
    with quiet_warnings():  # the legacy (torchscript) exporter: fast, and enough for convs
        torch.onnx.export(stack, (x,), str(path), input_names=["x"], output_names=["y"],
                          dynamo=False, opset_version=17)  # fmt: skip
    return path


class _RandomReader:
    """Calibration data for quantize_static: a few random non-negative inputs (ReLU-like)."""

    def __init__(self, shape: tuple[int, ...], samples: int = 2):
        rng = np.random.default_rng(0)
        self.data = [np.abs(rng.standard_normal(shape, dtype=np.float32)) for _ in range(samples)]
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.data):
            return None
        self.position += 1
        return {"x": self.data[self.position - 1]}


def quantize_stack(source: Path, target: Path, shape: tuple[int, ...]) -> Path:
    """The QDQ int8 copy of ``source``: per-channel int8 weights, uint8 activations (U8S8)."""
    import_backend("onnxruntime")
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = target.with_suffix(".pre.onnx")
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    quantize_static(
        str(prepared), str(target), _RandomReader(shape), quant_format=QuantFormat.QDQ,
        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
    )  # fmt: skip
    return target


def ort_rate(path: Path, x: np.ndarray, ops: float, min_time_s: float, threads: int) -> float:
    """Best GOP/s of one ONNX file in ONNX Runtime on the CPU (all graph optimisations)."""
    ort = import_backend("onnxruntime")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return best_rate(lambda: session.run(None, {"x": x}), ops, min_time_s)


def ov_rate(
    path: Path, x: np.ndarray, ops: float, min_time_s: float, threads: int, hint: str
) -> float:
    """Best GOP/s of one ONNX file in OpenVINO's CPU plugin, one stream, ``hint`` precision."""
    ov = import_backend("openvino")
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY",
              "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": str(threads)}  # fmt: skip
    request = core.compile_model(core.read_model(str(path)), "CPU", config).create_infer_request()
    return best_rate(lambda: request.infer({0: x}), ops, min_time_s)


def ov_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin offers bf16 on this CPU."""
    ov = import_backend("openvino")
    return "BF16" in [str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def onnx_peaks(
    backends: Sequence[str], precisions: Sequence[str], shapes: Sequence[tuple[int, int, int]],
    layers: int, min_time_s: float, work: Path, threads: int,
) -> tuple[list[PeakPath], list[str]]:  # fmt: skip
    """(paths, skipped) of the ONNX Runtime / OpenVINO conv stacks."""
    found: list[PeakPath] = []
    skipped: list[str] = []
    ov_bf16 = "openvino" in backends and "bf16" in precisions and ov_has_bf16()
    if "openvino" in backends and "bf16" in precisions and not ov_bf16:
        skipped.append("openvino bf16: the CPU plugin offers no BF16 on this CPU")
    for channels, side, batch in shapes:
        shape = (batch, channels, side, side)
        name = f"{channels}ch {side}px x{batch} ({layers} convs)"
        fp32 = conv_stack_onnx(work / f"stack{channels}.onnx", channels, side, batch, layers)
        files = {"fp32": fp32} if "fp32" in precisions else {}
        if "int8" in precisions:
            files["int8"] = quantize_stack(fp32, work / f"stack{channels}.int8.onnx", shape)
        x = np.abs(np.random.default_rng(1).standard_normal(shape, dtype=np.float32))
        ops = conv_ops(channels, side, batch, layers)
        runs = []  # (precision, label, backend, file, OpenVINO hint)
        for precision, path in files.items():
            for backend in ("onnxruntime", "openvino"):
                if backend in backends:
                    runs.append((precision, f"{backend} {precision}", backend, path, "f32"))
        if ov_bf16:
            runs.append(("bf16", "openvino bf16 (hint)", "openvino", fp32, "bf16"))
        for precision, label, backend, path, hint in runs:
            if backend == "onnxruntime":
                gops = ort_rate(path, x, ops, min_time_s, threads)
            else:
                gops = ov_rate(path, x, ops, min_time_s, threads, hint)
            found.append(PeakPath(precision, f"{label} {name}", gops))
            log.debug("%s %s: %.1f GOP/s", label, name, gops)
    return found, skipped


def measure_conv_peaks(
    precisions: Sequence[str] = PEAK_PRECISIONS,
    backends: Sequence[str] = BACKENDS,
    *,
    min_time_s: float = 0.3,
    torch_shapes: Sequence[tuple[int, int, int]] | None = None,
    stack_shapes: Sequence[tuple[int, int, int]] = STACK_SHAPES,
    layers: int = STACK_LAYERS,
    threads: int | None = None,
    ghz: float | None = None,
) -> ConvPeaks:
    """The best measured 3x3-conv GOP/s of each precision on the CPU over every path of
    ``backends`` (torch: fp32, bf16, int8; ONNX Runtime: fp32, int8; OpenVINO: fp32, bf16, int8),
    with the theoretical peak at ``ghz`` (default: /proc/cpuinfo's clock) logged beside it.

    Tiny ``torch_shapes`` / ``stack_shapes`` and ``min_time_s`` make it a quick check.
    """
    unknown = set(precisions) - set(PEAK_PRECISIONS) or set(backends) - set(BACKENDS)
    if unknown:
        raise ConfigError(f"unknown precision or backend {sorted(unknown)}: choose from "
                          f"{', '.join(PEAK_PRECISIONS)} and {', '.join(BACKENDS)}")  # fmt: skip
    for backend in backends:
        if backend != "torch":
            import_backend(backend)  # a missing extra fails now, not after minutes of timing
    threads = threads or usable_cores()
    paths: list[PeakPath] = []
    if "torch" in backends:  # (torch runs on its own thread count: configure_cpu_threads)
        kwargs = {"shapes": torch_shapes} if torch_shapes else {}
        for precision in (p for p in precisions if p != "int8"):
            paths += torch_conv_peaks("cpu", precision, min_time_s, **kwargs)  # type: ignore[arg-type]
        if "int8" in precisions:
            paths += torch_int8_conv_peaks(min_time_s, **kwargs)  # type: ignore[arg-type]
    skipped: list[str] = []
    onnx_backends = [b for b in backends if b != "torch"]
    if onnx_backends:
        with tempfile.TemporaryDirectory(prefix="satunet-peak-") as tmp:
            found, skipped = onnx_peaks(onnx_backends, precisions, stack_shapes, layers,
                                        min_time_s, Path(tmp), threads)  # fmt: skip
            paths += found
    peaks = ConvPeaks(paths, theoretical_peak_gops(cores=threads, ghz=ghz), skipped)
    log.info("theoretical peak: %s", peaks.theory["basis"])
    for precision, row in peaks.summary().items():
        log.info("peak %s: %.0f GOP/s measured (%s); theory %.0f GOP/s, implied clock %.2f GHz",
                 precision, row["gops"], row["path"], row.get("theory_gops", 0),
                 row.get("implied_ghz", 0))  # fmt: skip
    return peaks
