"""`satunet reproduce`: the study's protocol per model, tabled next to its published numbers."""

from __future__ import annotations

import argparse
import sys

EXAMPLE = """examples:
  # the full protocol (hours on a GPU): six models, 50 epochs max, the study's labels
  satunet reproduce --data loveda --root data/loveda --val-fraction 0.2 --out reproduce/loveda
  satunet reproduce --data landcoverai --root data/landcoverai --out reproduce/landcoverai
  # a smoke run on a few tiles: two models, one epoch, 64x64 crops, official labels
  satunet reproduce --data loveda --root ../shared/data/loveda --models unet_skinny,unet_base \\
      --epochs 1 --crop 64 --batch-size 4 --val-fraction 0.25 --labels official --out /tmp/rep
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reproduce",
        help="train the study's models with its protocol and table them next to the paper",
        description="Run the study's protocol (its Table 1 recipe: Adam 1e-3, Jaccard loss, "
        "ReduceLROnPlateau, early stopping, up to 50 epochs) for each model, each in its own run "
        "directory under --out, score the best checkpoint with the standard mIoU and with the "
        "study's per-image metric, and write reproduce.md / reproduce.json with the study's "
        "columns (params, footprint, s/epoch, mIoU) and per-class IoU beside its published "
        "Tables 3/4.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, choices=("loveda", "landcoverai"))
    p.add_argument("--root", required=True, help="dataset root in its official layout")
    p.add_argument(
        "--models", default=None, help="comma-separated model names (default: the study's six)"
    )
    p.add_argument("--epochs", type=int, default=50, help="maximum epochs per model (50)")
    p.add_argument(
        "--labels",
        choices=("official", "study"),
        default="study",
        help="LoveDA labels: 'study' trains no-data as class 0 as the study did (default); "
        "'official' ignores it",
    )
    p.add_argument("--crop", type=int, default=None, help="random training crop (default none)")
    p.add_argument("--batch-size", type=int, default=8, help="batch size (8, the study's)")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.0,
        help="carve this share of training images out for validation (for copies without a "
        "val split); 0 uses the dataset's val split",
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--resume", action="store_true", help="continue runs already in --out")
    p.add_argument("-o", "--out", default="reproduce", help="output folder (./reproduce)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from satunet.reproduce import STUDY_MODELS, reproduce

    models = (
        [m.strip() for m in args.models.split(",") if m.strip()] if args.models else STUDY_MODELS
    )
    report = reproduce(
        args.data,
        args.root,
        models=models,
        epochs=args.epochs,
        labels=args.labels,
        crop=args.crop,
        batch_size=args.batch_size,
        val_fraction=args.val_fraction,
        out=args.out,
        device=args.device,
        resume=args.resume,
        progress=not args.quiet,
    )
    print(report.to_markdown())
    print(
        f"wrote {args.out}/reproduce.md, reproduce.json and one run folder per model",
        file=sys.stderr,
    )
    return 0
