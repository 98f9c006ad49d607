"""The HTTP layer of `satunet serve`: a FastAPI app over a TileService, and the uvicorn runner.

Endpoints (also on the OpenAPI page at /docs):

- ``GET /``: the map page (static files under /static, Leaflet vendored: works offline)
- ``GET /tiles/{scene}/{z}/{x}/{y}.png``: segmentation, a palette PNG (index 255 transparent)
- ``GET /imagery/{scene}/{z}/{x}/{y}.png``: the scene itself, an RGBA PNG
- ``GET /point/{scene}?lon=&lat=&z=``: the class at a point (as segmented at zoom z)
- ``POST /segment?format=png|json``: a PNG/JPEG in the body, its class mask out
- ``GET /health``, ``GET /info``: status, cache and worker counts; model, classes, scenes

Errors are JSON ``{"detail": "..."}`` with a 4xx status (503 when the worker queue is full).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import socket
import threading
import time
import webbrowser
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from satunet import __version__
from satunet.errors import SatunetError
from satunet.infer import predict_array
from satunet.serve.cache import Busy, Job, WorkerPool
from satunet.serve.service import TileService
from satunet.serve.tiles import TileError, empty_png

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
PNG = "image/png"
router = APIRouter()


def service_of(request: Request) -> TileService:
    return request.app.state.service


async def wait_for(request: Request, job: Job, pool: WorkerPool) -> Any:
    """The job's result; gives the job up (and maybe drops it) if the client goes away."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future = loop.create_future()

    def finished(future: Future) -> None:
        loop.call_soon_threadsafe(lambda: done.done() or done.set_result(future))

    job.future.add_done_callback(finished)
    while True:
        try:
            future = await asyncio.wait_for(asyncio.shield(done), timeout=0.1)
            break
        except TimeoutError:
            if await request.is_disconnected():
                pool.release(job)
                raise TileError(499, "client closed the request") from None
    try:
        return future.result()
    except CancelledError:
        raise TileError(503, "the request was dropped; retry") from None


def png_response(png: bytes, start: float, **headers: str) -> Response:
    headers = {f"X-Satunet-{k.title()}": v for k, v in headers.items()}
    headers["X-Satunet-Ms"] = f"{(time.perf_counter() - start) * 1000:.1f}"
    headers["Cache-Control"] = "private, max-age=300"
    return Response(png, media_type=PNG, headers=headers)


@router.get("/tiles/{scene}/{z}/{x}/{y}.png", response_class=Response, tags=["tiles"])
async def segmentation_tile(scene: str, z: int, x: int, y: int, request: Request) -> Response:
    """The segmentation of one XYZ web-mercator tile: classes as a palette PNG."""
    start = time.perf_counter()
    service = service_of(request)
    sc = service.scene(scene)
    sc.check_tile(z, x, y, service.max_zoom(sc))
    source = service.source(sc, z)
    if source in ("model", "overzoom"):
        dz = max(0, z - sc.zooms[1])
        value, job = service.segmentation(sc, z - dz, x >> dz, y >> dz)
        hit = job is None
        if job is not None:
            value = await wait_for(request, job, service.pool)
        png = value[0] if dz == 0 else service.renderer.overzoom_png(value[1], dz, x, y)
        return png_response(png, start, source=source, cache="hit" if hit else "miss")
    if source == "predictions":
        png, hit = await run_in_threadpool(service.cached_io, "pred", sc, z, x, y)
        return png_response(png, start, source=source, cache="hit" if hit else "miss")
    return png_response(
        empty_png(), start, source="none", hint="zoom-in", zoom=f"{sc.zooms[0]}-{sc.zooms[1]}"
    )


@router.get("/imagery/{scene}/{z}/{x}/{y}.png", response_class=Response, tags=["tiles"])
async def imagery_tile(scene: str, z: int, x: int, y: int, request: Request) -> Response:
    """The scene's pixels in one XYZ web-mercator tile (RGBA PNG, transparent outside)."""
    start = time.perf_counter()
    service = service_of(request)
    sc = service.scene(scene)
    sc.check_tile(z, x, y, service.max_zoom(sc))
    png, hit = await run_in_threadpool(service.cached_io, "img", sc, z, x, y)
    return png_response(png, start, source="imagery", cache="hit" if hit else "miss")


@router.get("/point/{scene}", tags=["tiles"])
async def point(
    scene: str,
    request: Request,
    lon: float = Query(..., ge=-180, le=180),
    lat: float = Query(..., ge=-90, le=90),
    z: int = Query(0, ge=0, le=30, description="zoom of the view (clamped to the live zooms)"),
) -> dict[str, Any]:
    """The class at lon/lat, from the live segmentation tile that holds it."""
    service = service_of(request)
    sc = service.scene(scene)
    tz, tx, ty = service.point_tile(sc, lon, lat, z)
    value, job = service.segmentation(sc, tz, tx, ty)
    if job is not None:
        value = await wait_for(request, job, service.pool)
    index = service.renderer.class_at(value[1], lon, lat, tz)
    return {"scene": sc.name, "lon": lon, "lat": lat, "z": tz} | service.class_record(index)


