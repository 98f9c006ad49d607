"""Model-only throughput of one model on every CPU backend x precision, side by side.

torch fp32 / bf16 (eager, BatchNorm folded, channels_last as `satunet predict` runs it), ONNX
Runtime fp32 and static int8 (QDQ per-channel, U8S8 and S8S8), OpenVINO fp32 / bf16 / int8 (the
U8S8 QDQ file). Every round runs each variant once on the same batch (interleaved, so a change in
machine load hits all of them alike); the table gives the median Mpx/s, the min-max spread over
rounds, the speed-up against torch fp32 and the argmax agreement with torch fp32.

    python benchmarks/int8_throughput.py                      # unet_fast, 4 x 512², 7 rounds
    python benchmarks/int8_throughput.py --batch 1 --rounds 11 --json out.json
    python benchmarks/int8_throughput.py --checkpoint runs/fast/best.pt \
        --data-root ../shared/data/loveda

Weights are random unless --checkpoint; int8 ranges are calibrated on --calibration tiles: random
normal tiles, or real LoveDA tiles from --data-root (agreement is only meaningful then). The load
average (os.getloadavg) is printed before and after: figures taken on a loaded machine are not
comparable with idle ones.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_model(args: argparse.Namespace) -> tuple[Any, Any]:
    import torch

    from satunet.checkpoint import ModelInfo, load_checkpoint
    from satunet.models import create_model

    if args.checkpoint:
        model, state = load_checkpoint(args.checkpoint)
        return model, ModelInfo.from_checkpoint(state, model)
    torch.manual_seed(0)
    model = create_model(args.model, in_channels=3, num_classes=args.num_classes).eval()
    return model, ModelInfo.from_model(model, name=args.model)


def calibration_tiles(args: argparse.Namespace, info: Any) -> list[dict[str, Any]]:
    """Samples {"image": tensor} for calibration: real LoveDA tiles or random normal ones."""
    import torch

    if args.data_root:
        from satunet.data import create_dataset
        from satunet.data.transforms import eval_transforms

        transforms = eval_transforms(info.normalization)
        ds = create_dataset("loveda", args.data_root, "train", scene="rural",
                            tile_size=args.size, transforms=transforms)  # fmt: skip
        step = max(1, len(ds) // args.calibration)
        return [ds[i] for i in range(0, len(ds), step)][: args.calibration]
    gen = torch.Generator().manual_seed(1)
    shape = (info.in_channels, args.size, args.size)
    return [{"image": torch.randn(shape, generator=gen)} for _ in range(args.calibration)]


def build_variants(args: argparse.Namespace, work: Path) -> tuple[dict[str, Any], list[str]]:
    """name -> predictor, and the pairs this machine cannot run (listed, not skipped silently)."""
    from satunet.infer import OnnxPredictor, TorchPredictor
    from satunet.quantize import (
        DEFAULT_KEEP_FLOAT,
        TileReader,
        conv_nodes,
        needs_reduce_range,
        prepare_fp32,
        quantize_file,
    )

    model, info = load_model(args)
    variants: dict[str, Any] = {}
    unsupported: list[str] = []
    for precision in ("fp32", "bf16"):
        variants[f"torch {precision}"] = TorchPredictor(
            model, info=info, precision=precision, channels_last=True, fold_bn=True
        )
    prepared = prepare_fp32(model, info, work)
    variants["onnxruntime fp32"] = OnnxPredictor(work / "fp32.onnx")
    reader = TileReader(calibration_tiles(args, info), list(range(args.calibration)), "x",
                        info.size_multiple)  # fmt: skip
    exclude = conv_nodes(prepared, DEFAULT_KEEP_FLOAT)  # as `satunet quantize` does by default
    for scheme in ("u8s8", "s8s8"):
        path = work / f"{scheme}.onnx"
        quantize_file(prepared, path, reader, work / "calibration.json", scheme=scheme,
                      reduce_range=needs_reduce_range(), exclude=exclude)  # fmt: skip
        variants[f"onnxruntime int8 {scheme.upper()}"] = OnnxPredictor(path, info=info)
    try:
        from satunet.infer.openvino import OpenVinoPredictor

        for label, path, precision in (("fp32", "fp32.onnx", "fp32"), ("bf16", "fp32.onnx", "bf16"),
                                       ("int8 U8S8", "u8s8.onnx", "fp32")):  # fmt: skip
            for streams in args.ov_streams:
                name = f"openvino {label}" + (f" {streams} streams" if streams > 1 else "")
                try:
                    variants[name] = OpenVinoPredictor(
                        work / path, info=info, precision=precision, streams=streams
                    )
                except Exception as e:  # noqa: BLE001 - report, keep going
                    unsupported.append(f"{name}: {e}")
    except ImportError as e:
        unsupported.append(f"openvino: {e}")
    return variants, unsupported


def measure(variants: dict[str, Any], x: np.ndarray, rounds: int) -> dict[str, list[float]]:
    """Seconds per batch of every variant, rounds interleaved (after one warm-up each)."""
    for predictor in variants.values():
        predictor(x)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, predictor in variants.items():
            start = time.perf_counter()
            predictor(x)
            times[name].append(time.perf_counter() - start)
    return times


def report(args, variants, times, x, unsupported, loads) -> dict[str, Any]:
    mpx = x.shape[0] * x.shape[2] * x.shape[3] / 1e6
    reference = variants["torch fp32"](x).argmax(1)
    base = statistics.median(times["torch fp32"])
    rows = []
    for name, t in times.items():
        rates = [mpx / s for s in t]
        agree = float((variants[name](x).argmax(1) == reference).mean())
        rows.append({"variant": name, "mpx_s": statistics.median(rates), "min": min(rates),
                     "max": max(rates), "images_s": x.shape[0] / statistics.median(t),
                     "speedup": base / statistics.median(t), "agreement": agree})  # fmt: skip
    return {"machine": cpu_name(), "cores": len(os.sched_getaffinity(0)), "model": args.checkpoint
            or args.model, "batch": args.batch, "size": args.size, "rounds": args.rounds,
            "load_before": loads[0], "load_after": loads[1], "rows": rows,
            "unsupported": unsupported}  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"{result['model']}, {result['batch']} x {result['size']}², {result['rounds']} interleaved "
        f"rounds, {result['machine']} ({result['cores']} cores); load average "
        f"{result['load_before']} before, {result['load_after']} after",
        "",
        "| variant | Mpx/s (median) | spread (min-max) | images/s | vs torch fp32 | agreement |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['variant']} | {r['mpx_s']:.2f} | {r['min']:.2f}-{r['max']:.2f} | "
            f"{r['images_s']:.2f} | {r['speedup']:.2f}x | {100 * r['agreement']:.2f}% |"
        )
    lines += [f"- unsupported: {u}" for u in result["unsupported"]]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="unet_fast")
    parser.add_argument("--num-classes", type=int, default=7)
    parser.add_argument("--checkpoint", help="a trained satunet checkpoint instead")
    parser.add_argument("--data-root", help="LoveDA root: calibrate and compare on real tiles")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calibration", type=int, default=8, help="calibration tiles (8)")
    parser.add_argument("--ov-streams", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    from satunet.runtime import configure_cpu_threads

    configure_cpu_threads()
    loads = [round(os.getloadavg()[0], 2)]
    with tempfile.TemporaryDirectory(prefix="satunet-int8-bench-") as tmp:
        variants, unsupported = build_variants(args, Path(tmp))
        if args.data_root:
            tiles = calibration_tiles(args, variants["torch fp32"].info)
            x = np.stack([tiles[i % len(tiles)]["image"].numpy() for i in range(args.batch)])
        else:
            x = np.random.default_rng(0).standard_normal(
                (args.batch, 3, args.size, args.size), dtype=np.float32
            )
        times = measure(variants, x, args.rounds)
        loads.append(round(os.getloadavg()[0], 2))
        result = report(args, variants, times, x, unsupported, loads)
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
