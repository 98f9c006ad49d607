"""Side-by-side speed and memory benchmark of segmentation models on this machine.

All models are measured in one process, in interleaved rounds after warm-up, on synthetic
tensors made once, so a drifting machine affects every model alike and data loading is out of
the measurement. The study's speed figures came from two different GPUs and its "memory
footprint" was a torchsummary artifact (seed spec sections 4, 8, 10); this is the measured
replacement.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from satunet.checkpoint import unwrap
from satunet.errors import ConfigError, DeviceError
from satunet.report import atomic_write_text
from satunet.speed import (
    Precision,
    autocast_context,
    check_device,
    compare_outputs,
    inference_context,
    maybe_compile,
    prepare_for_inference,
    synchronize,
    to_channels_last,
    to_input,
)

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

STUDY_MODELS: tuple[str, ...] = (
    "unet_base",
    "unet_short",
    "unet_skinny",
    "unet_less_conv",
    "unetplusplus_resnet34",
    "deeplabv3plus_resnet34",
)
# Training tiles per epoch in the study's protocol (seed spec section 7), all 512x512.
EPOCH_TILES: dict[str, int] = {"loveda": 1512, "landcoverai": 7470}
STUDY_TILE = 512

ROW_KEYS: tuple[str, ...] = (
    "name",
    "params",
    "gmacs",
    "study_footprint_mb",
    "peak_mem_mb",
    "train_img_s",
    "train_img_s_min",
    "train_img_s_max",
    "infer_img_s",
    "infer_img_s_min",
    "infer_img_s_max",
    "latency_ms_p50",
    "latency_ms_p95",
    "epoch_s_loveda",
    "epoch_s_landcoverai",
    "ratio_train",
    "ratio_train_min",
    "ratio_train_max",
    "ratio_infer",
    "ratio_infer_min",
    "ratio_infer_max",
)
COMPARE_KEYS: tuple[str, ...] = (
    "fp32_train_img_s",
    "fp32_infer_img_s",
    "train_speedup_vs_fp32",
    "infer_speedup_vs_fp32",
    "argmax_agreement",
    "rel_rms_error",
)


# --------------------------------------------------------------------------- the report


@dataclass
class BenchmarkReport:
    """What :func:`benchmark_models` measured: one row per model, plus machine and settings."""

    rows: list[dict[str, Any]]
    machine: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)

    def _columns(self) -> list[str]:
        keys = list(ROW_KEYS)
        extra = [k for k in ("compile_s", *COMPARE_KEYS) if any(k in r for r in self.rows)]
        return keys + extra + ["peak_mem_method", "device", "precision", "size", "batch_size"]

    def to_json(self) -> str:
        """A JSON list with one object per model (machine and settings inside each object)."""
        return json.dumps(self.records(), indent=2)

    def records(self) -> list[dict[str, Any]]:
        """The rows with the run's context added, so each one stands on its own."""
        context = {
            "machine": self.machine.get("summary", ""),
            **{k: self.settings.get(k) for k in _CONTEXT_KEYS},
        }
        return [{**row, **context} for row in self.rows]

    def to_csv(self) -> str:
        """The rows as CSV, one line per model, with the same keys as the JSON."""
        records = self.records()
        keys = list(dict.fromkeys(k for r in records for k in r))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        for record in records:
            writer.writerow({k: "" if record.get(k) is None else record.get(k) for k in keys})
        return buf.getvalue()

    def to_markdown(self) -> str:
        """A table shaped like the study's Tables 3/4, with footnotes saying what each column is."""
        s, m = self.settings, self.machine
        compare = any("train_speedup_vs_fp32" in r for r in self.rows)
        head = [
            "Model",
            "Params",
            f"GMACs@{s.get('size')}",
            "Study MB¹",
            "Peak MB²",
            "Train img/s (min–max)³",
            "× ref",
            "LoveDA s/epoch⁴",
            "LandCover.ai s/epoch⁴",
            "Infer img/s",
            "× ref",
            "Latency p50/p95 ms",
        ]
        if compare:
            head += ["Train × fp32", "Infer × fp32", "Argmax agree", "Rel. RMS err"]
        if any("compile_s" in r for r in self.rows):
            head.append("Compile s")
        lines = [
            f"**satunet benchmark** on {m.get('summary', '?')}: {s.get('variant', '')}, input "
            f"{s.get('size')}x{s.get('size')}, batch {s.get('batch_size')}, "
            f"{s.get('num_classes')} classes, median of {s.get('rounds')} interleaved rounds",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|",
        ]
        for r in self.rows:
            cells = [
                f"`{r['name']}`",
                f"{r['params']:,}",
                _fmt(r["gmacs"], 1),
                _fmt(r["study_footprint_mb"], 0),
                _fmt(r["peak_mem_mb"], 0),
                _range(r["train_img_s"], r["train_img_s_min"], r["train_img_s_max"]),
                _fmt(r["ratio_train"], 2),
                _fmt(r["epoch_s_loveda"], 0),
                _fmt(r["epoch_s_landcoverai"], 0),
                _fmt(r["infer_img_s"], 3 if (r["infer_img_s"] or 99) < 10 else 1),
                _fmt(r["ratio_infer"], 2),
                f"{_fmt(r['latency_ms_p50'], 0)} / {_fmt(r['latency_ms_p95'], 0)}",
            ]
            if compare:
                cells += [
                    _fmt(r.get("train_speedup_vs_fp32"), 2),
                    _fmt(r.get("infer_speedup_vs_fp32"), 2),
                    _fmt(100 * r["argmax_agreement"], 2) + " %"
                    if r.get("argmax_agreement") is not None
                    else "–",
                    f"{r['rel_rms_error']:.1e}" if r.get("rel_rms_error") is not None else "–",
                ]
            if any("compile_s" in q for q in self.rows):
                cells.append(_fmt(r.get("compile_s"), 1))
            lines.append("| " + " | ".join(cells) + " |")
        ref = s.get("reference")
        size = s.get("size")
        notes = [
            "",
            "¹ The study's 'memory footprint': torchsummary's per-image forward/backward pass "
            "size at 512x512, a proxy that is not memory (see `satunet models`).",
            f"² Measured peak memory of one training step at batch {s.get('batch_size')} "
            f"({_MEM_METHODS.get(s.get('peak_mem_method', ''), 'not measured')}).",
            "³ Forward + backward + Adam step on synthetic data; min–max over rounds."
            + (
                f" × ref: speed relative to `{ref}` (> 1 is faster), median of per-round ratios."
                if ref
                else ""
            ),
            "⁴ Training compute per epoch implied by the throughput (LoveDA 1512, LandCover.ai "
            "7470 tiles of 512x512); no data loading or validation, unlike the study's times"
            + (f"; extrapolated from {size}x{size} by pixel count." if size != STUDY_TILE else "."),
            f"Inference: img/s at batch {s.get('batch_size')}, latency at batch 1. "
            f"torch {m.get('torch')}, {m.get('threads', '?')} threads. "
            f"Timing overhead {_fmt(s.get('timing_overhead_pct'), 3)} % of measured time.",
        ]
        if size != STUDY_TILE:
            notes.insert(1, f"Input size reduced to {size}x{size} (the study used 512x512).")
        if compare:
            notes.append(
                "Train/Infer × fp32: speed-up against fp32 eager measured in the same run; argmax "
                "agreement and relative RMS error of the logits against fp32 eager on one batch."
            )
        return "\n".join(lines + notes) + "\n"

    def plot(self, path: PathLike) -> Path:
        """PNG chart: training and inference throughput against GMACs, one point per model."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = Path(path)
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), constrained_layout=True)
        for ax, key, title in (
            (axes[0], "train_img_s", "training (fwd + bwd + step)"),
            (axes[1], "infer_img_s", "inference"),
        ):
            points = [(r["gmacs"], r[key], r["name"]) for r in self.rows if r.get(key)]
            for gmacs, rate, name in points:
                ax.scatter(gmacs, rate, s=40)
                ax.annotate(name, (gmacs, rate), textcoords="offset points", xytext=(4, 4))
            ax.set_xlabel(f"GMACs per image at {self.settings.get('size')}px")
            ax.set_ylabel("images / s")
            ax.set_title(title)
            if points:
                ax.set_xscale("log")
                ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.3)
        fig.suptitle(
            f"{self.machine.get('summary', '')}: {self.settings.get('variant', '')}, "
            f"batch {self.settings.get('batch_size')}",
            fontsize=9,
        )
        tmp = path.with_name(f".{path.name}.tmp.png")
        fig.savefig(tmp, dpi=120)
        plt.close(fig)
        os.replace(tmp, path)
        return path

    def save(self, out_dir: PathLike) -> dict[str, Path]:
        """Write table.md, results.csv, results.json, machine.json and chart.png (atomically)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        files = {
            "table.md": self.to_markdown(),
            "results.csv": self.to_csv(),
            "results.json": self.to_json() + "\n",
            "machine.json": json.dumps(
                {"machine": self.machine, "settings": self.settings}, indent=2
            )
            + "\n",
        }
        written = {}
        for name, text in files.items():
            atomic_write_text(out / name, text)
            written[name] = out / name
        written["chart.png"] = self.plot(out / "chart.png")
        return written


