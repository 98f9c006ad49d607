"""Proxy accuracy of the new presets against the study's models: a thin caller of `satunet race`.

Every model trains for the same *training-time* budget (validation excluded), one after another,
with the same recipe, seeds, crop and the same 16/4 split by source image of the 20 real LoveDA
Train/Rural images in ../shared/data/loveda (official labels: 7 classes, no-data ignored). It
replaces the old fixed-epoch proxy, whose 64 optimizer steps left most models predicting one
class. Writes OUT/race.md, race.json, curves.png and the run folders; prints race.md. Minutes to
hours depending on the machine, and only meaningful on an otherwise idle one.

    .venv/bin/python benchmarks/proxy_accuracy.py --budget-min 20 --seeds 0,1,2
    .venv/bin/python benchmarks/proxy_accuracy.py --models unet_fast,deeplabv3plus_resnet34 \
        --budget-min 2 --recipe study
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from satunet.race import race

DEFAULT_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "loveda"
MODELS = "deeplabv3plus_resnet34,unet_skinny,unet_fast,unet_v2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=MODELS, help=f"comma-separated ({MODELS})")
    parser.add_argument("--root", default=str(DEFAULT_ROOT), help="LoveDA root (Train/Rural)")
    parser.add_argument("--budget-min", type=float, default=5.0, help="minutes per model (5)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (0)")
    parser.add_argument("--recipe", choices=("fast", "study"), default="fast")
    parser.add_argument("--crop", type=int, default=256, help="random training crop")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="runs/proxy_accuracy", help="race folder")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    race(
        args.models.split(","),
        data="loveda",
        root=args.root,
        scene="rural",
        val_fraction=0.2,  # 4 of the 20 source images
        budget_min=args.budget_min,
        seeds=[int(s) for s in args.seeds.split(",")],
        recipe=args.recipe,
        crop=args.crop,
        batch_size=args.batch_size,
        device=args.device,
        out=args.out,
        command=shlex.join([sys.executable, *sys.argv]),
    )
    print((Path(args.out) / "race.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
