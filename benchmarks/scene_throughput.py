"""Scene throughput and peak memory of `satunet predict` on generated GeoTIFFs (4k, 8k, 16k).

Each scene is predicted by a fresh `satunet predict` subprocess, and its peak resident memory
is that child's ru_maxrss (os.wait4 returns the rusage of exactly that child; the RUSAGE_CHILDREN
total of resource.getrusage would carry the largest earlier child over to the next row). If
memory is flat in the scene height, peak RSS stays about the same from 4k to 16k while the
pixels grow 16x. Prints a Markdown table for the README.

    python benchmarks/scene_throughput.py                       # 4k, 8k, 16k; unet_skinny, CPU
    python benchmarks/scene_throughput.py --sizes 4096 --precision bf16
    python benchmarks/scene_throughput.py --device cuda --batch-size 8

The weights are random (throughput and memory do not depend on them). Scenes are 3-band uint8,
EPSG:32633 at 0.5 m, tiled 256x256, uncompressed; they are written to --workdir (a temporary
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


def make_scene(path: Path, width: int, height: int, seed: int = 0) -> Path:
    """A width x height 3-band uint8 GeoTIFF written in row blocks (never whole in memory)."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    rng = np.random.default_rng(seed)
    profile = {
        "driver": "GTiff", "height": height, "width": width, "count": 3, "dtype": "uint8",
        "crs": "EPSG:32633", "transform": from_origin(400000.0, 5600000.0, 0.5, 0.5),
        "tiled": True, "blockxsize": 256, "blockysize": 256, "BIGTIFF": "IF_SAFER",
    }  # fmt: skip
    tmp = path.with_name(f".{path.name}.part")
    with rasterio.open(tmp, "w", **profile) as dst:
        for row in range(0, height, 1024):
            rows = min(1024, height - row)
            block = rng.integers(0, 256, (3, rows, width), dtype=np.uint8)
            dst.write(block, window=Window(0, row, width, rows))
    os.replace(tmp, path)
    return path


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument(
        "--height", type=int, default=None, help="scene height (default: square scenes)"
    )
    parser.add_argument("--model", default="unet_skinny")
    parser.add_argument("--num-classes", type=int, default=7)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--workdir", type=Path, default=None, help="where scenes are written")
    parser.add_argument("--keep", action="store_true", help="keep the generated scenes")
    args = parser.parse_args()

    import torch

    work = args.workdir or Path(tempfile.mkdtemp(prefix="satunet-scenes-"))
    work.mkdir(parents=True, exist_ok=True)
    ckpt = make_checkpoint(work / f"{args.model}.pt", args.model, args.num_classes)
    rows = []
    try:
        for side in args.sizes:
            height = args.height or side
            scene = work / f"scene_{side}x{height}.tif"
            if not scene.exists():
                print(f"generating {scene} ...", file=sys.stderr)
                make_scene(scene, side, height)
            command = [
                sys.executable, "-m", "satunet", "-q", "predict", str(ckpt), str(scene),
                "--out", str(work / "pred"), "--tile", str(args.tile),
                "--overlap", str(args.overlap), "--device", args.device,
                "--precision", args.precision,
            ]  # fmt: skip
            if args.batch_size:
                command += ["--batch-size", str(args.batch_size)]
            print(f"predicting {side}x{height} ...", file=sys.stderr)
            wall, rss, text = run_predict(command)
            found = re.search(r"([\d.]+) s\s+([\d.]+) Mpx/s, ([\d.]+) km2/min", text)
            if not found:
                raise SystemExit(f"unexpected satunet predict output:\n{text}")
            seconds, mpx, km2 = (float(v) for v in found.groups())
            rows.append((f"{side}x{height}", side * height / 1e6, wall, seconds, mpx, km2, rss))
            (work / "pred" / scene.name).unlink(missing_ok=True)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    threads = torch.get_num_threads()
    print(
        f"\n`satunet predict` on generated 3-band uint8 GeoTIFFs: {args.model} "
        f"({args.num_classes} classes, random weights), tile {args.tile}, overlap "
        f"{args.overlap}, {args.device} {args.precision}, batch "
        f"{args.batch_size or 'default'}; {platform.processor() or platform.machine()}, "
        f"{threads} torch threads, torch {torch.__version__}.\n"
    )
    print(
        "| scene (px) | Mpx | predict s | wall s (incl. start-up) | Mpx/s | km2/min | peak RSS MB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for size, mp, wall, seconds, mpx, km2, rss in rows:
        print(
            f"| {size} | {mp:.1f} | {seconds:.1f} | {wall:.1f} | {mpx:.2f} | {km2:.2f} "
            f"| {rss / 2**20:.0f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
