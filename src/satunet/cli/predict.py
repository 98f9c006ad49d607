"""`satunet predict`: segment images and whole scenes of any size, tiled, blended, streamed."""

from __future__ import annotations

import argparse

from satunet.cli._flags import add_device, add_precision

EXAMPLE = """examples:
  satunet predict runs/skinny/best.pt scene.tif --out predictions/
  satunet predict best.pt 'scenes/*.tif' --out pred/ --tile 512 --overlap 64 --cog --preview
  satunet predict best.pt big.tif --out pred/ --device cuda --precision bf16 --batch-size 8
  satunet predict best.pt images/ --out pred/ --probabilities
  satunet predict model.onnx scene.tif --out pred/              # ONNX Runtime (satunet export)
  satunet predict best.pt LoveDA/Test/*/images_png --out sub/ --format loveda-submission

TIFF/GeoTIFF inputs give <stem>.tif class masks with the source's CRS, transform and tiling
(no-data pixels -> 255); PNG/JPEG inputs give <stem>.png. Memory stays flat in the scene height.
"""


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
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch")
    p.add_argument(
        "--onnx", metavar="FILE", help="ONNX file for --backend onnx (default CHECKPOINT.onnx)"
    )
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
        "--format",
        choices=("auto", "loveda-submission"),
        default="auto",
        help="loveda-submission: flat <id>.png files with values 0..6, validated and zipped",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from satunet.data.geotiff import expand_inputs
    from satunet.infer import (
        LOVEDA_TEST_IMAGES,
        check_outputs,
        load_predictor,
        predict_scene,
        validate_loveda_submission,
        zip_submission,
    )
    from satunet.runtime import resolve_device

    inputs = expand_inputs(args.inputs)
    out = check_outputs([*inputs, args.checkpoint], args.out, args.format)
    device = args.device
    if args.backend == "torch" and not str(args.checkpoint).lower().endswith(".onnx"):
        device = resolve_device(args.device, args.precision)
    batch_size = args.batch_size or (8 if str(device).startswith("cuda") else 1)
    predictor = load_predictor(
        args.checkpoint,
        backend=args.backend,
        device=device,
        precision=args.precision,
        onnx=args.onnx,
    )
    pixels = seconds = 0.0
    area: float | None = 0.0
    for path in inputs:
        result = predict_scene(
            predictor,
            path,
            out,
            tile=args.tile,
            overlap=args.overlap,
            batch_size=batch_size,
            blend=args.blend,
            probabilities=args.probabilities,
            cog=args.cog,
            preview=args.preview,
            output_format=args.format,
            progress=not args.quiet,
        )
        pixels += result.height * result.width
        seconds += result.seconds
        area = None if area is None or result.area_km2 is None else area + result.area_km2
        speed = f"{result.megapixels_per_s:.2f} Mpx/s"
        if result.km2_per_min is not None:
            speed += f", {result.km2_per_min:.2f} km2/min"
        print(
            f"{path} -> {result.outputs['mask']}  {result.width}x{result.height} px  "
            f"{result.seconds:.1f} s  {speed}"
        )
    if len(inputs) > 1:
        total = f"{pixels / 1e6 / max(seconds, 1e-9):.2f} Mpx/s"
        if area is not None:
            total += f", {area / max(seconds, 1e-9) * 60:.2f} km2/min"
        print(f"{len(inputs)} images, {pixels / 1e6:.1f} Mpx in {seconds:.1f} s: {total}")
    if args.format == "loveda-submission":
        files = validate_loveda_submission(out, expected=len(inputs))
        if len(files) != LOVEDA_TEST_IMAGES:
            print(
                f"warning: {len(files)} masks; the official LoveDA test split has "
                f"{LOVEDA_TEST_IMAGES} images, so the server will reject a partial submission"
            )
        archive = zip_submission(files, out / "loveda-submission.zip")
        print(f"valid LoveDA submission: {len(files)} masks zipped into {archive}")
    return 0
