"""`satunet serve`: zoom maths, the bounded cache and worker pool, and the HTTP API.

The API tests use FastAPI's TestClient on a tiny UNet and a generated GeoTIFF with a real CRS
(EPSG:32650, near Nanjing, 0.3 m pixels like LoveDA); one test starts the real command on a free
127.0.0.1 port. Nothing here reaches beyond 127.0.0.1.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'satunet[serve]'")
pytest.importorskip("rio_tiler", reason="needs the serve extra: pip install 'satunet[serve]'")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")

from fastapi.testclient import TestClient  # noqa: E402

from satunet.serve import (  # noqa: E402
    Busy,
    Limits,
    TileCache,
    WorkerPool,
    build_service,
    create_app,
    ground_resolution,
    segment_zooms,
)
from satunet.serve.tiles import lonlat_to_tile  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["background", "building", "road", "water", "barren", "forest", "agriculture"]
PALETTE = [
    [255, 255, 255],
    [255, 0, 0],
    [255, 255, 0],
    [0, 0, 255],
    [159, 129, 183],
    [0, 255, 0],
    [255, 195, 128],
]
LON, LAT = 118.80, 32.05  # Nanjing, where LoveDA was flown


def make_checkpoint(path: Path, resolution: float | None = 0.3) -> Path:
    """A tiny 2-level UNet checkpoint (a few hundred parameters) with LoveDA's classes."""
    import torch

    from satunet.checkpoint import save_checkpoint
    from satunet.models import Level, UNet

    torch.manual_seed(0)
    model = UNet(levels=(Level(4), Level(8)), in_channels=3, num_classes=len(CLASSES))
    extra = {"resolution": resolution} if resolution else {}
    save_checkpoint(
        path,
        model,
        model_name="tiny.toml:tiny",
        model_options={},
        in_channels=3,
        num_classes=len(CLASSES),
        classes=CLASSES,
        palette=PALETTE,
        **extra,
    )
    return path


