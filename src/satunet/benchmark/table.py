"""The benchmark's result: rows and their statistics, and the Markdown/CSV/JSON/PNG it writes."""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from satunet.benchmark.chart import plot_chart
from satunet.benchmark.noise import relative_spread, warning_line
from satunet.benchmark.timing import Variant, percentile
from satunet.files import PathLike, atomic_write_json, atomic_write_text, jsonable
from satunet.report import fmt, markdown_table

# Training tiles per epoch in the study's protocol (seed spec section 7), all 512x512.
EPOCH_TILES: dict[str, int] = {"loveda": 1512, "landcoverai": 7470}
STUDY_TILE = 512

ROW_KEYS: tuple[str, ...] = (
    "name",
    "params",
    "gmacs",
    "study_footprint_mb",
    "peak_mem_mb",
    "train_img_s",
    "train_img_s_min",
    "train_img_s_max",
    "infer_img_s",
    "infer_img_s_min",
    "infer_img_s_max",
    "latency_ms_p50",
    "latency_ms_p95",
    "epoch_s_loveda",
    "epoch_s_landcoverai",
    "ratio_train",
    "ratio_train_min",
    "ratio_train_max",
    "ratio_infer",
    "ratio_infer_min",
    "ratio_infer_max",
    "train_spread",
    "infer_spread",
    "noisy",
)
COMPARE_KEYS: tuple[str, ...] = (
    "fp32_train_img_s",
    "fp32_infer_img_s",
    "train_speedup_vs_fp32",
    "infer_speedup_vs_fp32",
    "argmax_agreement",
    "rel_rms_error",
)
CONTEXT_KEYS: tuple[str, ...] = (
    "device",
    "precision",
    "channels_last",
    "compile",
    "fold_bn",
    "size",
    "batch_size",
    "num_classes",
    "in_channels",
    "rounds",
    "peak_mem_method",
)
MEM_METHODS = {
    "cuda_max_allocated": "CUDA max_memory_allocated during the step, plus this model's "
    "parameters and Adam state",
    "child_peak_rss": "peak resident memory of a fresh child process running the step "
    "eagerly, above its RSS before the model was built: weights, gradients, Adam state, "
    "activations, workspaces",
}


