"""`satunet predict`: segment images and whole scenes of any size, tiled, blended, streamed."""

from __future__ import annotations

import argparse
import sys

from satunet.cli._flags import add_device, add_precision, positive_int

EXAMPLE = """examples:
  satunet predict runs/skinny/best.pt scene.tif --out predictions/
  satunet predict best.pt 'scenes/*.tif' --out pred/ --tile 512 --overlap 64 --cog --preview
  satunet predict best.pt big.tif --out pred/ --device cuda --precision bf16 --batch-size 8
  satunet predict best.pt images/ --out pred/ --probabilities
  satunet predict best.pt s2.tif --out pred/ --bands 4,3,2 --tta d4
  satunet predict best.pt ortho.tif --out pred/ --vectorize --min-area 25 --simplify 0.5
  satunet predict best.pt 'tiles/*.tif' --out pred/ --resume-batch   # skip finished scenes
  torchrun --nproc_per_node 4 -m satunet predict best.pt 'tiles/*.tif' --out pred/
  satunet predict model.onnx scene.tif --out pred/              # ONNX Runtime (satunet export)
  satunet predict m.int8.onnx ortho.tif --out pred/ --backend openvino --profile  # int8, OpenVINO
  satunet predict model.onnx ortho.tif --out pred/ --backend openvino --precision bf16
  satunet predict best.pt LoveDA/Test/*/images_png --out sub/ --format loveda-submission

TIFF/GeoTIFF inputs give <stem>.tif class masks with the source's CRS, transform and tiling,
the model's colour table and class names (no-data pixels -> 255); PNG/JPEG inputs give
<stem>.png. Memory stays flat in the scene height. A scene that fails is reported and skipped;
the command then exits 1 naming it. Under torchrun each rank takes every N-th scene.
"""


def bands_list(text: str) -> tuple[int, ...]:
    """'4,3,2' -> (4, 3, 2): 1-based band numbers, like GDAL's -b."""
    try:
        bands = tuple(int(b) for b in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected band numbers such as 4,3,2, got {text!r}"
        ) from None
    if not bands or min(bands) < 1:
        raise argparse.ArgumentTypeError(f"bands are numbered from 1 (like GDAL), got {text!r}")
    return bands