def make_scene(path: Path, image: np.ndarray | None = None, resolution: float = 0.3) -> Path:
    """A tiled GeoTIFF in UTM 50N (EPSG:32650) with overviews; random pixels unless ``image``."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.transform import from_origin
    from rasterio.warp import transform

    if image is None:
        rng = np.random.default_rng(0)
        image = rng.integers(0, 256, (3, 1024, 1024), dtype=np.uint8)
    (x,), (y,) = transform("EPSG:4326", "EPSG:32650", [LON], [LAT])
    profile = dict(
        driver="GTiff",
        height=image.shape[1],
        width=image.shape[2],
        count=image.shape[0],
        dtype=str(image.dtype),
        crs="EPSG:32650",
        tiled=True,
        blockxsize=256,
        blockysize=256,
        transform=from_origin(round(x), round(y), resolution, resolution),
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(image)
        dst.build_overviews([2, 4], Resampling.average)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve")
    scene = make_scene(root / "scene.tif")
    predictions = root / "pred"
    predictions.mkdir()
    mask = np.full((1, 1024, 1024), 3, np.uint8)  # "water" everywhere, as `satunet predict` writes
    make_scene(predictions / "scene.tif", mask)
    return {
        "checkpoint": make_checkpoint(root / "tiny.pt"),
        "scene": scene,
        "predictions": predictions,
        "root": root,
    }


@pytest.fixture(scope="module")
def service(files: dict[str, Path]):
    limits = Limits(max_upload_bytes=200_000, max_upload_pixels=300 * 300, max_pending=8)
    svc = build_service(
        files["checkpoint"],
        [files["scene"]],
        device="cpu",
        cache_mb=8,
        predictions=files["predictions"],
        limits=limits,
    )
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def client(service) -> TestClient:
    with TestClient(create_app(service)) as c:
        yield c


def centre_tile(service, z: int) -> tuple[int, int]:
    lon, lat = service.scenes["scene"].center
    return lonlat_to_tile(lon, lat, z)


def png(response) -> Image.Image:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(response.content))


# ----------------------------------------------------------------------------- zoom maths


def test_ground_resolution_and_live_zooms() -> None:
    assert ground_resolution(0, 0) == pytest.approx(156543.034, rel=1e-6)
    assert ground_resolution(19, 60) == pytest.approx(156543.034 / 2**19 / 2, rel=1e-6)
    # 0.3 m at 32 N: z18 is 0.51 m/px, z19 0.25, z20 0.13 -> within 2x: 18 and 19.
    assert segment_zooms(0.3, 32.05) == (18, 19)
    lo, hi = segment_zooms(10.0, 0.0)  # Sentinel-2
    assert all(5.0 <= ground_resolution(z, 0) <= 20.0 for z in range(lo, hi + 1))


# ----------------------------------------------------------------------------- cache and pool


def test_cache_is_an_lru_bounded_in_bytes() -> None:
    cache = TileCache(max_bytes=1000)
    for i in range(5):
        cache.put(i, b"x" * 300)
    assert cache.bytes <= 1000 and len(cache) == 3 and cache.evictions == 2
    assert cache.get(0) is None and cache.get(2) is not None
    cache.put(5, b"y" * 300)  # evicts 3, the least recently used (2 was just read)
    assert cache.get(3) is None and cache.get(2) is not None
    cache.put("huge", b"z" * 2000)  # over the whole budget: not cached, nothing evicted
    assert cache.get("huge") is None and len(cache) == 3
    stats = cache.stats()
    assert stats["hits"] == 2 and stats["misses"] == 3 and stats["hit_rate"] == pytest.approx(0.4)


def test_pool_shares_identical_jobs_runs_newest_first_and_stays_bounded() -> None:
    gate, order, runs = threading.Event(), [], []
    pool = WorkerPool(workers=1, max_pending=2)
    try:
        blocker = pool.submit("block", lambda: gate.wait(5))
        time.sleep(0.05)  # the worker is now busy with "block"

        def job(name: str):
            return lambda: (runs.append(name), order.append(name), name)[-1]

        a1 = pool.submit("a", job("a"))
        a2 = pool.submit("a", job("a-again"))  # in flight: shared, never run twice
        b = pool.submit("b", job("b"))
        c = pool.submit("c", job("c"))  # queue full: the oldest queued ("a") is dropped
        assert a1 is a2 and a1.waiters == 2
        with pytest.raises(Busy):
            a1.future.result(1)
        pool.release(b)  # its only waiter left (a view that moved): dropped unrun
        gate.set()
        assert blocker.future.result(5) and c.future.result(5) == "c"
        assert b.future.cancelled() and runs == ["c"]
        stats = pool.stats()
        assert stats["shared"] == 1 and stats["dropped_busy"] == 1 and stats["dropped_stale"] == 1
    finally:
        gate.set()
        pool.close()


def test_pool_runs_the_newest_job_first() -> None:
    gate, order = threading.Event(), []
    pool = WorkerPool(workers=1, max_pending=8)
    try:
        pool.submit("block", lambda: gate.wait(5))
        time.sleep(0.05)
        jobs = [pool.submit(i, lambda i=i: order.append(i)) for i in range(3)]
        gate.set()
        for j in jobs:
            j.future.result(5)
        assert order == [2, 1, 0]
    finally:
        gate.set()
        pool.close()


# ----------------------------------------------------------------------------- the API


def test_info_and_health(client: TestClient) -> None:
    info = client.get("/info").json()
    assert info["model"] == "tiny.toml:tiny" and info["backend"] == "torch"
    assert [c["name"] for c in info["classes"]] == CLASSES
    assert info["palette"] == PALETTE and info["resolution_m"] == 0.3
    (scene,) = info["scenes"]
    assert scene["name"] == "scene" and scene["crs"] == "EPSG:32650"
    w, s, e, n = scene["bounds"]
    assert w < LON < e and s < LAT < n and scene["segment_zooms"] == [18, 19]
    health = client.get("/health").json()
    assert health["status"] == "ok" and "cache" in health and health["pool"]["workers"] == 1


def test_segmentation_tile_is_a_cached_palette_png(client: TestClient, service) -> None:
    x, y = centre_tile(service, 19)
    first = client.get(f"/tiles/scene/19/{x}/{y}.png")
    image = png(first)
    assert image.mode == "P" and image.size == (256, 256)
    assert set(np.unique(np.asarray(image))) <= set(range(len(CLASSES)))
    assert first.headers["x-satunet-source"] == "model"
    assert list(image.getpalette()[:6]) == PALETTE[0] + PALETTE[1]
    again = client.get(f"/tiles/scene/19/{x}/{y}.png")
    assert again.headers["x-satunet-cache"] == "hit" and again.content == first.content


def test_tiles_see_enough_context_for_seamless_borders(service) -> None:
    """A tile's logits do not change when the context margin grows: borders have no seams."""
    from satunet.serve.tiles import TileRenderer

    scene = service.scenes["scene"]
    x, y = centre_tile(service, 19)
    seen = []

    class Recorder:
        info = service.predictor.info

        def __call__(self, batch):
            out = service.predictor(batch)
            seen.append(out)
            return out

    for margin in (32, 64):
        renderer = TileRenderer(Recorder(), margin=margin)
        renderer.classes(scene, 19, x, y)
    small, large = seen
    core = lambda a, m: a[0, :, m : m + 256, m : m + 256]  # noqa: E731
    np.testing.assert_allclose(core(small, 32), core(large, 64), atol=1e-4)


