"""The race's result: per-model figures over seeds, time to the reference's accuracy, verdicts."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from satunet.report import fmt, markdown_table


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)


def _mean(values: Sequence[Any]) -> float | None:
    kept = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return statistics.fmean(kept) if kept else None


def _std(values: Sequence[Any]) -> float | None:
    kept = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return statistics.stdev(kept) if len(kept) > 1 else None


def run_facts(run: Mapping[str, Any]) -> dict[str, Any]:
    """One run's figures from its history (scheduled validation points only)."""
    history = run["history"]
    points = [r for r in history if r["scheduled"]]
    final = points[-1]
    mious = [_num(r["val_miou"]) for r in points]
    return {
        "model": run["model"],
        "seed": run["seed"],
        "run_dir": run["run_dir"],
        "final_miou": final["val_miou"],
        "best_miou": max((m for m in mious if not math.isnan(m)), default=None),
        "final_iou": final["val_iou"],
        "steps": final["steps"],
        "images_seen": final["images_seen"],
        "train_s": final["elapsed_s"],
        "train_img_s": final["train_img_s"],
        "val_time_s": round(sum(r["val_time_s"] for r in history), 1),
        "stopped_early": bool(run.get("stopped_early")),
        "curve": [[r["elapsed_s"], r["val_miou"]] for r in points],
    }


def time_to(curve: Sequence[Sequence[Any]], target: float | None) -> float | None:
    """Training seconds of the first validation point at or above ``target`` (None: never)."""
    if target is None:
        return None
    for elapsed, miou in curve:
        if miou is not None and miou >= target - 1e-9:
            return float(elapsed)
    return None


def time_to_stay(curve: Sequence[Sequence[Any]], target: float | None) -> float | None:
    """Training seconds from which every later validation point is at or above ``target``.

    Validation on a few images is noisy: one lucky point can cross a target the model then
    falls below again. This is the crossing that holds to the end (None: the end is below).
    """
    if target is None:
        return None
    since = None
    for elapsed, miou in curve:
        if miou is None or miou < target - 1e-9:
            since = None
        elif since is None:
            since = float(elapsed)
    return since


def mean_curve_time(agg: Mapping[str, Any], target: float | None) -> float | None:
    """Training seconds at which the seed-mean curve first reaches ``target`` (None: never).

    Between the first crossing (flattered by one lucky point) and the crossing that holds
    (spoilt by one unlucky one): the seeds' noise averages out before the crossing is read.
    """
    return time_to([[p["elapsed_s"], p["miou_mean"]] for p in agg["curve"]], target)


