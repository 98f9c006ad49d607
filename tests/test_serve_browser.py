"""`satunet serve` in a real browser: Playwright drives Debian's headless Chromium.

Starts the real command on a GeoTIFF made from a real LoveDA tile (EPSG:32650, 0.3 m, near
Nanjing), opens the page, waits for live segmentation tiles, checks the legend, moves the
opacity slider, turns on the swipe, clicks a pixel and reads its class, segments a photo through
the file picker, and saves a screenshot under the test's tmp dir.

Playwright's own browser download is not reachable here, so this uses the system Chromium
(``apt-get install chromium``; another binary via SATUNET_CHROMIUM) and skips, saying why, where
it or the playwright package is missing. The README screenshot comes from the same code path::

    python tests/test_serve_browser.py CHECKPOINT docs/serve.png [--image LOVEDA.png]
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

HERE = Path(__file__).resolve().parent
CHROMIUM = Path(os.environ.get("SATUNET_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LOVEDA_IMAGE = HERE.parent.parent / "shared" / "data" / "loveda" / "Train" / "Rural" / "images_png"
VIEWPORT = {"width": 1400, "height": 860}


def loveda_scene(image_png: Path, out: Path) -> Path:
    """A georeferenced GeoTIFF (UTM 50N, 0.3 m/px, LoveDA's) of one real LoveDA tile."""
    sys.path.insert(0, str(HERE))
    from test_serve import make_scene

    image = np.asarray(Image.open(image_png).convert("RGB")).transpose(2, 0, 1)
    return make_scene(out, np.ascontiguousarray(image))


def drive_page(url: str, screenshot: Path, photo: Path | None = None) -> dict:
    """Open the page as a person would and check what they would see; returns what it read."""
    from playwright.sync_api import sync_playwright

    seen: dict = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=30_000
        )
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(30_000)
            blocked: list[str] = []
            failed: list[str] = []
            outside = lambda u: u.startswith(("http:", "https:", "ws:")) and not u.startswith(url)  # noqa: E731
            page.on("request", lambda r: outside(r.url) and blocked.append(r.url))
            page.on("response", lambda r: r.status < 400 or failed.append(f"{r.status} {r.url}"))
            start = time.perf_counter()
            page.goto(url)
            page.wait_for_function(
                "window.satunet && window.satunet.ready && window.satunet.liveLoaded >= 4"
            )
            seen["first_view_s"] = time.perf_counter() - start
            seen["legend"] = page.locator("#legend li").all_inner_texts()
            seen["model"] = page.locator("#model").inner_text()
            page.locator("#opacity").fill("75")
            layer = ".leaflet-segmentation-pane .leaflet-layer"
            seen["opacity"] = page.evaluate(
                f"getComputedStyle(document.querySelector('{layer}')).opacity"
            )
            page.locator("#swipemode").check()
            seen["clip"] = page.evaluate(
                "document.querySelector('.leaflet-segmentation-pane').style.clip"
            )
            box = page.locator("#map").bounding_box()
            page.mouse.click(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.45)
            page.wait_for_function("window.satunet.lastClick !== null")
            seen["click"] = page.evaluate("window.satunet.lastClick")
            seen["readout"] = page.locator("#readout b").inner_text()
            if photo is not None:
                page.set_input_files("#file", str(photo))
                page.wait_for_function(
                    "document.querySelector('#photo-out').complete && "
                    "document.querySelector('#photo-out').naturalWidth > 0"
                )
                seen["photo_caption"] = page.locator("#photo-ms").inner_text()
            page.wait_for_function("document.querySelector('#latency').textContent.includes('p95')")
            seen["latency"] = page.locator("#latency").inner_text()
            page.wait_for_function("document.querySelector('#server').textContent.includes('ms')")
            seen["server"] = page.locator("#server").inner_text()
            page.wait_for_timeout(600)  # let the last tiles fade in
            seen["errors"] = page.evaluate("window.satunet.errors")
            seen["latencies_ms"] = page.evaluate("window.satunet.latencies")
            seen["outside_requests"] = blocked
            seen["failed"] = failed
            page.screenshot(path=str(screenshot))
        finally:
            browser.close()
    return seen


def small_photo(image_png: Path, out: Path) -> Path:
    Image.open(image_png).convert("RGB").resize((256, 256)).save(out, "JPEG", quality=90)
    return out


def test_page_in_a_real_browser(tmp_path: Path) -> None:
    pytest.importorskip("playwright.sync_api", reason="needs playwright: pip install playwright")
    pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'satunet[serve]'")
    if not CHROMIUM.is_file():
        pytest.skip(
            f"no Chromium at {CHROMIUM}: apt-get install chromium (or set SATUNET_CHROMIUM)"
        )
    if not (LOVEDA_IMAGE / "0.png").is_file():
        pytest.skip(f"real LoveDA tiles not found at {LOVEDA_IMAGE} (../shared is absent)")
    sys.path.insert(0, str(HERE))
    from test_serve import CLASSES, make_checkpoint, start_server, stop_server

    scene = loveda_scene(LOVEDA_IMAGE / "0.png", tmp_path / "loveda_0.tif")
    checkpoint = make_checkpoint(tmp_path / "tiny.pt")
    photo = small_photo(LOVEDA_IMAGE / "1.png", tmp_path / "photo.jpg")
    proc, url = start_server(str(checkpoint), str(scene), "--cache-mb", "32")
    try:
        seen = drive_page(url, tmp_path / "serve.png", photo)
    finally:
        stop_server(proc)
    assert seen["legend"] == CLASSES
    assert "tiny.toml:tiny" in seen["model"] and "torch" in seen["model"]
    assert float(seen["opacity"]) == pytest.approx(0.75)
    assert seen["clip"].startswith("rect(")
    assert seen["click"]["name"] in CLASSES and seen["readout"] == seen["click"]["name"]
    assert seen["photo_caption"].startswith("prediction")
    assert "p95" in seen["latency"] and seen["errors"] == 0 and seen["failed"] == [], seen["failed"]
    assert seen["outside_requests"] == []  # nothing but our own server: no CDN
    shot = Image.open(tmp_path / "serve.png")
    assert shot.size == (VIEWPORT["width"], VIEWPORT["height"])


def main(argv: list[str]) -> int:
    """Make the README screenshot: serve CHECKPOINT on a real LoveDA tile and shoot the page."""
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("checkpoint")
    parser.add_argument("out", type=Path)
    parser.add_argument("--image", type=Path, default=LOVEDA_IMAGE / "0.png")
    parser.add_argument("--photo", type=Path, default=LOVEDA_IMAGE / "1.png")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE))
    from test_serve import start_server, stop_server

    with tempfile.TemporaryDirectory() as tmp:
        scene = loveda_scene(args.image, Path(tmp) / f"loveda_{args.image.stem}.tif")
        photo = small_photo(args.photo, Path(tmp) / "photo.jpg")
        proc, url = start_server(args.checkpoint, str(scene))
        try:
            seen = drive_page(url, args.out, photo)
        finally:
            stop_server(proc)
    first = seen["first_view_s"]
    print(f"wrote {args.out}; first segmented view {first:.2f} s; {seen['latency']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
