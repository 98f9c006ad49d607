"""Bounded local load test of `satunet serve`: N clients panning over a scene on 127.0.0.1.

Starts `satunet serve` in a subprocess on a free 127.0.0.1 port, then

1. **cold tiles**: one client fetches ``--cold`` distinct, never-seen live-zoom tiles one after
   another: the latency of an uncached 256x256 segmentation tile (read + model + PNG);
2. **load**: ``--clients`` threads pan a 4x3-tile viewport over the scene's live zooms (one tile
   step in a random direction per frame, sometimes a zoom step), fetching every tile of the view,
   until ``--requests`` requests are done in total;

and reports p50/p95 latency, tiles/s, cache hit rate, the server's peak RSS (sampled from /proc)
and its RSS after warm-up vs at the end (flat = the cache is bounded), and every error. Nothing
leaves 127.0.0.1, the run is bounded by the request count and ``--timeout``.

    python benchmarks/serve_load.py                          # unet_fast, random weights, fp32
    python benchmarks/serve_load.py --precision bf16 --clients 4 --requests 400
    python benchmarks/serve_load.py --checkpoint runs/fast/best.pt --scene scene.tif

Without --scene, the 20 real LoveDA tiles under ../shared/data/loveda are laid out as a 5x4
mosaic (5120 x 4096 px at 0.3 m, EPSG:32650) in a temporary folder (random pixels where they
are absent). Latency does not depend on the weights, so a random-weight model is fine.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

LOVEDA = Path(__file__).resolve().parents[2] / "shared" / "data" / "loveda" / "Train" / "Rural"
LON, LAT = 118.80, 32.05


def make_mosaic(path: Path, cols: int = 5, rows: int = 4) -> Path:
    """A cols x rows mosaic of 1024-px LoveDA tiles as a tiled GeoTIFF with overviews."""
    import rasterio
    from PIL import Image
    from rasterio.enums import Resampling
    from rasterio.transform import from_origin
    from rasterio.warp import transform

    (x,), (y,) = transform("EPSG:4326", "EPSG:32650", [LON], [LAT])
    profile = dict(
        driver="GTiff",
        width=cols * 1024,
        height=rows * 1024,
        count=3,
        dtype="uint8",
        crs="EPSG:32650",
        transform=from_origin(round(x), round(y), 0.3, 0.3),
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
    )
    rng = np.random.default_rng(0)
    with rasterio.open(path, "w", **profile) as dst:
        for i in range(cols * rows):
            png = LOVEDA / "images_png" / f"{i}.png"
            tile = (
                np.asarray(Image.open(png).convert("RGB")).transpose(2, 0, 1)
                if png.is_file()
                else rng.integers(0, 256, (3, 1024, 1024), dtype=np.uint8)
            )
            window = rasterio.windows.Window((i % cols) * 1024, (i // cols) * 1024, 1024, 1024)
            dst.write(tile, window=window)
        dst.build_overviews([2, 4, 8, 16], Resampling.average)
    return path


def make_checkpoint(path: Path, model: str) -> Path:
    import torch

    from satunet.checkpoint import save_checkpoint
    from satunet.data.loveda import OFFICIAL_CLASSES, OFFICIAL_PALETTE
    from satunet.models import create_model

    torch.manual_seed(0)
    net = create_model(model, num_classes=len(OFFICIAL_CLASSES))
    save_checkpoint(
        path,
        net,
        model_name=model,
        model_options={},
        in_channels=3,
        num_classes=len(OFFICIAL_CLASSES),
        classes=list(OFFICIAL_CLASSES),
        palette=[list(c) for c in OFFICIAL_PALETTE],
        resolution=0.3,
    )
    return path


def start(args: argparse.Namespace, checkpoint: Path, scene: Path) -> tuple[subprocess.Popen, int]:
    cmd = [
        sys.executable,
        "-m",
        "satunet",
        "-q",
        "serve",
        str(checkpoint),
        str(scene),
        "--port",
        "0",
        "--backend",
        args.backend,
        "--precision",
        args.precision,
        "--cache-mb",
        str(args.cache_mb),
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ | {"PYTHONUNBUFFERED": "1"},
    )
    for line in proc.stdout:
        match = re.search(r"serving on http://127\.0\.0\.1:(\d+)/", line)
        if match:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, int(match.group(1))
    raise SystemExit(f"satunet serve did not start (exit {proc.wait()})")


def get(conn: http.client.HTTPConnection, path: str) -> tuple[int, float, dict[str, str]]:
    start = time.perf_counter()
    conn.request("GET", path)
    response = conn.getresponse()
    response.read()
    ms = (time.perf_counter() - start) * 1000
    return response.status, ms, {k.lower(): v for k, v in response.getheaders()}


def tile_of(lon: float, lat: float, z: int) -> tuple[int, int]:
    n = 2**z
    s = math.sin(math.radians(lat))
    return int((lon + 180) / 360 * n), int((0.5 - math.log((1 + s) / (1 - s)) / (4 * math.pi)) * n)


def tile_ranges(scene: dict) -> dict[int, tuple[int, int, int, int]]:
    """Per live zoom: x0, y0, x1, y1 of the tiles over the scene."""
    w, s, e, n = scene["bounds"]
    lo, hi = scene["segment_zooms"]
    return {z: (*tile_of(w, n, z), *tile_of(e, s, z)) for z in range(lo, hi + 1)}


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rows: list[tuple[float, int, str, str]] = []  # ms, status, source, cache
        self.errors: list[str] = []

    def add(self, status: int, ms: float, headers: dict[str, str], path: str) -> None:
        with self.lock:
            self.rows.append(
                (
                    ms,
                    status,
                    headers.get("x-satunet-source", ""),
                    headers.get("x-satunet-cache", ""),
                )
            )
            if status != 200:
                self.errors.append(f"{status} {path}")


def client(port: int, scene: dict, budget: list[int], rec: Recorder, seed: int) -> None:
    rng = random.Random(seed)
    ranges = tile_ranges(scene)
    z = rng.choice(sorted(ranges))
    x0, y0, x1, y1 = ranges[z]
    cx, cy = rng.randint(x0, x1), rng.randint(y0, y1)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    while True:
        for dx in range(-2, 2):
            for dy in range(-1, 2):
                with rec.lock:
                    if budget[0] <= 0:
                        conn.close()
                        return
                    budget[0] -= 1
                x, y = min(max(cx + dx, x0), x1), min(max(cy + dy, y0), y1)
                path = f"/tiles/{scene['name']}/{z}/{x}/{y}.png"
                try:
                    rec.add(*get(conn, path), path)
                except (OSError, http.client.HTTPException) as e:
                    with rec.lock:
                        rec.errors.append(f"{type(e).__name__} {path}")
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        if rng.random() < 0.15 and len(ranges) > 1:  # zoom in or out around the view centre
            nz = rng.choice([k for k in ranges if k != z])
            cx, cy = (
                (cx << (nz - z), cy << (nz - z)) if nz > z else (cx >> (z - nz), cy >> (z - nz))
            )
            z = nz
            x0, y0, x1, y1 = ranges[z]
        else:
            cx = min(max(cx + rng.choice((-1, 0, 1)), x0), x1)
            cy = min(max(cy + rng.choice((-1, 0, 1)), y0), y1)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def cold(port: int, scene: dict, n: int) -> list[float]:
    """Latency of ``n`` distinct, uncached tiles fetched one at a time (finest live zoom)."""
    z = scene["segment_zooms"][1]
    x0, y0, x1, y1 = tile_ranges(scene)[z]
    tiles = [(x, y) for y in range(y0 + 1, y1) for x in range(x0 + 1, x1)][::3][:n]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    out = []
    for x, y in tiles:
        status, ms, headers = get(conn, f"/tiles/{scene['name']}/{z}/{x}/{y}.png")
        if status == 200 and headers.get("x-satunet-cache") == "miss":
            out.append(ms)
    conn.close()
    return out


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def run(args: argparse.Namespace, tmp: Path) -> dict:
    checkpoint = (
        Path(args.checkpoint) if args.checkpoint else make_checkpoint(tmp / "model.pt", args.model)
    )
    scene_path = Path(args.scene) if args.scene else make_mosaic(tmp / "loveda_mosaic.tif")
    load_before = uptime()
    proc, port = start(args, checkpoint, scene_path)
    peak, samples, stop = [0.0], [], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                value = rss_mb(proc.pid)
            except (OSError, StopIteration):
                return
            peak[0] = max(peak[0], value)
            samples.append(value)
            time.sleep(0.2)

    threading.Thread(target=sample, daemon=True).start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/info")
        info = json.loads(conn.getresponse().read())
        scene = info["scenes"][0]
        cold_ms = cold(port, scene, args.cold)
        rec, budget = Recorder(), [args.requests]
        threads = [
            threading.Thread(target=client, args=(port, scene, budget, rec, i))
            for i in range(args.clients)
        ]
        start_t = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(args.timeout)
        seconds = time.perf_counter() - start_t
        rss_warm = samples[len(samples) // 4] if samples else float("nan")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)  # the old one idled out
        conn.request("GET", "/health")
        health = json.loads(conn.getresponse().read())
    finally:
        stop.set()
        proc.terminate()
        proc.wait(20)
    ms = [r[0] for r in rec.rows]
    return {
        "model": info["model"],
        "backend": info["backend"],
        "precision": info["precision"],
        "device": info["device"],
        "scene": scene["name"],
        "scene_px": scene["size"],
        "live_zooms": scene["segment_zooms"],
        "clients": args.clients,
        "requests": len(rec.rows),
        "cold_tiles": len(cold_ms),
        "cold_p50_ms": pct(cold_ms, 50),
        "cold_p95_ms": pct(cold_ms, 95),
        "p50_ms": pct(ms, 50),
        "p95_ms": pct(ms, 95),
        "tiles_per_s": len(ms) / seconds,
        "hit_rate": sum(r[3] == "hit" for r in rec.rows) / max(1, len(rec.rows)),
        "server": health["cache"]
        | {"model_latency": health["model_latency"], "pool": health["pool"]},
        "peak_rss_mb": peak[0],
        "rss_after_warmup_mb": rss_warm,
        "rss_end_mb": samples[-1] if samples else None,
        "errors": rec.errors,
        "seconds": seconds,
        "uptime_before": load_before,
        "uptime_after": uptime(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="a .pt checkpoint (default: random-weight --model)")
    p.add_argument(
        "--model", default="unet_fast", help="model of the random checkpoint (unet_fast)"
    )
    p.add_argument("--scene", help="GeoTIFF to serve (default: a LoveDA mosaic)")
    p.add_argument("--backend", default="torch", choices=("torch", "onnx", "openvino"))
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--cold", type=int, default=30, help="uncached tiles timed one at a time (30)")
    p.add_argument("--cache-mb", type=float, default=64)
    p.add_argument("--timeout", type=float, default=600, help="give up on clients after S seconds")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        r = run(args, Path(tmp))
    if args.json:
        print(json.dumps(r, indent=2))
    print(
        "| model | backend | precision | cold p50 / p95 ms | load p50 / p95 ms | tiles/s "
        "| hit rate | peak RSS MB (warm -> end) | errors |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
        f"| {r['model']} | {r['backend']} | {r['precision']} "
        f"| {r['cold_p50_ms']:.0f} / {r['cold_p95_ms']:.0f} "
        f"| {r['p50_ms']:.0f} / {r['p95_ms']:.0f} | {r['tiles_per_s']:.1f} | {r['hit_rate']:.0%} "
        f"| {r['peak_rss_mb']:.0f} ({r['rss_after_warmup_mb']:.0f} -> {r['rss_end_mb']:.0f}) "
        f"| {len(r['errors'])} |"
    )
    print(
        f"{r['clients']} clients, {r['requests']} requests in {r['seconds']:.1f} s; "
        f"{r['cold_tiles']} cold tiles; server model p95 "
        f"{r['server']['model_latency']['p95_ms']} ms"
    )
    print(f"machine: {r['machine']}\nbefore: {r['uptime_before']}\nafter:  {r['uptime_after']}")
    for e in r["errors"][:10]:
        print("error:", e)
    return 1 if r["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
