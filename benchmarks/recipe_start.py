"""The fast recipe's first minutes: variants of its start, timed to the study recipe's mark.

`satunet race unet_fast,unet_fast@study ...` (README, "the fast recipe against the study's")
found the fast recipe reaching the study recipe's 20-minute mIoU *later* than the study recipe
itself. This asks which part of the fast recipe's start is to blame. Each variant changes a few
train settings of the fast recipe (a shorter warm-up, a lower peak rate, no cross-entropy term,
fp32; ``recipe=study`` trains the study's own start, the mark's owner) exactly as the race
does (same data, split, crops, batch, validation every 1% of the budget), on the *full*
``--budget-min`` schedule, cut off after ``--stop-min`` minutes of training: the warm-up and
cosine are those of the 20-minute run whose start is in question. Variants run round-robin
within each seed, so a drifting machine load touches all alike.

Not a test: the numbers depend on the machine and what else runs on it, hence the load average.

    .venv/bin/python benchmarks/recipe_start.py --seeds 0,1
    .venv/bin/python benchmarks/recipe_start.py --variant "no warm-up:warmup=0" --seeds 0
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# name -> fast-recipe train settings it changes (TrainConfig fields).
VARIANTS: dict[str, dict[str, object]] = {
    "fast": {},
    "warm-up 1%": {"warmup": 0.01},
    "lr 1e-3": {"lr": 1e-3},
    "no warm-up, lr 1e-3": {"warmup": 0.0, "lr": 1e-3},
    "Jaccard only": {"loss": "jaccard"},
    "fp32": {"precision": "fp32", "channels_last": False},
    "study recipe": {"recipe": "study"},
}


class _Stop(Exception):
    """Raised from the progress callback once the cut-off's validation point is written."""


def parse_variant(text: str) -> tuple[str, dict[str, object]]:
    """``NAME:key=value,key=value`` (values read as TOML; bare words are strings)."""
    name, sep, rest = text.partition(":")
    if not sep or not name:
        raise SystemExit(f"--variant {text!r} must look like NAME:key=value,key=value")
    changes: dict[str, object] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise SystemExit(f"--variant {text!r}: {item!r} is not key=value")
        try:
            changes[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            changes[key] = None if value.lower() == "none" else value
    return name, changes


def train_start(cfg, run_dir: Path, stop_s: float) -> list[dict]:
    """Train ``cfg`` until ``stop_s`` seconds of training; its scheduled validation points."""
    from satunet.train import train_from_config

    passed = False

    def stop(train_s: float) -> None:
        nonlocal passed
        if passed:  # the step after the cut-off: its validation point has been written
            raise _Stop
        passed = train_s >= stop_s

    try:
        train_from_config(cfg, run_dir, progress=False, on_progress=stop)
    except _Stop:
        pass
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("scheduled") and r["elapsed_s"] <= stop_s + 1]


def first_at(points: list[dict], target: float) -> float | None:
    """Minutes of training to the first validation point at or above ``target``."""
    return next((p["elapsed_s"] / 60 for p in points if p["val_miou"] >= target), None)


def miou_by(points: list[dict], minute: float) -> float:
    """The last validation mIoU at or before ``minute``."""
    before = [p["val_miou"] for p in points if p["elapsed_s"] <= minute * 60 + 1]
    return before[-1] if before else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--budget-min", type=float, default=20.0, help="the schedule's budget")
    parser.add_argument("--stop-min", type=float, default=3.0, help="train this much of it")
    parser.add_argument("--target", type=float, default=0.1723,
                        help="mIoU mark: the study recipe's 20-minute mIoU in the README's "
                        "three-seed recipe race (0.1723)")  # fmt: skip
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=V,...",
                        help="a variant instead of the built-in list (repeatable)")  # fmt: skip
    parser.add_argument("--model", default="unet_fast")
    parser.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "loveda"))
    parser.add_argument("--out", help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args()
    if not (Path(args.root) / "Train").is_dir():
        raise SystemExit(f"no LoveDA images under {args.root}: pass --root")
    variants = dict(map(parse_variant, args.variant)) if args.variant else VARIANTS
    seeds = [int(s) for s in args.seeds.split(",")]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"load average at start: {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="recipe-start-") as tmp:
        out = Path(args.out or tmp)
        results = _measure(args, variants, seeds, out)
    print(f"load average at end: {os.getloadavg()}")
    _print_table(args, variants, seeds, results)


def _measure(args, variants: dict, seeds: list[int], out: Path) -> dict:
    from satunet.config import DataConfig, TrainConfig
    from satunet.race.run import race_configs
    from satunet.runtime import configure_cpu_threads, resolve_device
    from satunet.train import apply_recipe

    configure_cpu_threads()
    data = DataConfig(name="loveda", root=args.root, scene="rural", val_fraction=0.2, crop=256)
    train = TrainConfig(batch_size=8, budget_min=args.budget_min, val_every=0.01)
    device = resolve_device("auto", "fp32")
    results: dict[str, dict[int, list[dict]]] = {name: {} for name in variants}
    for seed in seeds:
        ((_, cfg),) = race_configs([args.model], [seed], data=data, train=train,
                                   recipe="fast", device=device)  # fmt: skip
        for name, changes in variants.items():
            changes = dict(changes)
            recipe = str(changes.pop("recipe", "fast"))  # "recipe=study": the study's start
            base = apply_recipe(cfg.train, recipe, device) if recipe != "fast" else cfg.train
            varied = dataclasses.replace(cfg, train=dataclasses.replace(base, **changes))
            run_dir = out / f"{name.replace(' ', '_').replace(',', '')}-seed{seed}"
            points = train_start(varied, run_dir, args.stop_min * 60)
            results[name][seed] = points
            if not points:
                raise SystemExit(f"{name} seed {seed}: no validation point within "
                                 f"--stop-min {args.stop_min}: stop later")  # fmt: skip
            hit = first_at(points, args.target)
            print(f"{name} seed {seed}: {len(points)} points, first >= {args.target} at "
                  f"{'-' if hit is None else f'{hit:.2f} min'}, "
                  f"{points[-1]['train_img_s']:.2f} img/s", flush=True)  # fmt: skip
    return results


def _print_table(args, variants: dict, seeds: list[int], results: dict) -> None:
    minutes = [m for m in (0.5, 1, 2, 3, 5, 10) if m <= args.stop_min]
    print(f"\nFirst {args.stop_min:g} min of a {args.budget_min:g}-min fast-recipe schedule, "
          f"{args.model}, seeds {args.seeds}; min to mIoU {args.target} (first point; "
          f"not reached counts as not reached)\n")  # fmt: skip
    head = " | ".join(f"mIoU at {m} min" for m in minutes)
    print(
        f"| variant | changes | min to {args.target} per seed | seeds reaching | {head} | "
        "train img/s |"
    )
    print("| :--- | :--- | :--- | ---: |" + " ---: |" * len(minutes) + " ---: |")
    for name, changes in variants.items():
        runs = [results[name][s] for s in seeds]
        hits = [first_at(points, args.target) for points in runs]
        per_seed = ", ".join("-" if h is None else f"{h:.2f}" for h in hits)
        at = " | ".join(f"{statistics.mean(miou_by(p, m) for p in runs):.3f}" for m in minutes)
        rate = statistics.mean(p[-1]["train_img_s"] for p in runs)
        what = ", ".join(f"{k}={v}" for k, v in changes.items()) or "(as is)"
        reached = sum(h is not None for h in hits)
        print(f"| {name} | {what} | {per_seed} | {reached}/{len(seeds)} | {at} | {rate:.2f} |")


if __name__ == "__main__":
    main()