_CONTEXT_KEYS = (
    "device",
    "precision",
    "channels_last",
    "compile",
    "fold_bn",
    "size",
    "batch_size",
    "num_classes",
    "in_channels",
    "rounds",
    "peak_mem_method",
)
_MEM_METHODS = {
    "cuda_max_allocated": "CUDA max_memory_allocated during the step, plus this model's "
    "parameters and Adam state",
    "child_peak_rss": "peak resident memory of a fresh child process running the step "
    "eagerly, above its RSS before the model was built: weights, gradients, Adam state, "
    "activations, workspaces",
}


def _fmt(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}"


def _range(mid: float | None, lo: float | None, hi: float | None) -> str:
    if mid is None:
        return "–"
    digits = 3 if mid < 10 else 1
    return f"{mid:.{digits}f} ({lo:.{digits}f}–{hi:.{digits}f})"


# --------------------------------------------------------------------------- the machine


def describe_machine(device: str | torch.device = "cpu", precision: str = "fp32") -> dict:
    """CPU model, cores/threads, GPU, torch version and precision: what a timing depends on."""
    cpu = platform.processor() or platform.machine()
    physical: set[tuple[str, str]] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            phys = core = ""
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "model name":
                    cpu = value
                elif key == "physical id":
                    phys = value
                elif key == "core id":
                    core = value
                    physical.add((phys, core))
    except OSError:
        pass
    logical = os.cpu_count() or 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else logical
    dev = torch.device(device)
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else None
    threads = torch.get_num_threads()
    summary = f"{cpu} ({usable} usable CPUs, torch {threads} threads)"
    if gpu:
        summary = f"{gpu}, {summary}"
    return {
        "summary": summary,
        "cpu": cpu,
        "cpu_cores": len(physical) or None,
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


# --------------------------------------------------------------------------- peak conv speed


def measure_peak_conv_gflops(
    device: str | torch.device = "cpu", precision: Precision = "fp32", min_time_s: float = 0.2
) -> float:
    """This machine's best measured 3x3-convolution throughput in GFLOP/s (1 MAC = 2 FLOPs).

    Times a few compute-bound 3x3 convs (64 to 256 channels, both memory formats) under the
    given precision and returns the fastest: the ceiling a model's achieved GFLOP/s is compared
    to.
    """
    dev = check_device(device, precision)
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


# --------------------------------------------------------------------------- one model variant


@dataclass
class _Variant:
    """One model under one set of speed options, with its optimiser and fixed synthetic data."""

    name: str
    baseline: bool
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: Any
    x: torch.Tensor
    y: torch.Tensor
    x1: torch.Tensor
    precision: Precision
    infer_model: nn.Module | None = None
    train_s: list[float] = field(default_factory=list)  # seconds per image, one per round
    infer_s: list[float] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)
    train_steps: int = 1
    infer_steps: int = 1
    latency_calls: int = 3
    first_train_s: float | None = None
    first_infer_s: float | None = None