def _aggregate(facts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    n_classes = max(len(f["final_iou"]) for f in facts)
    per_class = [_mean([f["final_iou"][c] for f in facts if c < len(f["final_iou"])])
                 for c in range(n_classes)]  # fmt: skip
    length = max(len(f["curve"]) for f in facts)
    curve = []
    for i in range(length):
        at = [f["curve"][i] for f in facts if i < len(f["curve"])]
        mious = [m for _, m in at if m is not None]
        curve.append({
            "elapsed_s": _mean([e for e, _ in at]),
            "miou_mean": _mean(mious),
            "miou_min": min(mious) if mious else None,
            "miou_max": max(mious) if mious else None,
        })  # fmt: skip
    return {
        "seeds": [f["seed"] for f in facts],
        "final_miou_mean": _mean([f["final_miou"] for f in facts]),
        "final_miou_std": _std([f["final_miou"] for f in facts]),
        "final_miou_per_seed": [f["final_miou"] for f in facts],
        "best_miou": max(
            (f["best_miou"] for f in facts if f["best_miou"] is not None), default=None
        ),  # fmt: skip
        "per_class_iou": per_class,
        "steps": _mean([f["steps"] for f in facts]),
        "images_seen": _mean([f["images_seen"] for f in facts]),
        "train_img_s": _mean([f["train_img_s"] for f in facts]),
        "val_time_s": _mean([f["val_time_s"] for f in facts]),
        "stopped_early": sum(f["stopped_early"] for f in facts),
        "curve": curve,
    }


def summarize_race(
    runs: Sequence[Mapping[str, Any]],
    models: Sequence[str],
    seeds: Sequence[int],
    *,
    reference: str | None = None,
) -> dict[str, Any]:
    """Per-model figures, the reference (default: the slowest trainer) and plain verdicts.

    ``time_to_reference_s`` is, per seed, the first validation point at or above the
    reference's mean final mIoU, averaged over the seeds that got there (``reached``).
    """
    facts = [run_facts(r) for r in runs]
    per_model = {m: _aggregate([f for f in facts if f["model"] == m]) for m in models}
    if reference is None:
        reference = min(models, key=lambda m: per_model[m]["train_img_s"] or math.inf)
    target = per_model[reference]["final_miou_mean"]
    ref_time = _mean([time_to(f["curve"], target) for f in facts if f["model"] == reference])
    ref_stay = _mean([time_to_stay(f["curve"], target) for f in facts if f["model"] == reference])
    ref_mean_curve = mean_curve_time(per_model[reference], target)
    for m, agg in per_model.items():
        times = [time_to(f["curve"], target) for f in facts if f["model"] == m]
        agg["time_to_reference_s"] = _mean(times)
        agg["reached_reference"] = f"{sum(t is not None for t in times)}/{len(times)}"
        t = agg["time_to_reference_s"]
        agg["time_ratio"] = t / ref_time if t is not None and ref_time else None
        stay = _mean([time_to_stay(f["curve"], target) for f in facts if f["model"] == m])
        agg["time_to_stay_s"] = stay
        agg["stay_ratio"] = stay / ref_stay if stay is not None and ref_stay else None
        mean_t = mean_curve_time(agg, target)
        agg["time_to_reference_mean_curve_s"] = mean_t
        agg["mean_curve_ratio"] = (
            mean_t / ref_mean_curve if mean_t is not None and ref_mean_curve else None
        )
    for m, row in time_matrix(facts, per_model).items():
        per_model[m]["time_to"] = row
    classes = next((r["best"]["classes"] for r in runs if r.get("best")), None)
    return {
        "reference": reference,
        "reference_miou": target,
        "classes": classes,
        "models": per_model,
        "verdicts": verdicts(per_model, len(seeds)),
        "runs": facts,
    }


def time_matrix(
    facts: Sequence[Mapping[str, Any]], per_model: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, dict[str, Any]]]:
    """[model][target]: training seconds for ``model`` to reach ``target``'s mean final mIoU.

    Every entry against every other: a recipe race reads "fast reaches study's final mIoU in
    x of study's time" off the same table as a model race. ``ratio`` divides by the time
    ``target`` itself needed to first reach its mean final mIoU (over its seeds).
    """
    matrix: dict[str, dict[str, dict[str, Any]]] = {m: {} for m in per_model}
    for target, agg in per_model.items():
        miou = agg["final_miou_mean"]
        own = _mean([time_to(f["curve"], miou) for f in facts if f["model"] == target])
        for m in per_model:
            times = [time_to(f["curve"], miou) for f in facts if f["model"] == m]
            t = _mean(times)
            matrix[m][target] = {
                "time_s": t,
                "ratio": t / own if t is not None and own else None,
                "reached": f"{sum(x is not None for x in times)}/{len(times)}",
            }
    return matrix


def verdicts(per_model: Mapping[str, Mapping[str, Any]], n_seeds: int) -> list[str]:
    """Plain sentences: who leads, and whether each gap is beyond the seed spread.

    A gap counts as beyond the spread when it exceeds the sum of the two models' standard
    deviations over seeds; with one seed there is no spread, and the sentence says so.
    """
    ranked = sorted(per_model, key=lambda m: -(per_model[m]["final_miou_mean"] or -1))
    a = per_model[ranked[0]]
    lead = short(ranked[0])
    lines = [f"{lead} has the highest final mIoU ({fmt(a['final_miou_mean'])})."]
    if n_seeds < 2:
        lines.append(
            "One seed per model: the seed spread was not measured, so no difference below is "
            "evidence; race again with --seeds 0,1,2."
        )
    for name in ranked[1:]:
        b, other = per_model[name], short(name)
        gap = (a["final_miou_mean"] or 0) - (b["final_miou_mean"] or 0)
        spread = (a["final_miou_std"] or 0) + (b["final_miou_std"] or 0)
        if n_seeds < 2:
            lines.append(f"{lead} - {other}: {gap:+.4f} mIoU (one seed).")
        elif gap <= spread:
            lines.append(
                f"{lead} - {other}: {gap:+.4f} mIoU, WITHIN the seed spread (std "
                f"{fmt(a['final_miou_std'])} and {fmt(b['final_miou_std'])}): no real difference."
            )
        else:
            lines.append(
                f"{lead} - {other}: {gap:+.4f} mIoU, beyond the seed spread (std "
                f"{fmt(a['final_miou_std'])} and {fmt(b['final_miou_std'])})."
            )
    return lines


def _pm(mean: float | None, std: float | None) -> str:
    return fmt(mean) + (f" ± {std:.4f}" if std is not None else "")


