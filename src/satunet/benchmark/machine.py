"""This machine's facts (CPU, GPU, threads, torch), its measured peak 3x3-convolution throughput
in torch and its theoretical vector-unit peak."""

from __future__ import annotations

import logging
import os
import platform
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from satunet.runtime import Precision, resolve_device, synchronize, usable_cores

log = logging.getLogger(__name__)


def _cpu_model_and_cores() -> tuple[str, int | None]:
    """The CPU's model name and physical core count, from /proc/cpuinfo where there is one."""
    cpu = platform.processor() or platform.machine()
    physical: set[tuple[str, str]] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            phys = ""
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "model name":
                    cpu = value
                elif key == "physical id":
                    phys = value
                elif key == "core id":
                    physical.add((phys, value))
    except OSError:
        pass
    return cpu, len(physical) or None


def describe_machine(device: str | torch.device = "cpu", precision: str = "fp32") -> dict:
    """CPU model, cores/threads, GPU, torch version and precision: what a timing depends on."""
    cpu, cores = _cpu_model_and_cores()
    logical = os.cpu_count() or 1
    usable = usable_cores()
    dev = torch.device(device)
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else None
    threads = torch.get_num_threads()
    summary = f"{cpu} ({usable} usable CPUs, torch {threads} threads)"
    if gpu:
        summary = f"{gpu}, {summary}"
    return {
        "summary": summary,
        "cpu": cpu,
        "cpu_cores": cores,
        "cpu_threads": logical,
        "cpus_usable": usable,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": threads,
        "gpu": gpu,
        "cuda": torch.version.cuda if gpu else None,
        "device": str(dev),
        "precision": precision,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


# (channels, side, batch): 3x3 convs large enough to be compute-bound on a CPU or a GPU; the
# smaller ones are kept because a small cache or a small GPU can prefer them.
PEAK_SHAPES: tuple[tuple[int, int, int], ...] = ((128, 64, 8), (256, 64, 4), (512, 32, 4))
MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class PeakPath:
    """One measured way to run 3x3 convs: its precision, the path (backend, layout, shape) and
    its best throughput in GOP/s (1 multiply-accumulate = 2 operations)."""

    precision: str
    path: str
    gops: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"gops": round(self.gops, 1)}


def conv_ops(channels: int, side: int, batch: int, layers: int = 1) -> int:
    """Operations (2 per MAC) of ``layers`` same-padded 3x3 convs, channels -> channels."""
    return 2 * batch * side * side * channels * channels * 9 * layers


def best_rate(
    run: Callable[[], object], ops: float, min_time_s: float, min_calls: int = 3
) -> float:
    """The best ops/s of ``run`` (GOP/s) over calls until ``min_time_s`` has passed (after one
    warm-up call: primitive creation, algorithm choice)."""
    run()
    best, calls, elapsed = 0.0, 0, 0.0
    while elapsed < min_time_s or calls < min_calls:
        start = time.perf_counter()
        run()
        took = time.perf_counter() - start
        best, calls, elapsed = max(best, ops / took / 1e9), calls + 1, elapsed + took
    return best


def torch_conv_peaks(
    device: str | torch.device = "cpu",
    precision: Precision = "fp32",
    min_time_s: float = 0.2,
    shapes: Sequence[tuple[int, int, int]] = PEAK_SHAPES,
) -> list[PeakPath]:
    """Every torch path's best 3x3-conv GOP/s: each shape in ``shapes`` in both memory formats,
    weights and input in ``precision``'s own dtype (no autocast cast in the timed call)."""
    dev = resolve_device(device, precision)
    dtype = _DTYPES[precision]
    found = []
    for channels, side, batch in shapes:
        torch.manual_seed(0)
        conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(dev, dtype).eval()
        x = torch.randn(batch, channels, side, side, device=dev, dtype=dtype)
        for layout, fmt in MEMORY_FORMATS.items():
            conv = conv.to(memory_format=fmt)
            xf = x.contiguous(memory_format=fmt)

            def run(conv: nn.Module = conv, xf: torch.Tensor = xf) -> None:
                conv(xf)
                synchronize(dev)

            with torch.inference_mode():
                gops = best_rate(run, conv_ops(channels, side, batch), min_time_s)
            path = f"torch {dev.type} {layout} {channels}ch {side}px x{batch}"
            found.append(PeakPath(precision, path, gops))
    log.debug("torch %s conv peaks: %s", precision, [p.as_dict() for p in found])
    return found