def _train_step(v: _Variant, device: torch.device) -> None:
    with autocast_context(device, v.precision):
        logits = v.model(v.x)
    loss = F.cross_entropy(logits.float(), v.y)
    if v.scaler is not None:
        v.scaler.scale(loss).backward()
        v.scaler.step(v.optimizer)
        v.scaler.update()
    else:
        loss.backward()
        v.optimizer.step()
    v.optimizer.zero_grad(set_to_none=True)


def _time_train(v: _Variant, device: torch.device, steps: int) -> float:
    v.model.train()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        _train_step(v, device)
    synchronize(device)
    return time.perf_counter() - start


def _first_train_step(v: _Variant, device: torch.device) -> float:
    """The first (untimed) training step, turning BatchNorm's batch-of-one error into advice."""
    try:
        return _time_train(v, device, 1)
    except ValueError as e:
        if "more than 1 value per channel" not in str(e):
            raise
        raise ConfigError(
            f"{v.name} cannot train on batch {len(v.x)} at {v.x.shape[-1]}x{v.x.shape[-1]}: a "
            "BatchNorm layer would see one value per channel (a 1x1 bottleneck or a global "
            "pooling branch); use --batch-size 2 or more, or a larger --size"
        ) from e


def _time_infer(v: _Variant, device: torch.device, steps: int, x: torch.Tensor) -> float:
    assert v.infer_model is not None
    v.infer_model.eval()
    with inference_context(device, v.precision):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            v.infer_model(x)
        synchronize(device)
        return time.perf_counter() - start