async def read_capped(request: Request, limit: int) -> bytes:
    """The request body, or a 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TileError(413, f"upload of {int(declared)} bytes is over the {limit}-byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TileError(413, f"upload is over the {limit}-byte limit")
        chunks.append(chunk)
    if not size:
        raise TileError(400, "empty body: POST the PNG/JPEG bytes (curl --data-binary @photo.png)")
    return b"".join(chunks)


def decode_upload(body: bytes, max_pixels: int, channels: int) -> np.ndarray:
    """A PNG/JPEG upload as a (C, H, W) uint8 array, checked before it is decoded."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(body))
        if image.format not in ("PNG", "JPEG"):
            raise TileError(415, f"upload is {image.format}: send a PNG or JPEG")
        if image.width * image.height > max_pixels:
            raise TileError(
                413, f"upload is {image.width}x{image.height} px, over the {max_pixels}-pixel limit"
            )
        image = ImageOps.exif_transpose(image)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise TileError(400, f"upload is not a readable PNG/JPEG: {e}") from None
    except Image.DecompressionBombError as e:
        raise TileError(413, str(e)) from None
    if channels == 3:
        array = np.asarray(image.convert("RGB"))
    elif channels == 1:
        array = np.asarray(image.convert("L"))[..., None]
    else:
        raise TileError(400, f"the model takes {channels} bands; photos have 3 (use a GeoTIFF)")
    return np.ascontiguousarray(array.transpose(2, 0, 1))


@router.post("/segment", tags=["segment"], response_class=Response)
async def segment(request: Request, format: Literal["png", "json"] = Query("png")) -> Response:
    """Segment a PNG/JPEG sent as the body: a palette PNG mask, or JSON class ids per row."""
    start = time.perf_counter()
    service = service_of(request)
    limits = service.limits
    body = await read_capped(request, limits.max_upload_bytes)
    image = decode_upload(body, limits.max_upload_pixels, service.info.in_channels)
    key = ("upload", hashlib.sha1(body).hexdigest())
    job = service.pool.submit(
        key, lambda: predict_array(service.predictor, image, tile=512, overlap=64, output="classes")
    )
    classes = await wait_for(request, job, service.pool)
    ms = f"{(time.perf_counter() - start) * 1000:.1f}"
    if format == "json":
        counts = np.bincount(classes.ravel(), minlength=service.info.num_classes)
        names = service.info.class_names()
        return JSONResponse(
            {
                "width": int(classes.shape[1]),
                "height": int(classes.shape[0]),
                "ms": float(ms),
                "counts": {names[i]: int(n) for i, n in enumerate(counts[: len(names)])},
                "classes": classes.tolist(),
            }
        )
    png = service.renderer.palette(classes)
    return Response(png, media_type=PNG, headers={"X-Satunet-Ms": ms})


@router.get("/health", tags=["status"])
async def health(request: Request) -> dict[str, Any]:
    """Liveness, cache and worker counts, and the model's tile latency."""
    return service_of(request).health()


@router.get("/info", tags=["status"])
async def info(request: Request) -> dict[str, Any]:
    """The model, its classes and palette, the backend, and every scene with its bounds."""
    return service_of(request).describe()


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def tile_error(_request: Request, exc: TileError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=exc.status)


async def satunet_error(_request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, Busy):
        return JSONResponse(
            {"detail": f"server busy: {exc}; retry"}, status_code=503, headers={"Retry-After": "1"}
        )
    return JSONResponse({"detail": str(exc)}, status_code=400)


def create_app(service: TileService) -> FastAPI:
    """The FastAPI app serving ``service``'s scenes, tiles and page."""
    app = FastAPI(
        title="satunet serve",
        version=__version__,
        description="Live segmentation of GeoTIFF scenes as XYZ web-mercator tiles.",
    )
    app.state.service = service
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_exception_handler(TileError, tile_error)
    app.add_exception_handler(SatunetError, satunet_error)
    app.add_exception_handler(Busy, satunet_error)
    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise SatunetError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    sock.listen(128)
    return sock


def run_server(
    service: TileService,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    open_browser: bool = False,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve until interrupted; ``on_ready(url)`` is called once the socket listens."""
    import uvicorn

    sock = bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{sock.getsockname()[1]}/"
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: reachable from other machines on the network", host)
    config = uvicorn.Config(
        create_app(service), log_level="warning", access_log=False, timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    if on_ready is not None:
        on_ready(url)
    if open_browser:
        threading.Timer(0.5, webbrowser.open, (url,)).start()
    try:
        server.run(sockets=[sock])
    finally:
        service.close()
        sock.close()
