"""Scene throughput and peak memory of `satunet predict` on GeoTIFFs, per backend and precision.

Each scene is predicted by a fresh `satunet predict` subprocess, and its peak resident memory
is that child's ru_maxrss (os.wait4 returns the rusage of exactly that child; the RUSAGE_CHILDREN
total of resource.getrusage would carry the largest earlier child over to the next row). If
memory is flat in the scene height, peak RSS stays about the same from 4k to 16k while the
pixels grow 16x. Prints a Markdown table for the README.

    python benchmarks/scene_throughput.py                       # 4k, 8k, 16k; unet_skinny, CPU
    python benchmarks/scene_throughput.py --sizes 4096 --precision bf16
    python benchmarks/scene_throughput.py --device cuda --batch-size 8
    # issue 12: an 86 Mpx mosaic of real LoveDA images, eager fp32 beside int8 on OpenVINO/ORT
    python benchmarks/scene_throughput.py --sizes 9000 --height 9500 --model unet_fast \
        --checkpoint runs/fast/best.pt --loveda ../shared/data/loveda \
        --backend openvino,onnx --precision int8

With ``--backend``/``--precision`` other than torch fp32, eager torch fp32 is measured too (the
first row, same scenes, same run) and every row gets its speed-up against it; ``--no-eager``
skips that row (flat memory on a large scene, int8 only:
``--sizes 20000 --backend openvino,onnx --precision int8 --int8 FILE --no-eager``). ``--precision
int8`` is the QDQ file `satunet.quantize` writes (``--int8 FILE`` to reuse one); it needs
``--loveda`` (calibration tiles). Rows run one after another; wall time includes process start.

The weights are random unless ``--checkpoint`` (throughput and memory do not depend on them;
int8 accuracy does). Scenes are 3-band uint8 (random pixels, or with ``--loveda`` a mosaic of
the real LoveDA images at their 0.3 m), EPSG:32633, tiled 256x256, uncompressed; they are
written to --workdir (a temporary
folder by default: 16k x 16k takes 768 MB of disk) and deleted afterwards unless --keep.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def loveda_images(root: Path) -> list[np.ndarray]:
    """The real LoveDA images under ``root`` as (3, H, W) uint8 (Train/Val, Urban/Rural)."""
    from PIL import Image

    paths = sorted(root.glob("*/*/images_png/*.png"))
    if not paths:
        raise SystemExit(f"no LoveDA images under {root} (expected */*/images_png/*.png)")
    return [np.asarray(Image.open(p).convert("RGB")).transpose(2, 0, 1) for p in paths]


def make_scene(
    path: Path, width: int, height: int, seed: int = 0, images: list[np.ndarray] | None = None
) -> Path:
    """A width x height 3-band uint8 GeoTIFF written in row blocks (never whole in memory):
    random pixels, or a mosaic of ``images`` (real LoveDA tiles, at their 0.3 m)."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    rng = np.random.default_rng(seed)
    pixel = 0.3 if images else 0.5
    profile = {
        "driver": "GTiff", "height": height, "width": width, "count": 3, "dtype": "uint8",
        "crs": "EPSG:32633", "transform": from_origin(400000.0, 5600000.0, pixel, pixel),
        "tiled": True, "blockxsize": 256, "blockysize": 256, "BIGTIFF": "IF_SAFER",
    }  # fmt: skip
    step = images[0].shape[1] if images else 1024
    tmp = path.with_name(f".{path.name}.part")
    with rasterio.open(tmp, "w", **profile) as dst:
        for k, row in enumerate(range(0, height, step)):
            rows = min(step, height - row)
            if images:  # each row of the mosaic starts further along the image list
                cols = -(-width // step)
                parts = [images[(k * cols + j) % len(images)][:, :rows] for j in range(cols)]
                block = np.concatenate(parts, axis=2)[:, :, :width]
            else:
                block = rng.integers(0, 256, (3, rows, width), dtype=np.uint8)
            dst.write(np.ascontiguousarray(block), window=Window(0, row, width, rows))
    os.replace(tmp, path)
    return path


def make_int8(checkpoint: Path, loveda: Path | None, out: Path) -> Path:
    """The QDQ int8 file `satunet quantize` writes (gate recorded, never refused here)."""
    from satunet.quantize import quantize_checkpoint

    if loveda is None:
        raise SystemExit("--precision int8 needs --loveda ROOT (calibration tiles) or --int8 FILE")
    scene = "rural" if not (loveda / "Train" / "Urban").is_dir() else None
    report = quantize_checkpoint(checkpoint, out=out, data="loveda", root=loveda, scene=scene,
                                 samples=32, val_fraction=0.2, force=True)  # fmt: skip
    print(f"int8: {report.scheme['scheme']}, mIoU fp32 {report.fp32_miou:.4g} / int8 "
          f"{report.int8_miou:.4g}, agreement {report.agreement:.2%}", file=sys.stderr)  # fmt: skip
    return out


def make_checkpoint(path: Path, model: str, num_classes: int) -> Path:
    import torch

    from satunet.checkpoint import save_checkpoint
    from satunet.models import create_model

    torch.manual_seed(0)
    net = create_model(model, num_classes=num_classes)
    save_checkpoint(path, net, model_name=model, in_channels=3, num_classes=num_classes)
    return path


def run_predict(command: list[str]) -> tuple[float, int, str]:
    """Run one `satunet predict`; (wall seconds, peak RSS bytes of that child, its stdout)."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        raise SystemExit(f"satunet predict failed ({proc.returncode}):\n{text}")
    return wall, usage.ru_maxrss * 1024, text  # ru_maxrss is in KiB on Linux


def variants(backends: str, precisions: str, eager: bool = True) -> list[tuple[str, str]]:
    """(backend, precision) rows: eager torch fp32 first (unless not ``eager``), then every
    other pair asked for."""
    rows = [("torch", "fp32")] if eager else []
    for backend in backends.split(","):
        for precision in precisions.split(","):
            if (backend, precision) not in rows:
                rows.append((backend, precision))
    bad = [r for r in rows if r[0] == "torch" and r[1] == "int8"]
    bad += [r for r in rows if r[0] == "onnx" and r[1] in ("bf16", "fp16")]
    if bad:
        raise SystemExit(f"unsupported: {bad} (int8 runs on onnx/openvino; bf16 on torch/openvino)")
    return rows


def predict_command(args, row: tuple[str, str], model: Path, scene: Path, out: Path) -> list[str]:
    backend, precision = row
    command = [
        sys.executable, "-m", "satunet", "-q", "predict", str(model), str(scene),
        "--out", str(out), "--tile", str(args.tile), "--overlap", str(args.overlap),
        "--device", args.device, "--backend", backend,
        "--precision", "fp32" if precision == "int8" else precision,
    ]  # fmt: skip
    if args.batch_size:
        command += ["--batch-size", str(args.batch_size)]
    if args.profile:
        command.append("--profile")
    return command


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument(
        "--height", type=int, default=None, help="scene height (default: square scenes)"
    )
    parser.add_argument("--model", default="unet_skinny")
    parser.add_argument("--checkpoint", type=Path, help="a trained .pt (default: random weights)")
    parser.add_argument("--num-classes", type=int, default=7)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default="torch", help="torch, onnx, openvino, or a list")
    parser.add_argument("--precision", default="fp32", help="fp32, bf16, fp16, int8, or a list")
    parser.add_argument("--int8", type=Path, help="an int8 .onnx from `satunet quantize`")
    parser.add_argument("--loveda", type=Path, help="LoveDA root: real-image mosaic scenes")
    parser.add_argument("--profile", action="store_true", help="print predict's --profile lines")
    parser.add_argument(
        "--no-eager", action="store_true",
        help="skip the eager torch fp32 row (e.g. int8 rows only on a 20000x20000 scene); "
        "the speed-up column is then empty",
    )  # fmt: skip
    parser.add_argument("--workdir", type=Path, default=None, help="where scenes are written")
    parser.add_argument("--keep", action="store_true", help="keep the generated scenes")
    return parser.parse_args()


def model_files(args, rows: list[tuple[str, str]], work: Path) -> dict[str, Path]:
    """The .pt, and the fp32 / int8 .onnx files the rows need, made once."""
    ckpt = args.checkpoint or make_checkpoint(work / f"{args.model}.pt", args.model,
                                              args.num_classes)  # fmt: skip
    files = {"pt": ckpt}
    if any(b != "torch" and p != "int8" for b, p in rows):
        command = [sys.executable, "-m", "satunet", "-q", "export", str(ckpt), "--onnx",
                   str(work / "model.onnx"), "--exporter", "torchscript"]  # fmt: skip
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        files["onnx"] = work / "model.onnx"
    if any(p == "int8" for _, p in rows):
        files["int8"] = args.int8 or make_int8(ckpt, args.loveda, work / "model.int8.onnx")
    return files


def main() -> int:
    args = parse_args()
    import torch

    rows_wanted = variants(args.backend, args.precision, eager=not args.no_eager)
    if not rows_wanted:
        raise SystemExit("--no-eager leaves no rows: pass a --backend/--precision to measure")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="satunet-scenes-"))
    work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    rows = []
    try:
        models = model_files(args, rows_wanted, work)
        images = loveda_images(args.loveda) if args.loveda else None
        for side in args.sizes:
            height = args.height or side
            scene = work / f"scene_{side}x{height}{'_loveda' if images else ''}.tif"
            if not scene.exists():
                print(f"generating {scene} ...", file=sys.stderr)
                make_scene(scene, side, height, images=images)
            for row in rows_wanted:
                backend, precision = row
                model = models["pt" if backend == "torch" else "int8" if precision == "int8"
                               else "onnx"]  # fmt: skip
                print(f"predicting {side}x{height} {backend} {precision} ...", file=sys.stderr)
                wall, rss, text = run_predict(predict_command(args, row, model, scene, work / "p"))
                if args.profile:
                    print(text.strip(), file=sys.stderr)
                found = re.search(r"([\d.]+) s\s+([\d.]+) Mpx/s, ([\d.]+) km2/min", text)
                if not found:
                    raise SystemExit(f"unexpected satunet predict output:\n{text}")
                seconds, mpx, km2 = (float(v) for v in found.groups())
                rows.append((f"{side}x{height}", f"{backend} {precision}", side * height / 1e6,
                             wall, seconds, mpx, km2, rss))  # fmt: skip
                (work / "p" / scene.name).unlink(missing_ok=True)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    after = os.getloadavg()
    print_table(args, rows, torch, load, after)
    return 0


def print_table(args, rows, torch, load, after) -> None:
    threads = torch.get_num_threads()
    weights = args.checkpoint or "random weights"
    scenes = "mosaics of real LoveDA images" if args.loveda else "generated 3-band uint8 GeoTIFFs"
    print(
        f"\n`satunet predict` on {scenes}: {args.model} ({weights}), tile {args.tile}, overlap "
        f"{args.overlap}, {args.device}, batch {args.batch_size or 'default'}; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {threads} torch "
        f"threads, torch {torch.__version__}; load average {load[0]:.2f} before, "
        f"{after[0]:.2f} after.\n"
    )
    print("| scene (px) | backend | Mpx | predict s | wall s (incl. start-up) | Mpx/s | "
          "vs eager fp32 (wall) | km2/min | peak RSS MB |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    base = {size: wall for size, name, _, wall, *_ in rows if name == "torch fp32"}
    for size, name, mp, wall, seconds, mpx, km2, rss in rows:
        print(
            f"| {size} | {name} | {mp:.1f} | {seconds:.1f} | {wall:.1f} | {mpx:.2f} | "
            f"{f'{base[size] / wall:.2f}x' if size in base else '-'} | {km2:.2f} | "
            f"{rss / 2**20:.0f} |"
        )


if __name__ == "__main__":
    raise SystemExit(main())
