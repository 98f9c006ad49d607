"""`satunet export`: a checkpoint to ONNX with dynamic batch/height/width, checked for parity."""

from __future__ import annotations

import argparse
import sys

from satunet.cli._flags import positive_int

EXAMPLE = """examples:
  satunet export runs/skinny/best.pt --onnx skinny.onnx
  satunet export best.pt --onnx model.onnx --exporter torchscript
  satunet predict skinny.onnx scene.tif --out pred/        # run it with ONNX Runtime
  satunet export best.pt --onnx fast_deepness.onnx --deepness --tile 512   # QGIS Deepness

After exporting, ONNX Runtime and PyTorch run the same random batch at a size other than the
export size; the command fails (exit 1) if fewer than 99.9% of pixels get the same class.

--deepness writes what the QGIS Deepness plugin loads instead: one fixed --tile RGB float32
input (batch dynamic), softmax probabilities out, IR version 8, and the plugin's metadata
(class names, resolution, tile size, overlap, standardisation). In QGIS: Plugins -> Deepness ->
Model type "Segmentor" -> the .onnx -> "Load default parameters" -> the orthophoto layer -> Run.
"""

MIN_AGREEMENT = 0.999


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX (dynamic batch, height, width) with a parity check",
        description="Export a satunet checkpoint to ONNX with dynamic batch, height and width "
        "(multiples of the model's size_multiple), then compare ONNX Runtime with PyTorch.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="satunet .pt checkpoint")
    p.add_argument("--onnx", required=True, metavar="FILE", help="ONNX file to write")
    p.add_argument(
        "--size",
        type=positive_int,
        default=None,
        help="example size to trace (default 2 x multiple)",
    )
    p.add_argument(
        "--exporter",
        choices=("dynamo", "torchscript"),
        default="dynamo",
        help="torch.export-based (default) or the legacy TorchScript exporter",
    )
    p.add_argument(
        "--opset",
        type=int,
        default=None,
        help="ONNX opset (default 18; 17 with --exporter torchscript); other values are refused "
        "unless the exporter writes them",
    )
    p.add_argument(
        "--deepness",
        action="store_true",
        help="write a QGIS Deepness Segmentor: fixed --tile RGB input (batch dynamic), softmax "
        "output, IR <= 9, the plugin's metadata",
    )
    p.add_argument("--tile", type=positive_int, default=512, help="Deepness tile size (512)")
    p.add_argument(
        "--resolution",
        type=float,
        metavar="CM",
        help="Deepness: ground resolution in cm/px (default: the checkpoint's training "
        "resolution: LoveDA 30, LandCover.ai 25)",
    )
    p.add_argument(
        "--tiles-overlap", type=int, default=12, metavar="PERCENT", help="Deepness overlap (12)"
    )
    p.set_defaults(run=run)


# Loggers of the ONNX exporter's optimiser, whose INFO lines would flood `satunet export`.
CHATTY_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx", "torch._dynamo", "torch.export")


def quiet_exporter_logs(verbose: bool = False) -> None:
    """Only warnings from the exporter's optimiser loggers (everything with --verbose)."""
    import logging

    if not verbose:
        for name in CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from satunet.checkpoint import ModelInfo, load_checkpoint
    from satunet.errors import ConfigError
    from satunet.files import check_output_file
    from satunet.infer import export_onnx, onnx_parity

    quiet_exporter_logs(getattr(args, "verbose", False))
    if args.deepness:
        if args.size or args.opset is not None or args.exporter != "dynamo":
            raise ConfigError(
                "--deepness writes its own graph (torchscript exporter, opset 17, fixed --tile): "
                "drop --size, --exporter and --opset"
            )
        return _deepness(args)
    if args.resolution is not None:
        raise ConfigError("--resolution is written into Deepness files: add --deepness")
    target = check_output_file(Path(args.onnx), inputs=[args.checkpoint], what="--onnx file")
    model, state = load_checkpoint(args.checkpoint)
    info = ModelInfo.from_checkpoint(state, model)
    export_onnx(model, target, info, size=args.size, exporter=args.exporter, opset=args.opset)
    m = info.size_multiple
    # Check at a size other than the traced one, non-square, batch 2: the dynamic axes work.
    side = max(m, 32 // m * m)
    height, width = 3 * side, 2 * side
    parity = onnx_parity(model, target, height=height, width=width, batch=2)
    print(f"wrote {target} ({target.stat().st_size / 2**20:.1f} MiB, {info.name})")
    print(
        f"parity at 2x{info.in_channels}x{height}x{width}: max |logit diff| "
        f"{parity.max_abs_diff:.3g}, argmax agreement {parity.agreement:.4%}"
    )
    if parity.agreement < MIN_AGREEMENT:
        print(
            f"satunet export: error: argmax agreement {parity.agreement:.4%} is below "
            f"{MIN_AGREEMENT:.1%}; the ONNX model does not reproduce PyTorch. Try "
            "--exporter torchscript or another --opset",
            file=sys.stderr,
        )
        return 1
    return 0


def _deepness(args: argparse.Namespace) -> int:
    from satunet.deepness import export_checkpoint

    path, info, cm = export_checkpoint(args.checkpoint, args.onnx, tile=args.tile,
                                       resolution_cm=args.resolution,
                                       overlap_percent=args.tiles_overlap)  # fmt: skip
    print(
        f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, {info.name}): Deepness "
        f"Segmentor, {args.tile} px tiles, {args.tiles_overlap}% overlap, {cm:g} cm/px"
    )
    return 0
