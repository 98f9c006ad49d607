"""`satunet data download|check|stats`: fetch, validate and summarise datasets."""

from __future__ import annotations

import argparse
import json

EXAMPLE = """examples:
  satunet data download loveda --root data/loveda --split train --split val
  satunet data download landcoverai --root data/landcoverai
  satunet data check loveda --root data/loveda
  satunet data check folder --root my_tiles --format json
  satunet data stats loveda --root data/loveda --split train --scene rural
"""

DATASETS = ("loveda", "landcoverai", "folder")


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
    d.add_argument("dataset", choices=("loveda", "landcoverai"))
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
    c.add_argument("dataset", choices=DATASETS)
    c.add_argument("--root", required=True)
    c.add_argument("--split", choices=("train", "val", "test"), help="only this split")
    c.add_argument("--format", choices=("table", "json"), default="table")
    c.set_defaults(run=run_check)

    s = actions.add_parser(
        "stats",
        help="class pixel histogram (as the model sees labels) and per-channel mean/std",
        epilog="example: satunet data stats loveda --root data/loveda --scene rural",
    )
    s.add_argument("dataset", choices=DATASETS)
    s.add_argument("--root", required=True)
    s.add_argument("--split", choices=("train", "val", "test"), default="train")
    s.add_argument("--scene", choices=("urban", "rural", "both"), help="LoveDA scene")
    s.add_argument("--labels", choices=("official", "study"), help="LoveDA label mapping")
    s.add_argument(
        "--max-samples", type=int, default=256, help="samples used for mean/std (default 256)"
    )
    s.add_argument("--format", choices=("table", "json"), default="table")
    s.set_defaults(run=run_stats)


def run_download(args: argparse.Namespace) -> int:
    from satunet.data.download import download_dataset

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
    from satunet.data.check import check_dataset

    report = check_dataset(args.dataset, args.root, split=args.split)
    if args.format == "json":
        print(json.dumps(report.as_dict(), indent=2))
        return 0 if report.ok else 1
    print(f"{args.dataset} at {report.root}: {report.pairs} image/mask pairs")
    print(f"\n{'split':<6} {'part':<13} {'images':>7} {'masks':>7}")
    for part in report.parts:
        if part.present:
            print(f"{part.split:<6} {part.scene:<13} {part.images:>7} {part.masks:>7}")
        else:
            print(f"{part.split:<6} {part.scene:<13} {'absent':>7}")
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
    import torch
    from tqdm.auto import tqdm

    from satunet.data import create_dataset
    from satunet.data.transforms import compute_normalization
    from satunet.errors import ConfigError

    if args.max_samples < 1:
        raise ConfigError(f"--max-samples must be >= 1, got {args.max_samples}")
    options = {}
    if args.scene or args.labels:
        if args.dataset != "loveda":
            raise ConfigError("--scene and --labels apply to loveda only")
        options = {k: v for k, v in (("scene", args.scene), ("labels", args.labels)) if v}
    if args.dataset != "landcoverai":  # whole images: same pixels as the tiles, fewer reads
        options["tile_size"] = None
    dataset = create_dataset(args.dataset, args.root, args.split, **options)
    size = max(dataset.num_classes, (dataset.ignore_index or 0) + 1)
    counts = torch.zeros(size, dtype=torch.int64)
    if dataset.labeled:  # masks are validated on read, so every value is < size
        for i in tqdm(range(len(dataset)), desc="histogram", unit="sample", disable=None):
            counts += torch.bincount(dataset.read(i)["mask"].flatten(), minlength=size)
    norm = compute_normalization(dataset, max_samples=args.max_samples)
    total = int(counts.sum())
    rows = []
    for c, name in enumerate(dataset.classes):
        rows.append({"id": c, "class": name, "pixels": int(counts[c])})
    if dataset.ignore_index is not None:
        rows.append(
            {
                "id": dataset.ignore_index,
                "class": "(ignored)",
                "pixels": int(counts[dataset.ignore_index]),
            }
        )
    for row in rows:
        row["share"] = row["pixels"] / total if total else 0.0
    result = {
        "dataset": args.dataset,
        "split": args.split,
        "samples": len(dataset),
        "classes": rows,
        "normalization": norm,
    }
    if args.format == "json":
        print(json.dumps(result, indent=2))
        return 0
    print(f"{dataset!r}, split {args.split}")
    if total:
        print(f"\n{'id':>5}  {'class':<20} {'pixels':>14} {'share':>7}")
        for row in rows:
            print(f"{row['id']:>5}  {row['class']:<20} {row['pixels']:>14,} {row['share']:>7.2%}")
    else:
        print("(unlabeled split: no class histogram)")
    mean = ", ".join(f"{m:.4f}" for m in norm["mean"])
    std = ", ".join(f"{s:.4f}" for s in norm["std"])
    print(f"\nper-channel mean: [{mean}]\nper-channel std:  [{std}]")
    return 0
