"""``search``: propose, measure, optionally proxy-train, and write the result files."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from satunet.benchmark import measure_peak_conv_gflops
from satunet.errors import ConfigError
from satunet.files import PathLike, atomic_write_text
from satunet.models import Preset, save_presets
from satunet.runtime import resolve_device
from satunet.search.front import markdown_table, plot_pareto, summarize
from satunet.search.measure import measure, proxy_accuracy, within_budget
from satunet.search.space import SEEDS, Candidate, propose

log = logging.getLogger(__name__)


def search(
    out: PathLike,
    *,
    trials: int = 8,
    budget_ms: float | None = None,
    budget_gmacs: float | None = None,
    size: int = 512,
    num_classes: int = 5,
    device: str = "cpu",
    precision: str = "fp32",
    channels_last: bool = False,
    batch_size: int = 1,
    rounds: int = 3,
    reference: str | None = "deeplabv3plus_resnet34",
    seed: int = 0,
    seeds: Sequence[str] = SEEDS,
    space: Mapping[str, Sequence[Any]] | None = None,
    data: str | None = None,
    root: PathLike | None = None,
    data_options: Mapping[str, Any] | None = None,
    epochs: int = 1,
    budget_min: float | None = None,
    crop: int = 256,
    measure_train: bool = False,
    measure_memory: bool = True,
    min_time_s: float = 0.5,
    progress: bool = True,
) -> dict[str, Any]:
    """Propose, measure, optionally proxy-train, and write search.md/json, pareto.png, presets.

    ``budget_ms`` / ``budget_gmacs``: median latency (batch 1) / GMACs limits. With ``data`` and
    ``root`` kept designs train ``epochs`` epochs, or ``budget_min`` minutes, for a proxy mIoU.
    """
    if budget_ms is None and budget_gmacs is None:
        raise ConfigError("give a budget: --budget-ms X (measured latency) or --budget-gmacs G")
    if (data is None) != (root is None):
        raise ConfigError("proxy accuracy needs both --data and --root (or neither)")
    dev = str(resolve_device(device, precision))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    candidates = propose(
        trials, size=size, num_classes=num_classes, budget_gmacs=budget_gmacs, seed=seed,
        seeds=seeds, space=space,
    )  # fmt: skip
    log.info("measuring %d candidate(s) at %dx%d on %s", len(candidates), size, size, dev)
    rows = measure(
        candidates, size=size, batch_size=batch_size, device=dev, precision=precision,
        channels_last=channels_last, num_classes=num_classes, rounds=rounds,
        reference=reference, measure_train=measure_train, measure_memory=measure_memory,
        min_time_s=min_time_s, progress=progress,
    )  # fmt: skip
    reference_row = next((r for r in rows if r["name"] == reference), None)
    if (measured := list(candidates)) and budget_ms is not None:
        kept = within_budget(candidates, budget_ms)
        log.info("%d of %d candidate(s) within %.1f ms", len(kept), len(candidates), budget_ms)
        candidates = kept
    presets_file = out / "candidates.toml"  # every measured design, over-budget ones marked
    save_candidates(presets_file, measured, {c.name for c in candidates}, budget_ms)
    if data is not None and candidates:
        proxy = dict(data=data, root=root, data_options=data_options, epochs=epochs, out=out,
                     crop=crop, device=device, seed=seed, progress=progress,
                     budget_min=budget_min)  # fmt: skip
        reference_row = _proxy_train(candidates, presets_file, reference, reference_row, proxy)
    peak = measure_peak_conv_gflops(dev, precision, min_time_s=min(0.2, min_time_s))
    log.info("peak 3x3-conv throughput on %s %s: %.0f GFLOP/s", dev, precision, peak)
    records = summarize(candidates, reference_row, peak)
    save_pareto_presets(out / "pareto_presets.toml", candidates, records)
    settings = {
        "trials": trials, "budget_ms": budget_ms, "budget_gmacs": budget_gmacs,
        "budget_gmacs_at": 512, "measured": len(measured), "size": size,
        "num_classes": num_classes, "device": dev, "precision": precision,
        "channels_last": channels_last, "batch_size": batch_size, "rounds": rounds,
        "reference": reference, "seed": seed, "data": data,
        "root": None if root is None else str(root), "epochs": epochs, "crop": crop,
        "budget_min": budget_min, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "peak_conv_gflops": round(peak, 1),
    }  # fmt: skip
    result = {"settings": settings, "candidates": records}
    write_result(out, result, len(candidates))
    return result


def save_candidates(
    path: Path, measured: Sequence[Candidate], kept: set[str], budget_ms: float | None
) -> None:
    """candidates.toml: every measured design; each description says whether it is within
    the latency budget (over-budget ones stay buildable, but are not proxy-trained or ranked)."""
    presets = {}
    for c in measured:
        latency = c.metrics.get("latency_ms_p50")
        where = f"latency {latency:.1f} ms" if latency is not None else "latency not measured"
        if budget_ms is None:
            note = f"within budget: {c.gmacs_512:.2f} GMACs at 512x512"
        elif c.name in kept:
            note = f"within budget: {where} <= {budget_ms:g} ms"
        else:
            note = f"OVER BUDGET: {where} > {budget_ms:g} ms"
        presets[c.name] = Preset(c.preset.levels, c.preset.options, f"satunet search, {note}")
    if presets:
        save_presets(path, presets)


def _proxy_train(
    candidates: Sequence[Candidate],
    presets_file: Path,
    reference: str | None,
    reference_row: Mapping[str, Any] | None,
    options: Mapping[str, Any],
) -> Mapping[str, Any] | None:
    """Proxy mIoU for every kept design and the reference; the reference row gains its mIoU."""
    scores = proxy_accuracy(candidates, presets_file, reference=reference, **options)
    if reference_row is None:
        return None
    return dict(reference_row) | {"miou": scores.get(reference)}


def save_pareto_presets(
    path: Path, candidates: Sequence[Candidate], records: Sequence[Mapping[str, Any]]
) -> None:
    """The designs on a Pareto front as a presets file, ready for create_model("FILE:NAME")."""
    on_front = {r["name"]: r["design"] for r in records[: len(candidates)]
                if r["pareto_speed_accuracy"] or r["pareto_speed_gmacs"]}  # fmt: skip
    if on_front:
        save_presets(
            path,
            {
                c.name: Preset(
                    c.preset.levels, c.preset.options, f"satunet search: {on_front[c.name]}"
                )
                for c in candidates
                if c.name in on_front
            },
        )


def write_result(out: Path, result: Mapping[str, Any], designs: int) -> None:
    """search.json, search.md and pareto.png into ``out`` (each written atomically)."""
    s = result["settings"]
    budget = (
        f"{s['budget_ms']} ms"
        if s["budget_ms"] is not None
        else f"{s['budget_gmacs']} GMACs at 512x512"
    )
    title = (
        f"satunet search: {designs} design(s), {s['size']}x{s['size']}, {s['device']} "
        f"{s['precision']}, batch {s['batch_size']}, budget {budget}"
    )
    records = result["candidates"]
    atomic_write_text(out / "search.json", json.dumps(result, indent=2, default=str) + "\n")
    atomic_write_text(out / "search.md", f"# {title}\n\n" + markdown_table(records))
    plot_pareto(records, out / "pareto.png", title)