def non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def add_backend_flags(p: argparse.ArgumentParser) -> None:
    """--backend, --onnx, --streams and --profile."""
    p.add_argument(
        "--backend",
        choices=("torch", "onnx", "openvino"),
        default="torch",
        help="torch (eager), onnx (ONNX Runtime) or openvino (pip install 'satunet[openvino]'); "
        "onnx/openvino take .onnx files, int8 ones from `satunet quantize` (torch)",
    )
    p.add_argument(
        "--onnx",
        metavar="FILE",
        help="ONNX file for --backend onnx/openvino and a .pt CHECKPOINT (default CHECKPOINT.onnx)",
    )
    p.add_argument(
        "--streams",
        type=positive_int,
        default=None,
        help="--backend openvino: parallel inference requests (default: 2 on 2+ cores, else 1)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="print where each scene's time goes: read / model / prepare / blend / finish / write",
    )


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="segment images and whole scenes (tiled, blended, georeferenced output)",
        description="Predict class masks for images of any size: sliding tiles with overlap, "
        "blended with a cosine window so no seams appear, streamed in row bands so memory "
        "depends on the scene width only. Prints Mpx/s and, for projected GeoTIFFs, km2/min.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="satunet .pt checkpoint or .onnx")
    p.add_argument("inputs", metavar="INPUT", nargs="+", help="image files, folders or globs")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--tile", type=int, default=512, help="tile size in pixels (default 512)")
    p.add_argument("--overlap", type=int, default=64, help="tile overlap in pixels (default 64)")
    p.add_argument(
        "--batch-size", type=int, default=None, help="tiles per forward pass (1 on CPU, 8 on CUDA)"
    )
    add_device(p)
    add_precision(p)
    add_backend_flags(p)
    p.add_argument("--blend", choices=("cosine", "linear", "none"), default="cosine")
    p.add_argument(
        "--probabilities",
        action="store_true",
        help="also write <stem>_probabilities.tif: one uint8 band per class (p * 255)",
    )
    p.add_argument("--cog", action="store_true", help="write Cloud-Optimized GeoTIFFs")
    p.add_argument(
        "--preview", action="store_true", help="write <stem>_preview.png, coloured, with a legend"
    )
    p.add_argument(
        "--bands",
        type=bands_list,
        metavar="B,B,...",
        help="input bands to use, 1-based like GDAL (e.g. 4,3,2; default: the checkpoint's)",
    )
    p.add_argument(
        "--tta",
        choices=("none", "flip", "d4"),
        default="none",
        help="test-time augmentation: mean logits over flips (3x time) or D4 (8x time)",
    )
    p.add_argument(
        "--vectorize",
        action="store_true",
        help="also write <stem>.gpkg: one polygon layer with class and class_name fields",
    )
    p.add_argument(
        "--min-area",
        type=non_negative,
        default=0.0,
        metavar="M2",
        help="with --vectorize: drop regions (and fill holes) smaller than this, in map units²",
    )
    p.add_argument(
        "--simplify",
        type=non_negative,
        default=0.0,
        metavar="M",
        help="with --vectorize: Douglas-Peucker tolerance in map units (default 0: pixel edges)",
    )
    p.add_argument(
        "--resume-batch",
        action="store_true",
        help="skip scenes whose outputs are all complete (from an interrupted run)",
    )
    p.add_argument(
        "--format",
        choices=("auto", "loveda-submission"),
        default="auto",
        help="loveda-submission: flat <id>.png files with values 0..6, validated and zipped",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from satunet.data.geotiff import expand_inputs
    from satunet.errors import ConfigError
    from satunet.infer import (
        Polygons,
        Shard,
        check_outputs,
        load_predictor,
        predict_scenes,
        with_tta,
    )
    from satunet.runtime import configure_cpu_threads, resolve_device, usable_cores

    if (args.min_area or args.simplify) and not args.vectorize:
        raise ConfigError("--min-area and --simplify shape --vectorize's polygons: add it")
    shard = Shard.from_env()
    inputs = expand_inputs(args.inputs)
    out = check_outputs([*inputs, args.checkpoint], args.out, args.format)
    device = args.device
    if args.backend == "torch" and not str(args.checkpoint).lower().endswith(".onnx"):
        device = resolve_device(args.device, args.precision)
    if shard.world > 1 and not str(device).startswith("cuda"):
        configure_cpu_threads()  # the cores split over this machine's ranks
    streams = args.streams or min(2, usable_cores())
    if args.streams and args.backend != "openvino":
        raise ConfigError("--streams sets OpenVINO's parallel requests: add --backend openvino")
    default_batch = 8 if str(device).startswith("cuda") else 1
    batch_size = args.batch_size or (streams if args.backend == "openvino" else default_batch)
    predictor = load_predictor(
        args.checkpoint,
        backend=args.backend,
        device=device,
        precision=args.precision,
        onnx=args.onnx,
        streams=streams if args.backend == "openvino" else 1,
    )
    batch = predict_scenes(
        with_tta(predictor, args.tta),
        inputs,
        out,
        resume=args.resume_batch,
        keep_going=len(inputs) > 1,  # one scene: its error is the command's (exit 2)
        shard=shard,
        on_result=_print_result,
        on_failure=lambda f: print(f"{f.input}: FAILED: {f.error}", file=sys.stderr),
        tile=args.tile,
        overlap=args.overlap,
        batch_size=batch_size,
        blend=args.blend,
        probabilities=args.probabilities,
        cog=args.cog,
        preview=args.preview,
        output_format=args.format,
        progress=not args.quiet,
        bands=args.bands,
        polygons=Polygons(args.min_area, args.simplify) if args.vectorize else None,
        profile=args.profile,
    )
    _print_summary(batch, len(inputs))
    if not batch.ok:
        return 1
    if args.format == "loveda-submission":
        _submission(out, len(inputs), shard)
    return 0


def _print_result(result) -> None:
    speed = f"{result.megapixels_per_s:.2f} Mpx/s"
    if result.km2_per_min is not None:
        speed += f", {result.km2_per_min:.2f} km2/min"
    extra = f" + {result.outputs['polygons'].name}" if "polygons" in result.outputs else ""
    print(
        f"{result.input} -> {result.outputs['mask']}{extra}  {result.width}x{result.height} px  "
        f"{result.seconds:.1f} s  {speed}"
    )
    if result.profile:
        print(f"  profile: {profile_line(result.profile, result.seconds)}")


def profile_line(profile: dict[str, float], seconds: float) -> str:
    """'read 1.2 s (thread) | model 9.0 s | ...' with the main thread's waits last."""
    threads = {"read": " (reader thread)", "model": " (model thread)", "write": " (writer thread)"}
    parts = [
        f"{stage} {value:.2f} s{threads.get(stage, '')}"
        for stage, value in profile.items()
        if not stage.startswith("wait_") and (value or stage != "model")
    ]
    waits = ", ".join(f"{k[5:]} {v:.2f} s" for k, v in profile.items() if k.startswith("wait_"))
    return f"{' | '.join(parts)} | main thread waited for: {waits} (of {seconds:.2f} s)"


def _print_summary(batch, total: int) -> None:
    results, shard = batch.results, batch.shard
    who = f"rank {shard.rank} of {shard.world}: " if shard.world > 1 else ""
    if len(results) > 1:
        pixels = sum(r.height * r.width for r in results)
        seconds = sum(r.seconds for r in results)
        speed = f"{pixels / 1e6 / max(seconds, 1e-9):.2f} Mpx/s"
        areas = [r.area_km2 for r in results]
        if all(a is not None for a in areas):
            speed += f", {sum(areas) / max(seconds, 1e-9) * 60:.2f} km2/min"
        print(f"{who}{len(results)} images, {pixels / 1e6:.1f} Mpx in {seconds:.1f} s: {speed}")
    if batch.skipped:
        print(f"{who}{len(batch.skipped)} scene(s) already complete, skipped (--resume-batch)")
    if batch.failures:
        print(
            f"{who}{len(batch.failures)} of {len(shard.take(range(total)))} scene(s) failed "
            "and were skipped:",
            file=sys.stderr,
        )
        for f in batch.failures:
            print(f"  {f.input}: {f.error}", file=sys.stderr)


def _submission(out, expected: int, shard) -> None:
    from satunet.infer import LOVEDA_TEST_IMAGES, validate_loveda_submission, zip_submission

    if shard.world > 1:
        print(
            f"rank {shard.rank}: masks written; to validate and zip the submission, run the "
            "same command once without torchrun, with --resume-batch (nothing is re-predicted)"
        )
        return
    files = validate_loveda_submission(out, expected=expected)
    if len(files) != LOVEDA_TEST_IMAGES:
        print(
            f"warning: {len(files)} masks; the official LoveDA test split has "
            f"{LOVEDA_TEST_IMAGES} images, so the server will reject a partial submission"
        )
    archive = zip_submission(files, out / "loveda-submission.zip")
    print(f"valid LoveDA submission: {len(files)} masks zipped into {archive}")