def test_finer_zooms_are_the_finest_live_tile_enlarged(client: TestClient, service) -> None:
    x, y = centre_tile(service, 21)
    fine = np.asarray(png(client.get(f"/tiles/scene/21/{x}/{y}.png")))
    parent = np.asarray(png(client.get(f"/tiles/scene/19/{x >> 2}/{y >> 2}.png")))
    r, c = (y % 4) * 64, (x % 4) * 64
    np.testing.assert_array_equal(fine[::4, ::4], parent[r : r + 64, c : c + 64])


def test_coarse_zooms_serve_predictions_or_a_hint(client: TestClient, service, files) -> None:
    x, y = centre_tile(service, 16)
    r = client.get(f"/tiles/scene/16/{x}/{y}.png")
    classes = np.asarray(png(r))
    assert r.headers["x-satunet-source"] == "predictions"
    assert set(np.unique(classes)) <= {3, 255} and (classes == 3).any()
    plain = build_service(files["checkpoint"], [files["scene"]], cache_mb=1)
    try:
        with TestClient(create_app(plain)) as c:
            r = c.get(f"/tiles/scene/16/{x}/{y}.png")
        assert r.headers["x-satunet-hint"] == "zoom-in" and r.headers["x-satunet-zoom"] == "18-19"
        assert (np.asarray(png(r)) == 255).all()  # fully transparent
    finally:
        plain.close()


def test_imagery_tile_is_rgba_and_transparent_outside(client: TestClient, service) -> None:
    x, y = centre_tile(service, 17)
    image = png(client.get(f"/imagery/scene/17/{x}/{y}.png"))
    assert image.mode == "RGBA" and image.size == (256, 256)
    alpha = np.asarray(image)[..., 3]
    assert (alpha == 255).any() and (alpha == 0).any()  # the scene is smaller than a z17 tile


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/tiles/nope/19/1/1.png", 404),  # only scenes named on the command line
        ("/tiles/..%2F..%2Fetc%2Fpasswd/19/1/1.png", 404),
        ("/tiles/scene/19/0/0.png", 404),  # outside the scene
        ("/tiles/scene/30/0/0.png", 400),  # zoom out of range
        ("/tiles/scene/3/9/0.png", 400),  # x past the grid
        ("/tiles/scene/19/-1/0.png", 400),
        ("/tiles/scene/19/a/0.png", 422),
        ("/imagery/scene/40/0/0.png", 400),
        ("/point/scene?lon=0&lat=0", 404),
        ("/point/scene?lon=500&lat=0", 422),
        ("/static/../app.py", 404),
    ],
)
def test_bad_requests_get_json_errors(client: TestClient, path: str, status: int) -> None:
    r = client.get(path)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json" and "detail" in r.json()


def test_point_reads_the_class_under_a_click(client: TestClient, service) -> None:
    lon, lat = service.scenes["scene"].center
    body = client.get(f"/point/scene?lon={lon}&lat={lat}&z=12").json()
    assert body["z"] == 18  # clamped to the live zooms
    assert body["name"] == CLASSES[body["class"]] and body["colour"] == PALETTE[body["class"]]


def encode(image: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, fmt)
    return buffer.getvalue()