def _harness_overhead_s(device: torch.device, calls: int = 2000) -> float:
    """Seconds per timed call that the timing loop itself costs (timer, loop, sync)."""

    def noop() -> None:
        return None

    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        noop()
    synchronize(device)
    return (time.perf_counter() - start) / calls


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


# --------------------------------------------------------------------------- peak memory


def _peak_memory_cuda(v: _Variant, device: torch.device) -> float:
    """Peak bytes of one training step: the step's own high-water mark plus persistent state."""
    v.model.train()
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    _train_step(v, device)
    synchronize(device)
    step_peak = torch.cuda.max_memory_allocated(device) - before
    persistent = sum(p.numel() * p.element_size() for p in v.model.parameters())
    for state in v.optimizer.state.values():
        persistent += sum(
            t.numel() * t.element_size() for t in state.values() if torch.is_tensor(t)
        )
    persistent += v.x.numel() * v.x.element_size() + v.y.numel() * v.y.element_size()
    return (step_peak + persistent) / 2**20


def _peak_memory_child(spec: dict[str, Any], model: nn.Module | None) -> float | None:
    """Peak RSS (MiB) of a fresh process that builds the model and runs one training step.

    A fresh process is used because in this one, freed memory is cached by the allocator and
    other models are resident, which would hide or inflate the step's real footprint.
    """
    with tempfile.TemporaryDirectory(prefix="satunet-mem-") as tmp:
        if spec.get("registry") is None:
            path = Path(tmp) / "model.pt"
            try:
                torch.save(unwrap(model), path)
            except Exception as e:  # pickling a user's module can fail in many ways
                log.warning(
                    "peak memory of %s not measured: the model cannot be pickled into a child "
                    "process (%s: %s); register it or define its class at module level",
                    spec["name"],
                    type(e).__name__,
                    e,
                )
                return None
            spec = {**spec, "pickle": str(path)}
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec), encoding="utf-8")
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        proc = subprocess.run(
            [sys.executable, "-m", "satunet.benchmark", str(spec_path)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        log.warning("peak memory of %s not measured: child process failed: %s", spec["name"], tail)
        return None
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["peak_mb"])


def _rss_kb(field_name: str) -> int:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise OSError(f"{field_name} not in /proc/self/status")


def _memory_child_main(spec_path: str) -> None:
    """Child side of :func:`_peak_memory_child`: build, one training step, report peak RSS."""
    import resource

    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    torch.set_num_threads(spec["threads"])
    device = torch.device("cpu")
    # Start thread pools, oneDNN and autograd on a tiny net first: their one-off memory is the
    # process's, not the model's, and must be in the baseline.
    tiny = nn.Sequential(nn.Conv2d(spec["in_channels"], 4, 3, padding=1), nn.BatchNorm2d(4))
    warm = _make_variant(
        "warm-up",
        tiny,
        {**spec, "size": 8, "num_classes": 4},
        device,
        baseline=False,
        compile=False,
    )
    _train_step(warm, device)
    del warm, tiny
    try:  # "5" resets the peak-RSS high-water mark (Linux >= 4.0), dropping import transients
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
            f.write("5")
        before_kb, proc_fs = _rss_kb("VmRSS"), True
    except OSError:
        before_kb, proc_fs = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, False
    if spec.get("registry"):
        from satunet.models import create_model

        model = create_model(
            spec["registry"], in_channels=spec["in_channels"], num_classes=spec["num_classes"]
        )
    else:
        model = torch.load(spec["pickle"], weights_only=False)
    v = _make_variant(spec["name"], model, spec, device, baseline=False, compile=False)
    # Adam's state exists in every step after the first: create it with a zero-gradient step.
    for p in v.model.parameters():
        p.grad = torch.zeros_like(p)
    v.optimizer.step()
    v.optimizer.zero_grad(set_to_none=True)
    _train_step(v, device)
    if proc_fs:
        peak_kb = _rss_kb("VmHWM") - before_kb
    else:  # ru_maxrss is KiB on Linux, bytes on macOS
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak_kb = (peak // 1024 if sys.platform == "darwin" else peak) - before_kb
    sys.stdout.write(json.dumps({"peak_mb": peak_kb / 1024}) + "\n")


# --------------------------------------------------------------------------- the benchmark


def _make_variant(
    name: str,
    model: nn.Module,
    spec: Mapping[str, Any],
    device: torch.device,
    *,
    baseline: bool,
    compile: bool,
) -> _Variant:
    precision = "fp32" if baseline else spec["precision"]
    cl = spec["channels_last"] and not baseline
    model = model.to(device).train()
    if cl:
        model = to_channels_last(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-3)  # the study's
    train_model = maybe_compile(model, compile and not baseline)
    gen = torch.Generator().manual_seed(0)
    b, c, s, k = spec["batch_size"], spec["in_channels"], spec["size"], spec["num_classes"]
    x = torch.rand(b, c, s, s, generator=gen)
    y = torch.randint(0, k, (b, s, s), generator=gen)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    return _Variant(
        name=name,
        baseline=baseline,
        model=train_model,
        optimizer=optimizer,
        scaler=scaler,
        x=to_input(x, device, cl),
        y=y.to(device),
        x1=to_input(x[:1].clone(), device, cl),
        precision=precision,
    )


def _build(
    name: str, factory: Callable[[], nn.Module] | None, in_channels: int, num_classes: int
) -> nn.Module:
    if factory is not None:
        return factory()
    from satunet.models import create_model

    return create_model(name, in_channels=in_channels, num_classes=num_classes)


def _facts(model: nn.Module, size: int, in_channels: int) -> dict[str, Any]:
    from satunet.profile import count_gmacs, count_params, study_footprint_mb

    # A meta-device copy: shapes and op counts without spending real compute at full size.
    meta = copy.deepcopy(unwrap(model)).to("meta")
    return {
        "params": count_params(meta),
        "gmacs": round(count_gmacs(meta, size, in_channels), 3),
        # Always at the study's 512x512: its int32 artefacts make other sizes meaningless.
        "study_footprint_mb": study_footprint_mb(meta, STUDY_TILE, in_channels),
    }


def benchmark_models(
    models: Mapping[str, Callable[[], nn.Module]] | Sequence[str] = STUDY_MODELS,
    *,
    size: int = 512,
    batch_size: int = 8,
    device: str = "cpu",
    precision: Precision = "fp32",
    channels_last: bool = False,
    compile: bool = False,
    fold_bn: bool = False,
    num_classes: int = 5,
    in_channels: int = 3,
    rounds: int = 3,
    warmup: int = 1,
    reference: str | None = "deeplabv3plus_resnet34",
    measure_train: bool = True,
    measure_infer: bool = True,
    measure_memory: bool = True,
    progress: bool = True,
    min_time_s: float = 0.5,
) -> BenchmarkReport:
    """Measure models side by side on this machine; see the module docstring for the method.

    Args:
        models: registry names, or a mapping of row name to a zero-argument model factory.
        reference: the model speeds are divided by (a row name or a registry name; measured too
            if not among ``models``). None: no ratios.
        min_time_s: each model's timed work per round is at least this long (steps are repeated
            after warm-up calibration), so short steps are not dominated by timer noise.

    When any speed option is on or precision is not fp32, every model is also measured as fp32
    eager in the same interleaved rounds, and its rows get the speed-ups and the output
    agreement against that baseline.
    """
    from tqdm.auto import tqdm

    if rounds < 1 or warmup < 0:
        raise ConfigError(f"rounds must be >= 1 and warmup >= 0, got {rounds} and {warmup}")
    if compile and warmup < 1:
        raise ConfigError("--compile needs --warmup >= 1 so compilation is not timed")
    if batch_size < 1 or size < 1 or num_classes < 1 or in_channels < 1:
        raise ConfigError("size, batch_size, num_classes and in_channels must all be >= 1")
    if not (measure_train or measure_infer or measure_memory):
        raise ConfigError("nothing to measure: enable training, inference or memory")
    dev = check_device(device, precision)
    wall_start = time.perf_counter()

    factories: dict[str, Callable[[], nn.Module] | None]
    if isinstance(models, Mapping):
        factories = dict(models)
    else:
        if isinstance(models, str):
            raise ConfigError(f"models must be a list of names, not the string {models!r}")
        factories = dict.fromkeys(models)
    if not factories:
        raise ConfigError("no models to benchmark")
    if reference is not None and reference not in factories:
        from satunet.models import MODELS

        if reference not in MODELS:
            from satunet.errors import UnknownNameError

            raise UnknownNameError("reference model", reference, [*factories, *MODELS])
        log.info("measuring the reference %s too", reference)
        factories[reference] = None

    compare = precision != "fp32" or channels_last or compile or fold_bn
    spec = {
        "precision": precision,
        "channels_last": channels_last,
        "size": size,
        "batch_size": batch_size,
        "in_channels": in_channels,
        "num_classes": num_classes,
        "threads": torch.get_num_threads(),
    }
    variants: list[_Variant] = []
    facts: dict[str, dict[str, Any]] = {}
    built: dict[str, nn.Module] = {}
    for name, factory in factories.items():
        torch.manual_seed(0)
        model = _build(name, factory, in_channels, num_classes)
        if factory is None or hasattr(model, "size_multiple"):
            multiple = getattr(model, "size_multiple", 1)
            if size % multiple:
                raise ConfigError(
                    f"{name} needs an input size divisible by {multiple}; --size {size} is not "
                    f"(try {max(multiple, size // multiple * multiple)})"
                )
        facts[name] = _facts(model, size, in_channels)
        built[name] = model
        if compare:
            base = copy.deepcopy(model)
            variants.append(_make_variant(name, base, spec, dev, baseline=True, compile=False))
        variants.append(_make_variant(name, model, spec, dev, baseline=False, compile=compile))

    phases = (measure_train + measure_infer) * (warmup + rounds) * len(variants)
    bar = tqdm(
        total=phases + measure_memory * len(factories),
        desc="benchmark",
        unit="step",
        disable=None if progress else True,
        leave=False,
    )

    def tick(what: str, v: _Variant) -> None:
        bar.set_description(f"{what} {v.name}{' (fp32 baseline)' if v.baseline else ''}")
        bar.update(1)

    overhead_calls = 0
    log.info(
        "benchmark: %d model(s) at %dx%d, batch %d, %s on %s; %d warm-up + %d timed rounds",
        len(factories),
        size,
        size,
        batch_size,
        precision,
        dev,
        warmup,
        rounds,
    )
    # Warm-up: the first call builds oneDNN/cuDNN primitives (and compiles); the second one
    # calibrates how many steps fill min_time_s.
    for w in range(warmup):
        for v in variants:
            if measure_train:
                if w == 0:
                    v.first_train_s = _first_train_step(v, dev)
                    step = _time_train(v, dev, 1)
                    v.train_steps = max(1, min(100, math.ceil(min_time_s / step)))
                else:
                    _time_train(v, dev, v.train_steps)
                tick("warm-up train", v)
    results_compare: dict[str, dict[str, float]] = {}
    if measure_infer:
        for v in variants:
            # After training warm-up, so BN statistics and weights are no longer at their init.
            if v.baseline:
                v.infer_model = v.model
            else:
                v.infer_model = (
                    prepare_for_inference(
                        unwrap(v.model),
                        device=dev,
                        precision=v.precision,
                        channels_last=channels_last,
                        fold_bn=fold_bn,
                        compile=compile,
                    )
                    if fold_bn
                    else v.model
                )
                if compare:
                    results_compare[v.name] = _agreement(v, dev)
        for w in range(warmup):
            for v in variants:
                if w == 0:
                    v.first_infer_s = _time_infer(v, dev, 1, v.x)
                    step = _time_infer(v, dev, 1, v.x)
                    v.infer_steps = max(1, min(100, math.ceil(min_time_s / step)))
                    _time_infer(v, dev, 1, v.x1)
                    one = _time_infer(v, dev, 1, v.x1)
                    v.latency_calls = max(3, min(100, math.ceil(min_time_s / one)))
                else:
                    _time_infer(v, dev, v.infer_steps, v.x)
                tick("warm-up infer", v)
    elif compare:
        for v in variants:
            if not v.baseline:
                results_compare[v.name] = _agreement(v, dev)

    memory: dict[str, float | None] = {}
    mem_method = None
    if measure_memory:
        mem_method = "cuda_max_allocated" if dev.type == "cuda" else "child_peak_rss"
        log.info("benchmark: peak memory of one training step per model")
        for v in variants:
            if v.baseline:
                continue
            bar.set_description(f"peak memory {v.name}")
            if dev.type == "cuda":
                memory[v.name] = _peak_memory_cuda(v, dev)
            else:
                child_spec = {
                    **spec,
                    "name": v.name,
                    "registry": v.name if factories[v.name] is None else None,
                }
                memory[v.name] = _peak_memory_child(child_spec, built[v.name])
            bar.update(1)

    timed_s = 0.0
    for r in range(rounds):
        log.info("benchmark: timed round %d/%d", r + 1, rounds)
        for v in variants:
            if measure_train:
                took = _time_train(v, dev, v.train_steps)
                v.train_s.append(took / (v.train_steps * batch_size))
                timed_s += took
                overhead_calls += 1
                tick("train", v)
            if measure_infer:
                took = _time_infer(v, dev, v.infer_steps, v.x)
                v.infer_s.append(took / (v.infer_steps * batch_size))
                timed_s += took
                for _ in range(v.latency_calls):
                    took = _time_infer(v, dev, 1, v.x1)
                    v.latency_s.append(took)
                    timed_s += took
                overhead_calls += 1 + v.latency_calls
                tick("infer", v)
    bar.close()
    overhead_pct = 100 * overhead_calls * _harness_overhead_s(dev) / timed_s if timed_s else None

    rows = _rows(
        variants,
        facts,
        memory,
        results_compare,
        reference,
        size=size,
        compile=compile,
        measure_memory=measure_memory,
    )
    options = [precision] + [
        label
        for on, label in (
            (channels_last, "channels_last"),
            (compile, "torch.compile"),
            (fold_bn, "BN folded"),
        )
        if on
    ]
    settings = {
        **{k: v for k, v in spec.items() if k != "threads"},
        "device": str(dev),
        "compile": compile,
        "fold_bn": fold_bn,
        "rounds": rounds,
        "warmup": warmup,
        "reference": reference,
        "variant": " + ".join(options),
        "peak_mem_method": mem_method,
        "timing_overhead_pct": overhead_pct,
        "timed_s": timed_s,
        "wall_s": time.perf_counter() - wall_start,
        "loss": "cross-entropy, Adam(lr=1e-3, weight_decay=1e-3)",
    }
    return BenchmarkReport(rows=rows, machine=describe_machine(dev, precision), settings=settings)


def _agreement(v: _Variant, device: torch.device) -> dict[str, float]:
    """Logits of the configured inference path against fp32 eager on the same weights and input."""
    reference = copy.deepcopy(unwrap(v.model)).to(memory_format=torch.contiguous_format).eval()
    x = v.x[: min(2, len(v.x))].contiguous()
    with torch.inference_mode():
        expected = reference(x)
    model = v.infer_model if v.infer_model is not None else v.model
    model.eval()
    with inference_context(device, v.precision):
        cl = v.x.dim() == 4 and v.x.is_contiguous(memory_format=torch.channels_last)
        got = model(x.contiguous(memory_format=torch.channels_last) if cl else x)
    return compare_outputs(got, expected)


def _rates(seconds_per_image: list[float]) -> list[float]:
    return [1.0 / s for s in seconds_per_image]


def _rows(
    variants: list[_Variant],
    facts: dict[str, dict[str, Any]],
    memory: dict[str, float | None],
    agreement: dict[str, dict[str, float]],
    reference: str | None,
    *,
    size: int,
    compile: bool,
    measure_memory: bool,
) -> list[dict[str, Any]]:
    configured = {v.name: v for v in variants if not v.baseline}
    baselines = {v.name: v for v in variants if v.baseline}
    ref = configured.get(reference) if reference else None
    scale = (STUDY_TILE / size) ** 2
    rows = []
    for name, v in configured.items():
        train, infer = _rates(v.train_s), _rates(v.infer_s)
        row: dict[str, Any] = {"name": name, **facts[name]}
        row["peak_mem_mb"] = round(memory[name], 1) if memory.get(name) is not None else None
        row["peak_mem_method"] = None
        if measure_memory and row["peak_mem_mb"] is not None:
            row["peak_mem_method"] = "cuda_max_allocated" if v.x.is_cuda else "child_peak_rss"
        row.update(_stats("train_img_s", train))
        row.update(_stats("infer_img_s", infer))
        row["latency_ms_p50"] = _round(1e3 * _percentile(v.latency_s, 0.5)) if v.latency_s else None
        row["latency_ms_p95"] = (
            _round(1e3 * _percentile(v.latency_s, 0.95)) if v.latency_s else None
        )
        for dataset, tiles in EPOCH_TILES.items():
            row[f"epoch_s_{dataset}"] = (
                _round(tiles * scale / row["train_img_s"]) if row["train_img_s"] else None
            )
        for kind, mine in (("train", train), ("infer", infer)):
            theirs = _rates(ref.train_s if kind == "train" else ref.infer_s) if ref else []
            ratios = [a / b for a, b in zip(mine, theirs, strict=False)]
            if ratios:
                row[f"ratio_{kind}"] = _round(statistics.median(ratios), 4)
                row[f"ratio_{kind}_min"] = _round(min(ratios), 4)
                row[f"ratio_{kind}_max"] = _round(max(ratios), 4)
            else:
                row[f"ratio_{kind}"] = row[f"ratio_{kind}_min"] = row[f"ratio_{kind}_max"] = None
        if compile:
            firsts = [
                first - steady
                for first, steady in (
                    (v.first_train_s, v.train_s[0] * len(v.x) if v.train_s else None),
                    (v.first_infer_s, v.infer_s[0] * len(v.x) if v.infer_s else None),
                )
                if first is not None and steady is not None
            ]
            row["compile_s"] = _round(sum(firsts), 2) if firsts else None
        if name in baselines:
            b = baselines[name]
            bt, bi = _rates(b.train_s), _rates(b.infer_s)
            row["fp32_train_img_s"] = _round(statistics.median(bt)) if bt else None
            row["fp32_infer_img_s"] = _round(statistics.median(bi)) if bi else None
            speed_t = [a / c for a, c in zip(train, bt, strict=False)]
            speed_i = [a / c for a, c in zip(infer, bi, strict=False)]
            row["train_speedup_vs_fp32"] = (
                _round(statistics.median(speed_t), 4) if speed_t else None
            )
            row["infer_speedup_vs_fp32"] = (
                _round(statistics.median(speed_i), 4) if speed_i else None
            )
            agree = agreement.get(name, {})
            row["argmax_agreement"] = agree.get("argmax_agreement")
            row["rel_rms_error"] = agree.get("rel_rms_error")
        rows.append(row)
    return rows


def _round(value: float | None, digits: int = 4) -> float | None:
    if value is None:
        return None
    return float(f"{value:.{digits}g}") if abs(value) < 1 else round(value, max(1, digits - 2))


def _stats(key: str, rates: list[float]) -> dict[str, float | None]:
    if not rates:
        return {key: None, f"{key}_min": None, f"{key}_max": None}
    return {
        key: _round(statistics.median(rates)),
        f"{key}_min": _round(min(rates)),
        f"{key}_max": _round(max(rates)),
    }


if __name__ == "__main__":  # the peak-memory child process
    if len(sys.argv) != 2:
        raise DeviceError("usage: python -m satunet.benchmark SPEC.json (internal)")
    _memory_child_main(sys.argv[1])
