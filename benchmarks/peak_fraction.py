"""Model-only throughput of unet_fast as a fraction of this machine's measured conv peak.

Measures the real 3x3-conv peak of each precision over every path (torch fp32/bf16/int8 in
both memory formats, ONNX Runtime fp32/int8, OpenVINO f32/bf16/int8 on large-channel conv stacks:
satunet.benchmark.peak) before and after the model (the best of both, path by path), beside the
theoretical vector-unit peak and the clock the measured peak implies (near the CPU's boost clock
for all three precisions = a real peak; far below it = a low one). In between it times the model
on one batch in ONNX Runtime int8, OpenVINO int8 (float parts in f32, and in bf16), torch bf16,
OpenVINO bf16, torch fp32, ONNX Runtime fp32 and OpenVINO fp32, rounds interleaved, and prints
markdown tables: Mpx/s (median and min-max over rounds), achieved GOP/s (the model's counted
MACs x 2), the peak of that precision, and the fraction of it.

    python benchmarks/peak_fraction.py                   # the trained unet_fast, 4 x 512², 7 rounds
    python benchmarks/peak_fraction.py --rounds 11 --json /tmp/peak/fraction.json

Run it on an idle machine: the load average (1/5/15 min) is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from int8_throughput import measure  # the same interleaved rounds

CHECKPOINT = Path("runs/race-3min/runs/unet_fast-seed0/best.pt")
INT8_ONNX = Path("runs/fast.int8.onnx")


def build_variants(args: argparse.Namespace, work: Path) -> tuple[dict[str, Any], Any, float]:
    """name ("backend precision") -> predictor, the model record and the model's GOP per image
    at --size."""
    from satunet.checkpoint import ModelInfo, load_checkpoint
    from satunet.infer import OnnxPredictor, TorchPredictor, export_onnx
    from satunet.infer.openvino import OpenVinoPredictor
    from satunet.profile import count_gmacs

    model, state = load_checkpoint(args.checkpoint)
    info = ModelInfo.from_checkpoint(state, model)
    gop = 2 * count_gmacs(model, args.size, info.in_channels)
    fp32 = export_onnx(model, work / "fp32.onnx", info, exporter="torchscript", opset=17)
    streams = f" {args.ov_streams} streams" if args.ov_streams > 1 else ""
    variants = {
        "onnxruntime int8": OnnxPredictor(args.int8, info=info),
        f"openvino int8{streams}": OpenVinoPredictor(args.int8, info=info, streams=args.ov_streams),
        f"openvino int8{streams} (bf16 hint)": OpenVinoPredictor(
            args.int8, info=info, precision="bf16", streams=args.ov_streams
        ),
        "torch bf16": TorchPredictor(model, info=info, precision="bf16", channels_last=True,
                                     fold_bn=True),
        f"openvino bf16{streams}": OpenVinoPredictor(fp32, info=info, precision="bf16",
                                                     streams=args.ov_streams),
        "torch fp32": TorchPredictor(model, info=info, precision="fp32", channels_last=True,
                                     fold_bn=True),
        "onnxruntime fp32": OnnxPredictor(fp32, info=info),
        f"openvino fp32{streams}": OpenVinoPredictor(fp32, info=info, streams=args.ov_streams),
    }  # fmt: skip
    return variants, info, gop


def rows(times: dict[str, list[float]], x: np.ndarray, gop: float, best: dict) -> list[dict]:
    images, mpx = x.shape[0], x.shape[0] * x.shape[2] * x.shape[3] / 1e6
    out = []
    for name, t in times.items():
        precision = name.split()[1]  # "backend precision [N streams]"
        peak = best.get(precision, {})
        rates = [mpx / s for s in t]
        achieved = images * gop / statistics.median(t)
        out.append({"path": name, "precision": precision, "mpx_s": statistics.median(rates),
                    "min": min(rates), "max": max(rates), "gops": achieved,
                    "peak_gops": peak.get("gops"), "peak_path": peak.get("path"),
                    "fraction": achieved / peak["gops"] if peak else None})  # fmt: skip
    return out


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"{result['model']}, {result['batch']} x {result['size']}², {result['gop']:.1f} GOP per "
        f"image, {result['rounds']} interleaved rounds; {m['cpu']} ({m['cores']} cores usable); "
        f"load average {m['load_before']} before, {m['load_after']} after",
        "",
        "| precision | measured peak GOP/s | best path | theory GOP/s | implied clock GHz |",
        "|---|---:|---|---:|---:|",
    ]
    for precision, p in result["peaks"]["best"].items():
        theory, ghz = p.get("theory_gops", 0), p.get("implied_ghz", 0)
        lines.append(f"| {precision} | {p['gops']:.0f} | {p['path']} | {theory:.0f} | {ghz:.2f} |")
    lines += [
        "",
        f"theory: {result['peaks']['theory']['basis']}",
        *(f"- skipped: {s}" for s in result["peaks"]["skipped"]),
        "",
        "| path | Mpx/s (median) | spread (min-max) | achieved GOP/s | peak GOP/s | of peak |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        fraction = f"{100 * r['fraction']:.0f}%" if r["fraction"] is not None else "-"
        lines.append(f"| {r['path']} | {r['mpx_s']:.2f} | {r['min']:.2f}-{r['max']:.2f} | "
                     f"{r['gops']:.0f} | {r['peak_gops'] or 0:.0f} ({r['precision']}) | "
                     f"{fraction} |")  # fmt: skip
    if any((r["fraction"] or 0) > 1 for r in result["rows"]):
        lines.append("\nA fraction over 100% means the peak was measured low (a busy machine: "
                     "see the load average); rerun on an idle machine.")  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    parser.add_argument("--int8", type=Path, default=INT8_ONNX, help="its QDQ int8 ONNX file")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--ov-streams", type=int, default=1, help="OpenVINO streams (1)")
    parser.add_argument("--peak-time", type=float, default=0.5,
                        help="seconds each peak path is timed for (0.5)")  # fmt: skip
    parser.add_argument(
        "--no-peak-repeat",
        dest="peak_repeat",
        action="store_false",
        help="measure the peak once (before the model), not before and after",
    )
    parser.add_argument("--ghz", type=float, help="clock for the theoretical peak "
                        "(default: /proc/cpuinfo's, the nominal one)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from satunet.benchmark.machine import describe_machine
    from satunet.benchmark.peak import measure_conv_peaks
    from satunet.runtime import configure_cpu_threads

    configure_cpu_threads()
    load_before = [round(v, 2) for v in os.getloadavg()]
    peaks = measure_conv_peaks(min_time_s=args.peak_time, ghz=args.ghz)
    with tempfile.TemporaryDirectory(prefix="satunet-peak-fraction-") as tmp:
        variants, info, gop = build_variants(args, Path(tmp))
        shape = (args.batch, info.in_channels, args.size, args.size)
        x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        times = measure(variants, x, args.rounds)
    if args.peak_repeat:  # once more after the model: the best of both, path by path
        peaks = peaks.merge(measure_conv_peaks(min_time_s=args.peak_time, ghz=args.ghz))
    machine = describe_machine("cpu")
    result = {
        "model": str(args.checkpoint), "int8": str(args.int8), "batch": args.batch,
        "size": args.size, "rounds": args.rounds, "gop": gop, "peaks": peaks.as_dict(),
        "rows": rows(times, x, gop, peaks.summary()),
        "machine": {"cpu": machine["cpu"], "cores": machine["cpus_usable"],
                    "load_before": load_before,
                    "load_after": [round(v, 2) for v in os.getloadavg()]},
    }  # fmt: skip
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
