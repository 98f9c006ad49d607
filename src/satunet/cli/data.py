"""`satunet data download|check|stats`: fetch, validate and summarise datasets."""

from __future__ import annotations

import argparse
import json

EXAMPLE = """examples:
  satunet data download loveda --root data/loveda --split train --split val
  satunet data download landcoverai --root data/landcoverai
  satunet data check loveda --root data/loveda
  satunet data check folder --root my_tiles --tile 512 --format json
  satunet data stats loveda --root data/loveda --split train --scene rural
"""

DATASET_HELP = "a registered dataset name (list them with `satunet data list`)"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="download, check and summarise datasets",
        description="Download the official LoveDA / LandCover.ai archives (md5-checked, "
        "resumable), validate a dataset folder file by file, or compute its class histogram "
        "and per-channel mean/std.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    d = actions.add_parser(
        "download",
        help="fetch and extract the official archives into --root",
        epilog="example: satunet data download loveda --root data/loveda --split train",
    )
    d.add_argument("dataset", help="a dataset with official archives (see `satunet data list`)")
    d.add_argument("--root", required=True, help="folder to download and extract into")
    d.add_argument(
        "--split",
        action="append",
        choices=("train", "val", "test"),
        help="LoveDA archive to fetch (repeatable; default all three)",
    )
    d.add_argument(
        "--no-checksum",
        action="store_true",
        help="do not re-verify the md5 of archives already on disk (new downloads always are)",
    )
    d.add_argument("--remove-archives", action="store_true", help="delete zips once extracted")
    d.set_defaults(run=run_download)

    c = actions.add_parser(
        "check",
        help="validate the layout and every file; exit 1 when there are problems",
        epilog="example: satunet data check loveda --root data/loveda",
    )
    c.add_argument("dataset", help=DATASET_HELP)
    c.add_argument("--root", required=True)
    c.add_argument("--split", choices=("train", "val", "test"), help="only this split")
    c.add_argument(
        "--tile",
        type=int,
        metavar="N",
        help="training tile size: also flag images smaller than N pixels (default: no check)",
    )
    c.add_argument("--format", choices=("table", "json"), default="table")
    c.set_defaults(run=run_check)

    s = actions.add_parser(
        "stats",
        help="class pixel histogram (as the model sees labels) and per-channel mean/std",
        epilog="example: satunet data stats loveda --root data/loveda --scene rural",
    )
    s.add_argument("dataset", help=DATASET_HELP)
    s.add_argument("--root", required=True)
    s.add_argument("--split", choices=("train", "val", "test"), default="train")
    s.add_argument("--scene", choices=("urban", "rural", "both"), help="LoveDA scene")
    s.add_argument("--labels", choices=("official", "study"), help="LoveDA label mapping")
    s.add_argument(
        "--max-samples", type=int, default=256, help="samples used for mean/std (default 256)"
    )
    s.add_argument("--format", choices=("table", "json"), default="table")
    s.set_defaults(run=run_stats)

    ls = actions.add_parser("list", help="the registered datasets and what each reads")
    ls.set_defaults(run=run_list)


def run_list(args: argparse.Namespace) -> int:
    from satunet.data import DATASETS, downloadable

    fetchable = set(downloadable())
    for name, cls in DATASETS.items():
        summary = (cls.__doc__ or "").strip().splitlines()[0]
        print(f"{name:<12} {summary}{'  [downloadable]' if name in fetchable else ''}")
    return 0


def run_download(args: argparse.Namespace) -> int:
    from satunet.data import download_dataset

    archives = download_dataset(
        args.dataset,
        args.root,
        splits=args.split,
        checksum=not args.no_checksum,
        keep_archives=not args.remove_archives,
    )
    for archive in archives:
        print(f"{archive.name}: md5 ok, extracted into {args.root}")
    print(f"next: satunet data check {args.dataset} --root {args.root}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from satunet.data import check_dataset

    report = check_dataset(args.dataset, args.root, split=args.split, tile=args.tile)
    if args.format == "json":
        print(json.dumps(report.as_dict(), indent=2))
        return 0 if report.ok else 1
    print(f"{args.dataset} at {report.root}: {report.pairs} image/mask pairs")
    if report.parts:
        print(f"\n{'split':<6} {'part':<13} {'images':>7} {'masks':>7}")
    for part in report.parts:
        if part.present:
            print(f"{part.split:<6} {part.scene:<13} {part.images:>7} {part.masks:>7}")
        else:
            print(f"{part.split:<6} {part.scene:<13} {'absent':>7}")
    if report.parts:
        sizes = ", ".join(f"{w}x{h} ({n})" for (h, w), n in sorted(report.sizes.items()))
        print(f"\nimage sizes (WxH): {sizes or 'none read'}")
    total = sum(report.histogram.values())
    if total:
        print(f"\n{'value':>5}  {'class':<20} {'pixels':>14} {'share':>7}")
        for v, n in sorted(report.histogram.items()):
            name = report.classes.get(v, "(not a class)")
            print(f"{v:>5}  {name:<20} {n:>14,} {n / total:>7.2%}")
    for note in report.notes:
        print(f"note: {note}")
    if report.ok:
        print("\nno problems found")
        return 0
    print(f"\n{len(report.problems)} problem(s):")
    for path, message in report.problems:
        print(f"  {path}: {message}")
    return 1


def run_stats(args: argparse.Namespace) -> int:
    from satunet.data.stats import dataset_stats

    result = dataset_stats(
        args.dataset,
        args.root,
        args.split,
        scene=args.scene,
        labels=args.labels,
        max_samples=args.max_samples,
    )
    if args.format == "json":
        print(json.dumps(result, indent=2))
        return 0
    rows, norm = result["classes"], result["normalization"]
    print(f"{result['description']}, split {args.split}")
    if any(row["pixels"] for row in rows):
        print(f"\n{'id':>5}  {'class':<20} {'pixels':>14} {'share':>7}")
        for row in rows:
            print(f"{row['id']:>5}  {row['class']:<20} {row['pixels']:>14,} {row['share']:>7.2%}")
    else:
        print("(unlabeled split: no class histogram)")
    mean = ", ".join(f"{m:.4f}" for m in norm["mean"])
    std = ", ".join(f"{s:.4f}" for s in norm["std"])
    print(f"\nper-channel mean: [{mean}]\nper-channel std:  [{std}]")
    return 0