def test_segment_an_uploaded_photo(client: TestClient) -> None:
    photo = np.random.default_rng(1).integers(0, 256, (90, 130, 3), dtype=np.uint8)
    r = client.post("/segment", content=encode(photo, "PNG"), headers={"content-type": "image/png"})
    mask = png(r)
    assert mask.mode == "P" and mask.size == (130, 90)
    r = client.post("/segment?format=json", content=encode(photo, "JPEG"))
    body = r.json()
    assert (body["width"], body["height"]) == (130, 90)
    assert sum(body["counts"].values()) == 90 * 130 and len(body["classes"]) == 90


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"", 400),
        (b"\x89PNG\r\n\x1a\n not really", 400),
        (encode(np.zeros((8, 8, 3), np.uint8), "GIF"), 415),
        (encode(np.zeros((400, 400, 3), np.uint8), "PNG"), 413),  # over 300x300 pixels
        (b"\0" * 300_000, 413),  # over 200 kB
    ],
)
def test_bad_uploads_get_json_errors(client: TestClient, body: bytes, status: int) -> None:
    r = client.post("/segment", content=body)
    assert r.status_code == status, r.text
    assert "detail" in r.json()


def test_page_and_map_library_are_served_locally(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "/static/leaflet/leaflet.js" in page.text
    for asset in (
        "leaflet/leaflet.js",
        "leaflet/leaflet.css",
        "app.js",
        "style.css",
        "leaflet/images/layers.png",
        "LICENSE.md",
    ):
        assert client.get(f"/static/{asset}").status_code == 200, asset
    assert "BSD 2-Clause" in client.get("/static/LICENSE.md").text
    static = REPO / "src" / "satunet" / "serve" / "static"
    ours = "".join((static / f).read_text() for f in ("index.html", "app.js", "style.css"))
    loads = r"<(script|link|img)[^>]+(src|href)=[\"']https?://|url\(\s*[\"']?https?://|fetch\([\"'`]https?://"
    assert not re.search(loads, ours), "no CDN: everything the page loads is local"
    assert client.get("/openapi.json").json()["paths"].keys() >= {
        "/tiles/{scene}/{z}/{x}/{y}.png",
        "/imagery/{scene}/{z}/{x}/{y}.png",
        "/segment",
        "/health",
        "/info",
    }


# ----------------------------------------------------------------------------- the command


def test_import_satunet_stays_light() -> None:
    code = (
        "import sys, satunet, satunet.cli; satunet.cli.build_parser(); "
        "heavy = ('fastapi', 'uvicorn', 'rio_tiler'); "
        "print(json.dumps(sorted(m for m in heavy if m in sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", "import json; " + code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(out.stdout) == []


def test_missing_extra_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from satunet.cli import build_parser
    from satunet.errors import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "fastapi" else real(n, *a)
    )
    args = build_parser().parse_args(["serve", "m.pt", "s.tif"])
    assert args.host == "127.0.0.1" and args.port == 8000 and args.cache_mb == 256
    with pytest.raises(ConfigError, match=r"pip install 'satunet\[serve\]'"):
        args.run(args)


def test_cli_errors_on_a_missing_scene(files, capsys: pytest.CaptureFixture[str]) -> None:
    from satunet.cli import main

    assert main(["serve", str(files["checkpoint"]), str(files["root"] / "nope.tif")]) == 2
    assert "nope.tif does not exist" in capsys.readouterr().err


def start_server(*args: str, timeout: float = 60) -> tuple[subprocess.Popen, str]:
    """`satunet serve ARGS --port 0` in a subprocess; returns it and the URL it printed."""
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "satunet", "serve", *args, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    found: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            match = re.search(r"serving on (http://127\.0\.0\.1:\d+/)", line)
            if match:
                found.append(match.group(1))

    threading.Thread(target=read, daemon=True).start()
    while not found and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if not found:
        proc.kill()
        raise AssertionError("satunet serve did not start:\n" + "".join(lines))
    return proc, found[0]


def stop_server(proc: subprocess.Popen) -> int:
    """Ctrl+C: uvicorn shuts down gracefully and the command exits 130 (interrupted)."""
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(5)


def test_the_command_serves_on_localhost(files) -> None:
    proc, url = start_server(str(files["checkpoint"]), str(files["scene"]), "--cache-mb", "4")
    try:
        with urllib.request.urlopen(url + "health", timeout=20) as r:
            assert json.load(r)["status"] == "ok"
        with urllib.request.urlopen(url + "info", timeout=20) as r:
            (scene,) = json.load(r)["scenes"]
        assert scene["name"] == "scene"
    finally:
        assert stop_server(proc) in (0, 130)