@dataclass
class BenchmarkReport:
    """What :func:`benchmark_models` measured: one row per model, plus machine and settings."""

    rows: list[dict[str, Any]]
    machine: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """A JSON list with one object per model (machine and settings inside each object)."""
        return json.dumps(jsonable(self.records()), indent=2)

    def records(self) -> list[dict[str, Any]]:
        """The rows with the run's context added, so each one stands on its own."""
        context = {
            "machine": self.machine.get("summary", ""),
            **{k: self.settings.get(k) for k in CONTEXT_KEYS},
        }
        return [{**row, **context} for row in self.rows]

    def to_csv(self) -> str:
        """The rows as CSV, one line per model, with the same keys as the JSON."""
        records = self.records()
        keys = list(dict.fromkeys(k for r in records for k in r))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        for record in records:
            writer.writerow({k: "" if record.get(k) is None else record.get(k) for k in keys})
        return buf.getvalue()

    def to_markdown(self) -> str:
        """A table shaped like the study's Tables 3/4, with footnotes saying what each column is."""
        s, m = self.settings, self.machine
        compare = any("train_speedup_vs_fp32" in r for r in self.rows)
        compiled = any("compile_s" in r for r in self.rows)
        title = (
            f"**satunet benchmark** on {m.get('summary', '?')}: {s.get('variant', '')}, input "
            f"{s.get('size')}x{s.get('size')}, batch {s.get('batch_size')}, "
            f"{s.get('num_classes')} classes, median of {s.get('rounds')} interleaved rounds"
        )
        table = markdown_table(
            _markdown_head(s, compare, compiled),
            [_markdown_cells(r, compare, compiled) for r in self.rows],
        )
        warning = warning_line(s.get("noise"))
        head = [title, "", warning, ""] if warning else [title, ""]
        return "\n".join([*head, table, *_footnotes(s, m, compare)]) + "\n"

    def plot(self, path: PathLike) -> Path:
        """PNG chart: throughput against GMACs per measured phase, min-max error bars."""
        noise = self.settings.get("noise") or {}
        warning = "; ".join(noise.get("warnings") or []) or None
        return plot_chart(self.rows, self.machine, self.settings, path, warning)

    def save(self, out_dir: PathLike) -> dict[str, Path]:
        """Write table.md, results.csv, results.json, machine.json and chart.png (atomically)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        texts = {
            "table.md": self.to_markdown(),
            "results.csv": self.to_csv(),
            "results.json": self.to_json() + "\n",
        }
        written = {}
        for name, text in texts.items():
            atomic_write_text(out / name, text)
            written[name] = out / name
        context = {"machine": self.machine, "settings": self.settings}
        atomic_write_json(out / "machine.json", context)
        written["machine.json"] = out / "machine.json"
        written["chart.png"] = self.plot(out / "chart.png")
        return written


def _markdown_head(s: dict[str, Any], compare: bool, compiled: bool) -> list[str]:
    head = [
        "Model",
        "Params",
        f"GMACs@{s.get('size')}",
        "Study MB¹",
        "Peak MB²",
        "Train img/s (min–max)³",
        "× ref",
        "LoveDA s/epoch⁴",
        "LandCover.ai s/epoch⁴",
        "Infer img/s",
        "× ref",
        "Latency p50/p95 ms",
        "Spread⁵ train/infer",
    ]
    if compare:
        head += ["Train × fp32", "Infer × fp32", "Argmax agree", "Rel. RMS err"]
    if compiled:
        head.append("Compile s")
    return head


def _span(mid: float | None, lo: float | None, hi: float | None) -> str:
    """``mid (lo–hi)`` with 3 decimals below 10, else 1."""
    if mid is None:
        return "–"
    digits = 3 if mid < 10 else 1
    return f"{fmt(mid, digits)} ({fmt(lo, digits)}–{fmt(hi, digits)})"


def _spread_cell(r: dict[str, Any]) -> str:
    cells = [
        "–" if r.get(k) is None else f"{100 * r[k]:.0f} %" for k in ("train_spread", "infer_spread")
    ]
    return " / ".join(cells) + (" ⚠" if r.get("noisy") else "")


def _markdown_cells(r: dict[str, Any], compare: bool, compiled: bool) -> list[str]:
    cells = [
        f"`{r['name']}`",
        f"{r['params']:,}",
        fmt(r["gmacs"], 1),
        fmt(r["study_footprint_mb"], 0),
        fmt(r["peak_mem_mb"], 0),
        _span(r["train_img_s"], r["train_img_s_min"], r["train_img_s_max"]),
        fmt(r["ratio_train"], 2),
        fmt(r["epoch_s_loveda"], 0),
        fmt(r["epoch_s_landcoverai"], 0),
        fmt(r["infer_img_s"], 3 if (r["infer_img_s"] or 99) < 10 else 1),
        fmt(r["ratio_infer"], 2),
        f"{fmt(r['latency_ms_p50'], 0)} / {fmt(r['latency_ms_p95'], 0)}",
        _spread_cell(r),
    ]
    if compare:
        agree = r.get("argmax_agreement")
        cells += [
            fmt(r.get("train_speedup_vs_fp32"), 2),
            fmt(r.get("infer_speedup_vs_fp32"), 2),
            fmt(100 * agree, 2) + " %" if agree is not None else "–",
            f"{r['rel_rms_error']:.1e}" if r.get("rel_rms_error") is not None else "–",
        ]
    if compiled:
        cells.append(fmt(r.get("compile_s"), 1))
    return cells


def _footnotes(s: dict[str, Any], m: dict[str, Any], compare: bool) -> list[str]:
    ref, size = s.get("reference"), s.get("size")
    notes = [
        "",
        "¹ The study's 'memory footprint': torchsummary's per-image forward/backward pass "
        "size at 512x512, a proxy that is not memory (see `satunet models`).",
        f"² Measured peak memory of one training step at batch {s.get('batch_size')} "
        f"({MEM_METHODS.get(s.get('peak_mem_method') or '', 'not measured')}).",
        "³ Forward + backward + Adam step on synthetic data; min–max over rounds."
        + (
            f" × ref: speed relative to `{ref}` (> 1 is faster), median of per-round ratios."
            if ref
            else ""
        ),
        "⁴ Training compute per epoch implied by the throughput (LoveDA 1512, LandCover.ai "
        "7470 tiles of 512x512); no data loading or validation, unlike the study's times"
        + (f"; extrapolated from {size}x{size} by pixel count." if size != STUDY_TILE else "."),
        f"Inference: img/s at batch {s.get('batch_size')}, latency at batch 1. "
        f"torch {m.get('torch')}, {m.get('threads', '?')} threads. "
        f"Timing overhead {fmt(s.get('timing_overhead_pct'), 3)} % of measured time.",
        "⁵ Round-to-round spread of img/s, (max − min) / median; ⚠ above "
        f"{100 * (s.get('noise') or {}).get('max_spread', 0.2):.0f} %. Load average (1 min) "
        f"{_load_text(m)} on {m.get('cpus_usable', '?')} usable cores.",
    ]
    if size != STUDY_TILE:
        notes.insert(1, f"Input size reduced to {size}x{size} (the study used 512x512).")
    if compare:
        notes.append(
            "Train/Infer × fp32: speed-up against fp32 eager measured in the same run; argmax "
            "agreement and relative RMS error of the logits against fp32 eager on one batch."
        )
    return notes


def _load_text(m: dict[str, Any]) -> str:
    start, end = m.get("load_start"), m.get("load_end")
    if not start:
        return "unknown"
    return f"{start[0]:.2f} at start" + (f", {end[0]:.2f} at end" if end else "")


# --------------------------------------------------------------------------- rows


def round_sig(value: float | None, digits: int = 4) -> float | None:
    """``digits`` significant digits below 1, else ``digits - 2`` decimals (at least 1)."""
    if value is None:
        return None
    return float(f"{value:.{digits}g}") if abs(value) < 1 else round(value, max(1, digits - 2))


def stats(key: str, rates: Sequence[float]) -> dict[str, float | None]:
    """Median, min and max of ``rates`` under ``key``, ``key_min`` and ``key_max``."""
    if not rates:
        return {key: None, f"{key}_min": None, f"{key}_max": None}
    return {
        key: round_sig(statistics.median(rates)),
        f"{key}_min": round_sig(min(rates)),
        f"{key}_max": round_sig(max(rates)),
    }


def _rates(seconds_per_image: Sequence[float]) -> list[float]:
    return [1.0 / s for s in seconds_per_image]


def _median_ratio(mine: Sequence[float], theirs: Sequence[float]) -> float | None:
    ratios = [a / b for a, b in zip(mine, theirs, strict=False)]
    return round_sig(statistics.median(ratios), 4) if ratios else None


def _speed_columns(v: Variant, size: int) -> dict[str, Any]:
    row: dict[str, Any] = {}
    row.update(stats("train_img_s", _rates(v.train_s)))
    row.update(stats("infer_img_s", _rates(v.infer_s)))
    for key, seconds in (("train_spread", v.train_s), ("infer_spread", v.infer_s)):
        spread = relative_spread(_rates(seconds))
        row[key] = None if spread is None else round(spread, 4)
    for key, q in (("latency_ms_p50", 0.5), ("latency_ms_p95", 0.95)):
        row[key] = round_sig(1e3 * percentile(v.latency_s, q)) if v.latency_s else None
    scale = (STUDY_TILE / size) ** 2
    for dataset, tiles in EPOCH_TILES.items():
        rate = row["train_img_s"]
        row[f"epoch_s_{dataset}"] = round_sig(tiles * scale / rate) if rate else None
    return row


def _ratio_columns(v: Variant, ref: Variant | None) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for kind in ("train", "infer"):
        mine = _rates(v.train_s if kind == "train" else v.infer_s)
        theirs = _rates(ref.train_s if kind == "train" else ref.infer_s) if ref else []
        row.update(stats(f"ratio_{kind}", [a / b for a, b in zip(mine, theirs, strict=False)]))
    return row


def _compile_seconds(v: Variant) -> float | None:
    firsts = [
        first - steady
        for first, steady in (
            (v.first_train_s, v.train_s[0] * len(v.x) if v.train_s else None),
            (v.first_infer_s, v.infer_s[0] * len(v.x) if v.infer_s else None),
        )
        if first is not None and steady is not None
    ]
    return round_sig(sum(firsts), 2) if firsts else None


def _baseline_columns(v: Variant, b: Variant, agree: dict[str, float]) -> dict[str, Any]:
    bt, bi = _rates(b.train_s), _rates(b.infer_s)
    return {
        "fp32_train_img_s": round_sig(statistics.median(bt)) if bt else None,
        "fp32_infer_img_s": round_sig(statistics.median(bi)) if bi else None,
        "train_speedup_vs_fp32": _median_ratio(_rates(v.train_s), bt),
        "infer_speedup_vs_fp32": _median_ratio(_rates(v.infer_s), bi),
        "argmax_agreement": agree.get("argmax_agreement"),
        "rel_rms_error": agree.get("rel_rms_error"),
    }


def build_rows(
    variants: Sequence[Variant],
    facts: dict[str, dict[str, Any]],
    memory: dict[str, float | None],
    agreement: dict[str, dict[str, float]],
    reference: str | None,
    *,
    size: int,
    compile: bool,
    measure_memory: bool,
) -> list[dict[str, Any]]:
    """One row per configured model: facts, speeds, ratios, memory and the fp32 comparison."""
    configured = {v.name: v for v in variants if not v.baseline}
    baselines = {v.name: v for v in variants if v.baseline}
    ref = configured.get(reference) if reference else None
    rows = []
    for name, v in configured.items():
        row: dict[str, Any] = {"name": name, **facts[name]}
        row["peak_mem_mb"] = round(memory[name], 1) if memory.get(name) is not None else None
        row["peak_mem_method"] = None
        if measure_memory and row["peak_mem_mb"] is not None:
            row["peak_mem_method"] = "cuda_max_allocated" if v.x.is_cuda else "child_peak_rss"
        row.update(_speed_columns(v, size))
        row.update(_ratio_columns(v, ref))
        if compile:
            row["compile_s"] = _compile_seconds(v)
        if name in baselines:
            row.update(_baseline_columns(v, baselines[name], agreement.get(name, {})))
        rows.append(row)
    return rows