def torch_int8_conv_peaks(
    min_time_s: float = 0.2,
    shapes: Sequence[tuple[int, int, int]] = PEAK_SHAPES,
    engines: Sequence[str] = ("x86", "onednn", "fbgemm"),
) -> list[PeakPath]:
    """Best int8 3x3-conv GOP/s of torch's quantized CPU engines (per-channel int8 weights,
    uint8 channels_last activations): oneDNN's and FBGEMM's int8 kernels, where torch has them."""
    import torch.ao.nn.quantized as nnq

    found = []
    previous = torch.backends.quantized.engine
    engines = [e for e in engines if e in torch.backends.quantized.supported_engines]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # quantized tensors are deprecated
            for engine in engines:
                torch.backends.quantized.engine = engine
                for channels, side, batch in shapes:
                    conv = nnq.Conv2d(channels, channels, 3, padding=1)
                    scales = torch.full((channels,), 1e-3)
                    weight = torch.quantize_per_channel(
                        torch.randn(channels, channels, 3, 3) * 0.05, scales,
                        torch.zeros(channels, dtype=torch.long), 0, torch.qint8,
                    )  # fmt: skip
                    conv.set_weight_bias(weight, torch.zeros(channels))
                    conv.scale, conv.zero_point = 0.05, 0
                    x = torch.quantize_per_tensor(torch.rand(batch, channels, side, side), 0.01,
                                                  0, torch.quint8)  # fmt: skip
                    x = x.contiguous(memory_format=torch.channels_last)
                    with torch.inference_mode():
                        ops = conv_ops(channels, side, batch)
                        gops = best_rate(lambda c=conv, x=x: c(x), ops, min_time_s)
                    name = f"torch int8 {engine} channels_last {channels}ch {side}px x{batch}"
                    found.append(PeakPath("int8", name, gops))
    finally:
        torch.backends.quantized.engine = previous
    return found


def measure_peak_conv_gflops(
    device: str | torch.device = "cpu",
    precision: Precision = "fp32",
    min_time_s: float = 0.2,
    shapes: Sequence[tuple[int, int, int]] = PEAK_SHAPES,
) -> float:
    """This machine's best measured torch 3x3-convolution throughput in GFLOP/s (1 MAC = 2 FLOPs).

    The best of :func:`torch_conv_peaks` (64-512 channels, both memory formats): the ceiling a
    model's achieved GFLOP/s is compared to. For the int8 and ONNX Runtime / OpenVINO paths see
    :func:`satunet.benchmark.peak.measure_conv_peaks`.
    """
    return max(p.gops for p in torch_conv_peaks(device, precision, min_time_s, shapes))


# ----------------------------------------------------------------------------- theory

# Per core and cycle: fp32 multiply-accumulates of the vector FMA units, by CPU family.
# Zen 2/3/4 (family 23, 25): 2 FMA pipes of 256 bits (Zen 4 runs AVX-512 as 2 x 256 bits);
# Zen 5 (family 26): 2 x 512 bits; Intel with AVX-512: 2 x 512 bits (Xeon Gold/Platinum;
# some parts have one); AVX2 + FMA: 2 x 256 bits.
_FP32_MACS_PER_CYCLE = {"amd-23": 16, "amd-25": 16, "amd-26": 32}


def theoretical_peak_gops(
    flags: set[str] | None = None, cores: int | None = None, ghz: float | None = None,
    vendor: str | None = None, family: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Vector-unit peak GOP/s per precision (fp32, bf16, int8) of ``cores`` cores at ``ghz``.

    bf16 dot products (AVX-512 BF16 vdpbf16ps) do 2 MACs per fp32 lane, int8 VNNI
    (vpdpbusd) 4; without VNNI int8 is counted at 2x (vpmaddubsw pairs, saturating). Values
    default to /proc/cpuinfo (its "cpu MHz" is the nominal clock under a hypervisor: boost can
    run faster). AMX tiles are not counted.
    """
    info = _cpuinfo()
    flags = info["flags"] if flags is None else flags
    cores = cores or usable_cores()
    ghz = ghz or info["mhz"] / 1000 or 0.0
    vendor, family = vendor or info["vendor"], family if family is not None else info["family"]
    key = f"amd-{family}" if "AMD" in vendor else ""
    if key in _FP32_MACS_PER_CYCLE:
        macs = _FP32_MACS_PER_CYCLE[key]
    else:
        macs = 32 if "avx512f" in flags else 16 if "fma" in flags else 8
    vnni = any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))
    scale = {"fp32": 1, "bf16": 2 if "avx512_bf16" in flags else 1, "int8": 4 if vnni else 2}
    per = {p: 2 * macs * s * cores * ghz for p, s in scale.items()}
    basis = (f"{cores} cores x {ghz:.2f} GHz x {macs} fp32 MACs/cycle/core (x2 bf16 "
             f"{'yes' if scale['bf16'] == 2 else 'no'}, int8 x{scale['int8']}"
             f"{' VNNI' if vnni else ''}), 2 ops per MAC")  # fmt: skip
    return {"gops": per, "basis": basis, "ghz": ghz, "cores": cores}


def _cpuinfo() -> dict[str, Any]:
    """vendor, family, MHz and flags of the first CPU in /proc/cpuinfo (empty if none)."""
    found: dict[str, Any] = {"vendor": "", "family": -1, "mhz": 0.0, "flags": set()}
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return found
    for line in text.split("\n\n")[0].splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "vendor_id":
            found["vendor"] = value
        elif key == "cpu family":
            found["family"] = int(value)
        elif key == "cpu MHz":
            found["mhz"] = float(value)
        elif key == "flags":
            found["flags"] = set(value.split())
    return found
