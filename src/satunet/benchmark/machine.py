"""This machine's facts (CPU, GPU, threads, torch) and its peak 3x3-convolution throughput."""

from __future__ import annotations

import os
import platform
import time

import torch
from torch import nn

from satunet.runtime import Precision, inference_context, resolve_device, synchronize, usable_cores


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


def measure_peak_conv_gflops(
    device: str | torch.device = "cpu", precision: Precision = "fp32", min_time_s: float = 0.2
) -> float:
    """This machine's best measured 3x3-convolution throughput in GFLOP/s (1 MAC = 2 FLOPs).

    Times a few compute-bound 3x3 convs (64 to 256 channels, both memory formats) under the
    given precision and returns the fastest: the ceiling a model's achieved GFLOP/s is compared
    to.
    """
    dev = resolve_device(device, precision)
    best = 0.0
    for channels, side, batch in ((64, 128, 4), (128, 64, 8), (256, 32, 16)):
        flops = 2 * batch * side * side * channels * channels * 9
        conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(dev).eval()
        x = torch.randn(batch, channels, side, side, device=dev)
        for fmt in (torch.contiguous_format, torch.channels_last):
            conv = conv.to(memory_format=fmt)
            xf = x.contiguous(memory_format=fmt)
            with inference_context(dev, precision):
                conv(xf)  # primitive creation, cuDNN/oneDNN algorithm choice
                calls, elapsed = 0, 0.0
                while elapsed < min_time_s or calls < 2:
                    synchronize(dev)
                    start = time.perf_counter()
                    conv(xf)
                    synchronize(dev)
                    took = time.perf_counter() - start
                    best = max(best, flops / took / 1e9)
                    calls, elapsed = calls + 1, elapsed + took
    return best
