"""Whether a benchmark can be trusted: round-to-round spread per model and the machine's load.

On a shared machine a timing can be off by 2x or more with nothing in the numbers saying so.
Two signs are checked: each model's per-round throughputs disagree by more than
``max_spread`` (relative range, (max - min) / median), and the 1-minute load average at the
start already exceeds the cores this process may use (other work is competing for them).
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

# (max - min) / median of the per-round img/s above which a model's figure is flagged.
DEFAULT_MAX_SPREAD = 0.2
SPREAD_KEYS: tuple[tuple[str, str], ...] = (("train", "train_spread"), ("infer", "infer_spread"))


def relative_spread(values: Sequence[float]) -> float | None:
    """(max - min) / median of ``values``; None with fewer than 2 values (nothing to compare)."""
    if len(values) < 2:
        return None
    median = statistics.median(values)
    if median <= 0:
        return None
    return (max(values) - min(values)) / median


def load_average() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages, or None where the OS has none."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def load_warning(load: Sequence[float] | None, cores: int) -> str | None:
    """A warning when the 1-minute load average exceeds ``cores``, else None."""
    if not load or load[0] <= cores:
        return None
    return (
        f"machine loaded: 1-minute load average {load[0]:.2f} at start exceeds the {cores} "
        "usable core(s), so other work competed for the CPU during timing"
    )


def spread_warnings(
    rows: Sequence[Mapping[str, Any]], max_spread: float, rounds: int
) -> tuple[list[str], list[str]]:
    """(warnings, names of noisy models) for rows carrying ``train_spread``/``infer_spread``."""
    if rounds < 2:
        return [
            f"{rounds} timed round: no round-to-round spread was measured, so noise cannot be "
            "detected; use --rounds 3 or more"
        ], []
    noisy: list[str] = []
    parts: list[str] = []
    for row in rows:
        over = [
            f"{kind} {100 * row[key]:.0f} %"
            for kind, key in SPREAD_KEYS
            if row.get(key) is not None and row[key] > max_spread
        ]
        if over:
            noisy.append(row["name"])
            parts.append(f"{row['name']} ({', '.join(over)})")
    if not parts:
        return [], []
    return [
        f"noisy: round-to-round spread (max - min) / median above {100 * max_spread:.0f} % for "
        + "; ".join(parts)
    ], noisy


def assess(
    rows: Sequence[Mapping[str, Any]],
    *,
    rounds: int,
    max_spread: float,
    load_start: Sequence[float] | None,
    load_end: Sequence[float] | None,
    cores: int,
) -> dict[str, Any]:
    """The noise verdict stored in the report's settings (``settings["noise"]``)."""
    warnings, noisy = spread_warnings(rows, max_spread, rounds)
    loaded = load_warning(load_start, cores)
    if loaded:
        warnings.insert(0, loaded)
    return {
        "max_spread": max_spread,
        "usable_cores": cores,
        "load_start": list(load_start) if load_start else None,
        "load_end": list(load_end) if load_end else None,
        "loaded": loaded is not None,
        "noisy_models": noisy,
        "warnings": warnings,
        "trusted": not warnings,
    }


def mark_rows(rows: Sequence[dict[str, Any]], noise: Mapping[str, Any]) -> None:
    """Set each row's ``noisy`` flag from the verdict (in place)."""
    for row in rows:
        row["noisy"] = row["name"] in noise.get("noisy_models", ())


def warning_line(noise: Mapping[str, Any] | None) -> str | None:
    """One Markdown line stating every warning, or None for a trusted run."""
    if not noise or not noise.get("warnings"):
        return None
    return "**⚠ Warning: these timings may not be trustworthy.** " + " ".join(
        w[:1].upper() + w[1:] + "." for w in noise["warnings"]
    )
