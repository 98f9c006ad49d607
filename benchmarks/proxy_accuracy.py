"""Proxy accuracy of the new presets against the study's models, trained identically.

Trains each model from scratch with the same recipe (the study's loss, optimizer and batch,
seed, crop and number of epochs) on the 20 real LoveDA Train/Rural images of
../shared/data/loveda: 16 images (64 tiles of 512x512) train, 4 validate (official labels:
7 classes, no-data ignored), split by source image with the seed. Prints a Markdown table of
the best validation mIoU. A few epochs on 16 images rank designs; they are not the accuracy a
full LoveDA training reaches. Not a test: it takes minutes to hours depending on the machine.

    .venv/bin/python benchmarks/proxy_accuracy.py --epochs 10 --crop 256
    .venv/bin/python benchmarks/proxy_accuracy.py --models unet_fast,deeplabv3plus_resnet34 \
        --epochs 3 --crop 128 --precision bf16
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from satunet.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from satunet.profile import model_facts
from satunet.train import train_from_config

DEFAULT_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "loveda"
MODELS = "deeplabv3plus_resnet34,unet_skinny,unet_fast,unet_v2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=MODELS, help=f"comma-separated ({MODELS})")
    parser.add_argument("--root", default=str(DEFAULT_ROOT), help="LoveDA root (Train/Rural)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--crop", type=int, default=256, help="random training crop")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/proxy_accuracy", help="run folders and JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    out = Path(args.out)
    rows = []
    for name in args.models.split(","):
        cfg = RunConfig(
            model=ModelConfig(name=name),
            data=DataConfig(
                name="loveda",
                root=args.root,
                scene="rural",
                val_fraction=0.2,  # 4 of the 20 source images
                crop=args.crop,
                options={"tile_size": 512, "labels": "official"},
            ),
            train=TrainConfig(
                epochs=args.epochs,
                batch_size=args.batch_size,
                lr=args.lr,
                early_stopping=args.epochs + 1,  # same number of epochs for every model
                loss="jaccard",
                precision=args.precision,
                device=args.device,
                seed=args.seed,
            ),
        )
        start = time.perf_counter()
        summary = train_from_config(cfg, out / name, progress=False)
        facts = model_facts(name, num_classes=7)
        best = summary["best"] or {}
        rows.append(
            {
                "model": name,
                "params": facts.params,
                "gmacs": facts.gmacs,
                "epochs": summary["epochs_run"],
                "best_epoch": summary["best_epoch"],
                "val_miou": best.get("miou"),
                "val_study_miou": best.get("study_miou"),
                "train_s_per_epoch": summary["mean_train_time_s"],
                "wall_s": round(time.perf_counter() - start, 1),
            }
        )
    settings = vars(args) | {"torch": torch.__version__, "threads": torch.get_num_threads()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "proxy_accuracy.json").write_text(
        json.dumps({"settings": settings, "rows": rows}, indent=2)
    )

    print(
        f"Proxy accuracy: LoveDA Train/Rural, 16 images train / 4 val (seed {args.seed}), "
        f"official labels, {args.epochs} epochs, crop {args.crop}, batch {args.batch_size}, "
        f"lr {args.lr}, jaccard loss, {args.precision}, from scratch\n"
    )
    print("| model | params | GMACs@512 | val mIoU | best epoch | train s/epoch |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        miou = "-" if r["val_miou"] is None else f"{r['val_miou']:.4f}"
        t = "-" if r["train_s_per_epoch"] is None else f"{r['train_s_per_epoch']:.1f}"
        print(
            f"| {r['model']} | {r['params']:,} | {r['gmacs']:.2f} | {miou} | "
            f"{r['best_epoch']} | {t} |"
        )


if __name__ == "__main__":
    main()