def _minutes(seconds: float | None) -> str:
    return "not reached" if seconds is None else f"{seconds / 60:.2f}"


def short(name: str) -> str:
    """A model's display name: a presets file's FILE:NAME shows as NAME."""
    return name.rpartition(":")[2] or name


def _recipes(settings: Mapping[str, Any]) -> str:
    """``recipe `fast` (adamw, lr 0.002, ...)``, one such part per recipe raced."""
    recipes = settings.get("recipes") or {settings["recipe"]: settings["train"]}
    parts = []
    for name, t in recipes.items():
        stop = f", early stop {t['early_stopping']}" if t["early_stopping"] else ""
        parts.append(f"`{name}` ({t['optimizer']}, lr {t['lr']:g}, {t['schedule']}, loss "
                     f"{t['loss']}, {t['precision']}{stop})")  # fmt: skip
    return ("recipe " if len(parts) == 1 else "recipes ") + " and ".join(parts)


def _matrix_table(models: Mapping[str, Mapping[str, Any]]) -> str:
    head = ["model", *(f"to {short(t)}'s {fmt(a['final_miou_mean'])}" for t, a in models.items())]
    rows = []
    for m, agg in models.items():
        cells = []
        for cell in (agg.get("time_to") or {}).values():
            t, ratio = cell["time_s"], cell["ratio"]
            text = _minutes(t) + (f" ({ratio:.2f}x)" if ratio is not None else "")
            cells.append(text + ("" if t is None else f" {cell['reached']}"))
        rows.append([short(m), *cells])
    return markdown_table(head, rows)


def race_markdown(result: Mapping[str, Any]) -> str:
    """race.md: settings, the table, per-class IoU and the verdicts."""
    s, models = result["settings"], result["models"]
    ref = short(result["reference"])
    head = ["model", "final mIoU (mean ± std)", "best", "steps", "images seen", "train img/s",
            f"min to {ref}'s {fmt(result['reference_miou'])}", "x ref time", "reached",
            "above it from min", "x ref", "seed-mean curve at it, min", "x ref"]  # fmt: skip
    rows = [[short(m), _pm(a["final_miou_mean"], a["final_miou_std"]), fmt(a["best_miou"]),
             fmt(a["steps"], 0), fmt(a["images_seen"], 0), fmt(a["train_img_s"], 2),
             _minutes(a["time_to_reference_s"]), fmt(a["time_ratio"], 2), a["reached_reference"],
             _minutes(a.get("time_to_stay_s")), fmt(a.get("stay_ratio"), 2),
             _minutes(a.get("time_to_reference_mean_curve_s")), fmt(a.get("mean_curve_ratio"), 2)]
            for m, a in models.items()]  # fmt: skip
    classes = result.get("classes") or [
        f"class {i}" for i in range(len(next(iter(models.values()))["per_class_iou"]))
    ]
    class_rows = [[short(m), *(fmt(v, 3) for v in a["per_class_iou"])] for m, a in models.items()]
    lines = [
        f"# satunet race: {', '.join(map(short, models))}",
        "",
        f"{s['budget_min']:g} min of training per model and seed (validation, every "
        f"{100 * s['val_every']:g}% of the budget, is NOT counted in the budget), seeds "
        f"{', '.join(map(str, s['seeds']))}, {_recipes(s)}, batch {s['train']['batch_size']}, crop "
        f"{s['data']['crop']}, {s['data']['name']} {s['data']['scene'] or ''} val_fraction "
        f"{s['data']['val_fraction']} (split seed {s['train']['split_seed']}); {s['device']}, "
        f"{s['threads']} thread(s), {s['cpu']}, torch {s['torch']}, load average at the end "
        f"{s['load_average']}.",
        "",
        markdown_table(head, rows),
        "",
        "Final mIoU: standard confusion-matrix mIoU at the end of the budget. Reference: "
        f"{ref} (the slowest trainer unless chosen); time to it is training minutes to the "
        'first validation point at or above its mean final mIoU; "above it from" is the '
        "point from which every later one stays at or above it (validation on a few images is "
        "noisy, so a single point can cross early); the seed-mean curve's crossing averages "
        "the seeds' curves point by point first.",
        "",
        markdown_table(["model", *classes], class_rows),
        "",
        "Minutes of training to reach each entry's mean final mIoU (in brackets: x that "
        "entry's own time to it; seeds that got there):",
        "",
        _matrix_table(models),
        "",
        *(f"- {v}" for v in result["verdicts"]),
        "",
    ]
    if s.get("command"):
        lines[2:2] = [f"`{s['command']}`", ""]
    return "\n".join(lines)
