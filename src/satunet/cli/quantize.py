"""`satunet quantize`: a checkpoint to a static int8 (QDQ) ONNX model, behind an accuracy gate."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import TYPE_CHECKING

from satunet.cli._flags import add_dataset, positive_int

if TYPE_CHECKING:
    from satunet.quantize import QuantizeReport

EXAMPLE = """examples:
  satunet quantize runs/fast/best.pt --data loveda --root data/loveda --scene rural \\
      --out fast.int8.onnx
  satunet quantize best.pt --root ../shared/data/loveda --val-fraction 0.2 --max-drop 0.5 \\
      --out fast.int8.onnx
  satunet predict fast.int8.onnx ortho.tif --out pred/      # run it with ONNX Runtime

Calibrates activation ranges on --samples tiles of --split (the checkpoint's own scale and
normalisation), picks uint8 or int8 activations by timing both on this CPU (reduce_range on x86
without VNNI), then scores fp32 and int8 on --eval-split (default: the validation split the
checkpoint was trained with; --val-fraction F carves it out of the training split by image).
Exits 1 and writes nothing if the int8 mIoU is more than --max-drop points below fp32, unless
--force. The choice and the scores are stored in the model's metadata (satunet_quantization).
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quantize",
        help="static int8 ONNX (QDQ, per-channel) calibrated on real tiles, with an mIoU gate",
        description="Export a satunet checkpoint to ONNX and quantize it to int8 with ONNX "
        "Runtime static quantization, calibrated on dataset tiles; keep it only if its mIoU "
        "stays within --max-drop points of fp32.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="satunet .pt checkpoint")
    add_dataset(p)
    p.add_argument("--split", default="train", help="split whose tiles calibrate (train)")
    p.add_argument("--samples", type=positive_int, default=64, help="calibration tiles (64)")
    p.add_argument("--eval-split", metavar="SPLIT", help="labelled split the gate scores")
    p.add_argument(
        "--val-fraction", type=float, metavar="F",
        help="score a carve-out of the training split instead (default: as trained)",
    )  # fmt: skip
    p.add_argument(
        "--max-drop", type=float, default=1.0, metavar="POINTS",
        help="largest allowed mIoU drop in points (1.0)",
    )  # fmt: skip
    p.add_argument("--force", action="store_true", help="write the model even if the gate fails")
    p.add_argument(
        "--activations", choices=("auto", "u8s8", "s8s8"), default="auto",
        help="activation/weight types: auto times both on this CPU (auto)",
    )  # fmt: skip
    p.add_argument(
        "--keep-float", default="first", metavar="first,last",
        help="convs left in float: first, last, first,last or none (first)",
    )  # fmt: skip
    p.add_argument("--format", choices=("md", "json"), default="md", help="stdout format (md)")
    p.add_argument("--out", required=True, metavar="FILE", help="int8 ONNX file to write")
    p.set_defaults(run=run)


def percent(value: float) -> str:
    return "—" if value is None or math.isnan(value) else f"{100 * value:.2f}"


def table(r: QuantizeReport) -> str:
    """The fp32/int8 mIoU table, per-class IoU and agreement, as markdown."""
    s = r.scheme
    lines = [
        f"calibration: {r.calibration}",
        f"evaluation:  {r.evaluation}",
        f"scheme:      {s.get('scheme')} (activations {s.get('activation_type')}, weights "
        f"{s.get('weight_type')}, per-channel, reduce_range={s.get('reduce_range')}, "
        f"float convs: {', '.join(s.get('float_nodes') or []) or 'none'})",
    ]
    if s.get("measured_mpx_s"):
        speeds = ", ".join(f"{k} {v:g}" for k, v in s["measured_mpx_s"].items())
        lines.append(f"measured:    {speeds} Mpx/s (ONNX Runtime, this CPU, one tile)")
    lines += ["", "| class | fp32 IoU | int8 IoU | change |", "|---|---:|---:|---:|"]
    for name, a, b in zip(r.classes, r.fp32_iou, r.int8_iou, strict=True):
        change = "—" if math.isnan(a) or math.isnan(b) else f"{100 * (b - a):+.2f}"
        lines.append(f"| {name} | {percent(a)} | {percent(b)} | {change} |")
    lines.append(
        f"| **mIoU** | **{percent(r.fp32_miou)}** | **{percent(r.int8_miou)}** | "
        f"**{-r.drop:+.2f}** |"
    )
    verdict = "passed" if r.passed else "FAILED"
    if not r.passed and r.forced:
        verdict += " (written anyway: --force)"
    lines += [
        "",
        f"argmax agreement int8 vs fp32: {100 * r.agreement:.2f}% of labelled pixels",
        f"gate: mIoU drop {r.drop:.2f} points, allowed {r.max_drop:g}: {verdict}",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from satunet.errors import ConfigError
    from satunet.quantize import AccuracyGateError, quantize_checkpoint

    if args.val_fraction is not None and not 0 <= args.val_fraction < 1:
        raise ConfigError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    names = (k.strip() for k in args.keep_float.split(","))
    keep = tuple(k for k in names if k not in ("", "none"))
    try:
        report = quantize_checkpoint(
            args.checkpoint, out=args.out, data=args.data, root=args.root, scene=args.scene,
            split=args.split, samples=args.samples, eval_split=args.eval_split,
            val_fraction=args.val_fraction, max_drop=args.max_drop, force=args.force,
            activations=args.activations, keep_float=keep,
        )  # fmt: skip
    except AccuracyGateError as e:
        scores = e.report
        print(json.dumps(scores.as_dict(), indent=2) if args.format == "json" else table(scores))
        print(f"satunet quantize: {e}", file=sys.stderr)
        return 1
    if args.format == "json":
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(table(report))
        print(f"wrote {report.output}")
    return 0
