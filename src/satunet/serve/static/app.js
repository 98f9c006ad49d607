// satunet serve: the scene as imagery, its live segmentation above it, legend, readouts, drop zone.
"use strict";

const $ = (id) => document.getElementById(id);
const esc = (t) => String(t).replace(/[&<>"']/g, (ch) => `&#${ch.charCodeAt(0)};`);
const rgb = (c) => `rgb(${c[0]}, ${c[1]}, ${c[2]})`;

// Test hooks and state (read by tests/test_serve_browser.py).
const state = (window.satunet = {
  ready: false, info: null, scene: null, segLoaded: 0, liveLoaded: 0, errors: 0,
  latencies: [], lastClick: null, swipe: false, swipeX: 0.5,
});

const map = L.map("map", { zoomControl: true, maxZoom: 24, worldCopyJump: false });
map.attributionControl.setPrefix('<a href="https://leafletjs.com">Leaflet</a>');
L.control.scale({ imperial: false, position: "bottomleft" }).addTo(map);
map.createPane("segmentation");
map.getPane("segmentation").style.zIndex = 250; // above imagery (200), below markers
let imagery = null, segmentation = null, marker = null;
const starts = new Map();

function percentile(values, q) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

function showLatency() {
  const v = state.latencies;
  if (!v.length) return;
  const last = v[v.length - 1], p95 = percentile(v.slice(-200), 0.95);
  $("latency").textContent = `last ${last.toFixed(0)} · p95 ${p95.toFixed(0)} ms · ${v.length} tiles`;
}

async function pollHealth() {
  try {
    const h = await (await fetch("/health")).json();
    const m = h.model_latency, c = h.cache;
    const hit = c.hit_rate == null ? "–" : `${Math.round(100 * c.hit_rate)}%`;
    $("server").textContent =
      `model p95 ${m.p95_ms == null ? "–" : m.p95_ms.toFixed(0) + " ms"} · cache ${hit} · ${c.mb} MB`;
  } catch (e) { /* the server went away: keep the last figures */ }
}

function sceneInfo() { return state.info.scenes.find((s) => s.name === state.scene); }

function updateHint() {
  const s = sceneInfo(), z = map.getZoom(), [lo, hi] = s.segment_zooms, el = $("zoomhint");
  el.classList.toggle("warn", z < lo);
  if (z < lo) {
    el.textContent = s.predictions
      ? `zoom ${z}: precomputed predictions; zoom in to ${lo}+ for live segmentation`
      : `zoom ${z}: imagery only; zoom in to ${lo}+ to segment`;
  } else if (z > hi) {
    el.textContent = `zoom ${z}: live segmentation at zoom ${hi}, enlarged`;
  } else {
    el.textContent = `zoom ${z}: live segmentation (zooms ${lo}–${hi})`;
  }
}

function clipSwipe() {
  const pane = map.getPane("segmentation"), size = map.getSize();
  $("swipe").hidden = !state.swipe;
  if (!state.swipe) { pane.style.clip = ""; return; }
  const nw = map.containerPointToLayerPoint([0, 0]), se = map.containerPointToLayerPoint(size);
  const x = nw.x + size.x * state.swipeX;
  pane.style.clip = `rect(${nw.y}px, ${x}px, ${se.y}px, ${nw.x}px)`;
  $("swipe").style.left = `${size.x * state.swipeX}px`;
}

function segmentationLayer(s) {
  const opts = {
    pane: "segmentation", bounds: L.latLngBounds([[s.bounds[1], s.bounds[0]], [s.bounds[3], s.bounds[2]]]),
    maxZoom: 24, maxNativeZoom: s.max_zoom, opacity: $("opacity").value / 100, keepBuffer: 1,
  };
  const layer = L.tileLayer(`/tiles/${encodeURIComponent(s.name)}/{z}/{x}/{y}.png`, opts);
  const key = (c) => `${c.z}/${c.x}/${c.y}`;
  layer.on("tileloadstart", (e) => starts.set(key(e.coords), performance.now()));
  layer.on("tileload", (e) => {
    const t0 = starts.get(key(e.coords));
    state.segLoaded += 1;
    if (e.coords.z >= s.segment_zooms[0]) state.liveLoaded += 1;
    if (t0 !== undefined) { state.latencies.push(performance.now() - t0); starts.delete(key(e.coords)); }
    showLatency();
    clearTimeout(state.healthTimer);
    state.healthTimer = setTimeout(pollHealth, 400);
  });
  layer.on("tileerror", () => { state.errors += 1; });
  return layer;
}

function showScene(name) {
  state.scene = name;
  const s = sceneInfo();
  if (imagery) map.removeLayer(imagery);
  if (segmentation) map.removeLayer(segmentation);
  if (marker) { map.removeLayer(marker); marker = null; }
  const bounds = L.latLngBounds([[s.bounds[1], s.bounds[0]], [s.bounds[3], s.bounds[2]]]);
  imagery = L.tileLayer(`/imagery/${encodeURIComponent(s.name)}/{z}/{x}/{y}.png`, {
    bounds, maxZoom: 24, maxNativeZoom: s.max_zoom,
    attribution: `${s.name} · ${s.crs} · ${s.resolution_m} m/px`,
  }).addTo(map);
  segmentation = segmentationLayer(s);
  if ($("show").checked) segmentation.addTo(map);
  const [lo, hi] = s.segment_zooms;
  map.setMaxZoom(s.max_zoom);
  // Fit the scene beside the panel, at a zoom that is segmented live.
  const pad = { paddingTopLeft: [20, 20], paddingBottomRight: [$("panel").offsetWidth + 30, 20] };
  map.fitBounds(bounds, { ...pad, animate: false, maxZoom: hi });
  if (map.getZoom() < lo) map.setZoom(lo, { animate: false });
  updateHint();
  clipSwipe();
}

async function readClass(e) {
  const z = map.getZoom(), { lat, lng } = e.latlng;
  const url = `/point/${encodeURIComponent(state.scene)}?lon=${lng}&lat=${lat}&z=${z}`;
  const r = await fetch(url);
  const body = await r.json();
  const out = $("readout");
  if (!r.ok) { out.innerHTML = `<span class="muted">${esc(body.detail)}</span>`; return; }
  state.lastClick = body;
  const label = body.name == null ? "no data" : body.name;
  const swatch = body.colour ? `<span class="swatch" style="background:${rgb(body.colour)}"></span>` : "";
  out.innerHTML = `${swatch}<b>${esc(label)}</b><div class="mono muted">${lat.toFixed(6)}, ${lng.toFixed(6)} · z${body.z}</div>`;
  if (marker) map.removeLayer(marker);
  marker = L.circleMarker(e.latlng, { radius: 6, color: "#fff", weight: 2, fillColor: body.colour ? rgb(body.colour) : "#000", fillOpacity: 1 })
    .bindTooltip(label, { permanent: true, direction: "top", offset: [0, -8], className: "class-tip" })
    .addTo(map);
}

async function segmentPhoto(file) {
  const out = $("photo-ms");
  if (!file || !/^image\/(png|jpeg)$/.test(file.type)) {
    out.textContent = "";
    $("drop").innerHTML = '<span class="error">only PNG or JPEG photos</span>';
    return;
  }
  $("photo").hidden = false;
  $("photo-in").src = URL.createObjectURL(file);
  $("photo-out").removeAttribute("src");
  out.textContent = "segmenting…";
  const t0 = performance.now();
  const r = await fetch("/segment", { method: "POST", body: file, headers: { "Content-Type": file.type } });
  if (!r.ok) {
    const body = await r.json().catch(() => ({ detail: r.statusText }));
    out.innerHTML = `<span class="error">${esc(body.detail)}</span>`;
    return;
  }
  $("photo-out").src = URL.createObjectURL(await r.blob());
  out.textContent = `prediction · ${(performance.now() - t0).toFixed(0)} ms`;
}

function wireControls() {
  $("opacity").addEventListener("input", (e) => {
    const v = Number(e.target.value);
    $("opacityval").textContent = `${v}%`;
    if (segmentation) segmentation.setOpacity(v / 100);
  });
  $("show").addEventListener("change", (e) => {
    if (e.target.checked) segmentation.addTo(map); else map.removeLayer(segmentation);
  });
  $("swipemode").addEventListener("change", (e) => {
    state.swipe = e.target.checked;
    if (state.swipe && !state.swipeMoved) {  // start at the middle of the map beside the panel
      const width = map.getSize().x;
      state.swipeX = Math.max(0.1, (width - $("panel").offsetWidth - 24) / 2 / width);
    }
    clipSwipe();
  });
  $("scene").addEventListener("change", (e) => showScene(e.target.value));
  const knob = document.querySelector("#swipe .knob");
  L.DomEvent.disableClickPropagation($("swipe"));
  knob.addEventListener("pointerdown", (e) => {
    knob.setPointerCapture(e.pointerId);
    map.dragging.disable();
    const move = (ev) => {
      const rect = map.getContainer().getBoundingClientRect();
      state.swipeX = Math.min(1, Math.max(0, (ev.clientX - rect.left) / rect.width));
      state.swipeMoved = true;
      clipSwipe();
    };
    const up = () => { knob.removeEventListener("pointermove", move); map.dragging.enable(); };
    knob.addEventListener("pointermove", move);
    knob.addEventListener("pointerup", up, { once: true });
  });
  const drop = $("drop");
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, () => drop.classList.remove("over")));
  drop.addEventListener("drop", (e) => { e.preventDefault(); segmentPhoto(e.dataTransfer.files[0]); });
  $("file").addEventListener("change", (e) => segmentPhoto(e.target.files[0]));
  map.on("move zoom resize", clipSwipe);
  map.on("zoomend", updateHint);
  map.on("click", (e) => readClass(e).catch(() => { $("readout").textContent = "no answer"; }));
}

async function start() {
  const info = (state.info = await (await fetch("/info")).json());
  $("model").textContent = `${info.model} · ${info.backend} · ${info.precision} · ${info.device}`;
  $("legend").innerHTML = info.classes
    .map((c) => `<li><span class="swatch" style="background:${rgb(c.colour)}"></span>${esc(c.name)}</li>`)
    .join("");
  $("scene").innerHTML = info.scenes.map((s) => `<option value="${s.name}">${s.name}</option>`).join("");
  wireControls();
  showScene(info.scenes[0].name);
  setInterval(pollHealth, 3000);
  pollHealth();
  state.ready = true;
}

start().catch((e) => { $("model").innerHTML = `<span class="error">cannot reach the server: ${e}</span>`; });
