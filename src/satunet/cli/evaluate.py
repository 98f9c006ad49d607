"""`satunet evaluate`: score a checkpoint on a dataset split; per-class table and scores.json."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from satunet.cli._flags import add_device, add_precision

EXAMPLE = """examples:
  satunet evaluate runs/skinny/best.pt --data loveda --root data/loveda --scene rural --split val
  satunet evaluate runs/lc/best.pt --data landcoverai --root data/landcoverai --split test \\
      --format json
  satunet evaluate runs/skinny/best.pt --split val --val-fraction 0   # the dataset's own Val
  satunet evaluate runs/skinny/best.pt --tta d4     # mean logits over the 8 flips/rotations

Dataset, root, scene and the validation carve-out default to what the checkpoint was trained
with: on a run trained with --val-fraction F, `--split val` rebuilds the same carve-out of the
training split (same F and seed), because data such as the shared LoveDA tiles has no Val
folder. Writes scores.json and scores.md next to the checkpoint unless --out says otherwise.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="per-class IoU of a checkpoint (standard and the study's metric side by side)",
        description="Rebuild the model stored in a satunet checkpoint and score it on a dataset "
        "split: per-class IoU and F1 from one confusion matrix (the standard mIoU) next to the "
        "study's per-image metric, which reproduces its tables but is not comparable.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", help="best.pt or last.pt written by `satunet train`")
    p.add_argument(
        "--data", choices=("loveda", "landcoverai", "folder", "vector"), help="dataset kind"
    )
    p.add_argument("--root", metavar="DIR", help="dataset root folder")
    p.add_argument("--scene", help="LoveDA scene: urban, rural or both")
    p.add_argument("--split", default="val", help="split to score (default val)")
    p.add_argument(
        "--val-fraction",
        type=float,
        metavar="F",
        help="score the carve-out of the training split instead (default: as trained)",
    )
    p.add_argument("--seed", type=int, help="seed of that carve-out (default: as trained)")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass (4)")
    p.add_argument("--workers", type=int, default=0, metavar="N", help="loader workers (0)")
    add_device(p)
    add_precision(p)
    p.add_argument(
        "--tta",
        choices=("none", "flip", "d4"),
        default="none",
        help="test-time augmentation: average logits over flips (3 passes) or D4 (8 passes)",
    )
    p.add_argument("--format", choices=("md", "json"), default="md", help="stdout format (md)")
    p.add_argument("--out", metavar="DIR", help="where scores.json/scores.md go (checkpoint dir)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from satunet.errors import ConfigError
    from satunet.evaluate import evaluate_checkpoint
    from satunet.files import check_output_dir
    from satunet.report import scores_markdown, write_scores

    if args.batch_size < 1 or args.workers < 0:
        raise ConfigError("--batch-size must be >= 1 and --workers >= 0")
    if args.val_fraction is not None and not 0 <= args.val_fraction < 1:
        raise ConfigError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    if args.out:  # before the evaluation, not after it
        check_output_dir(args.out, what="--out folder")
    scores = evaluate_checkpoint(
        args.checkpoint,
        data=args.data,
        root=args.root,
        split=args.split,
        scene=args.scene,
        val_fraction=args.val_fraction,
        seed=args.seed,
        batch_size=args.batch_size,
        num_workers=args.workers,
        device=args.device,
        precision=args.precision,
        progress=not args.quiet,
        tta=args.tta,
    )
    out = Path(args.out) if args.out else Path(args.checkpoint).parent
    json_path, md_path = write_scores(scores, out)
    if args.format == "json":
        print(json.dumps(scores.as_dict(), indent=2))
    else:
        meta = scores.extra
        title = f"{meta['model']} · {meta['dataset']} · {meta['split']}"
        title += f" · TTA {args.tta}" if args.tta != "none" else ""
        print(scores_markdown(scores, title))
        print(f"wrote {json_path} and {md_path}")
    return 0
