"""`satunet serve`: a local web map of GeoTIFF scenes with their live segmentation."""

from __future__ import annotations

import argparse
import importlib.util

from satunet.cli._flags import add_device, add_precision, positive_int

EXAMPLE = """examples:
  satunet serve runs/fast/best.pt scene.tif                 # then open http://127.0.0.1:8000/
  satunet serve best.pt a.tif b.tif --port 8080 --open      # a scene picker, opens a browser
  satunet serve best.pt scene.tif --backend onnx            # best.onnx from `satunet export`
  satunet serve best.pt big.tif --predictions pred/         # coarse zooms from `satunet predict`
  satunet serve best.pt scene.tif --resolution 0.3 --cache-mb 512

Tiles are segmented live at the zooms whose ground resolution is within 2x of the model's
training resolution (from the checkpoint, else --resolution, else each scene's own pixel size).
API: GET /tiles/SCENE/Z/X/Y.png, GET /imagery/SCENE/Z/X/Y.png, POST /segment, GET /health,
GET /info; OpenAPI at /docs. Binds 127.0.0.1 unless --host says otherwise.
"""

MISSING = "satunet serve needs FastAPI, uvicorn and rio-tiler: pip install 'satunet[serve]'"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="web map of scenes with live segmentation (FastAPI + Leaflet, local)",
        description="Start a local web server: the scenes as a map layer, their segmentation "
        "computed on demand per web-mercator tile (with context margins, cached, on a bounded "
        "worker pool) as a second layer, a legend, click readout and a PNG/JPEG drop zone.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", metavar="MODEL", help="satunet .pt checkpoint or .onnx")
    p.add_argument("scenes", metavar="SCENE", nargs="+", help="GeoTIFF/COG files with a CRS")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: a free one)")
    p.add_argument("--backend", choices=("torch", "onnx", "openvino"), default="torch")
    add_device(p)
    add_precision(p)
    p.add_argument(
        "--cache-mb",
        type=float,
        default=256,
        metavar="MB",
        help="tile cache budget in MB (default 256)",
    )
    p.add_argument("--open", action="store_true", help="open the page in a web browser")
    p.add_argument(
        "--predictions",
        metavar="DIR",
        help="`satunet predict` output shown at zooms too coarse to segment live",
    )
    p.add_argument(
        "--resolution",
        type=float,
        metavar="M",
        help="the model's training ground resolution in m/px (default: checkpoint)",
    )
    p.add_argument(
        "--margin",
        type=int,
        default=32,
        metavar="PX",
        help="context pixels read around each tile (default 32)",
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        metavar="N",
        help="model worker threads (default 1 on CPU, 2 on CUDA)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from satunet.errors import ConfigError

    missing = [
        m for m in ("fastapi", "uvicorn", "rio_tiler") if importlib.util.find_spec(m) is None
    ]
    if missing:
        raise ConfigError(f"{MISSING} (missing: {', '.join(missing)})")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be 0..65535, got {args.port}")
    import logging

    from satunet.runtime import configure_cpu_threads
    from satunet.serve import build_service, run_server

    logging.getLogger("numexpr").setLevel(logging.WARNING)  # rio-tiler's import chatter
    configure_cpu_threads()
    service = build_service(
        args.checkpoint,
        args.scenes,
        backend=args.backend,
        device=args.device,
        precision=args.precision,
        cache_mb=args.cache_mb,
        predictions=args.predictions,
        resolution=args.resolution,
        margin=args.margin,
        workers=args.workers,
    )

    def ready(url: str) -> None:
        names = ", ".join(service.scenes)
        print(
            f"satunet serve: {service.info.name} on {service.runtime['device']} "
            f"({args.backend}, {args.precision}); scenes: {names}"
        )
        print(f"serving on {url}  (API docs: {url}docs; Ctrl+C stops)", flush=True)

    run_server(service, args.host, args.port, open_browser=args.open, on_ready=ready)
    return 0
