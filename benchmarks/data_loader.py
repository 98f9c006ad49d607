"""Tiles per second a DataLoader delivers from real LoveDA tiles, with 0, 1 and 2 workers.

Reads the 20 real Train/Rural images of ../shared/data/loveda (80 tiles of 512x512) through
``satunet.data.LoveDA`` with the study's training transforms, and prints a Markdown table.
Not a test: numbers depend on the machine and on what else runs on it.

    .venv/bin/python benchmarks/data_loader.py
    .venv/bin/python benchmarks/data_loader.py --workers 0 1 2 4 --epochs 5 --no-transforms
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from satunet.data import LoveDA
from satunet.data.transforms import train_transforms

DEFAULT_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "loveda"


def measure(
    dataset: LoveDA, workers: int, batch_size: int, epochs: int, shuffle: bool
) -> dict[str, float]:
    """Start-up (time to the first batch) and steady tiles/s over the remaining batches."""
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),
    )
    start = time.perf_counter()
    first = None
    tiles = 0
    for _ in range(epochs):
        for batch in loader:
            if first is None:
                first = time.perf_counter()
                continue
            tiles += batch["image"].shape[0]
    end = time.perf_counter()
    if first is None:
        raise SystemExit("the dataset is empty")
    return {
        "startup_s": first - start,
        "tiles_per_s": tiles / (end - first),
        "tiles": tiles,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3, help="passes over the 80 tiles")
    parser.add_argument("--no-transforms", action="store_true", help="read only, no jitter")
    parser.add_argument("--no-shuffle", action="store_true", help="in-order (evaluation) reads")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads of the main process (workers always use 1); on a busy "
        "machine several threads make the in-process (0 workers) jitter much slower",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    transforms = None if args.no_transforms else train_transforms()
    dataset = LoveDA(args.root, "train", scene="rural", transforms=transforms)
    torch.manual_seed(0)
    print(
        f"LoveDA {len(dataset)} tiles of 512x512 from {args.root}; batch {args.batch_size}, "
        f"{args.epochs} epochs, shuffle={not args.no_shuffle}, "
        f"transforms={'none' if transforms is None else 'study train'}; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads\n"
    )
    print("| workers | tiles/s | ms/tile | start-up to first batch (s) |")
    print("|--------:|--------:|--------:|----------------------------:|")
    for workers in args.workers:
        r = measure(dataset, workers, args.batch_size, args.epochs, not args.no_shuffle)
        print(
            f"| {workers} | {r['tiles_per_s']:.1f} | {1000 / r['tiles_per_s']:.1f} | "
            f"{r['startup_s']:.2f} |"
        )


if __name__ == "__main__":
    main()
