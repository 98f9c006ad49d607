"""`satunet search`: the fastest UNet designs on this machine within a latency or GMACs budget."""

from __future__ import annotations

import argparse

from satunet.cli._flags import add_device, add_precision

EXAMPLE = """examples:
  satunet search --budget-ms 100 --trials 12 --out runs/search
  satunet search --budget-gmacs 12 --trials 8 --data loveda --root data/loveda --epochs 2
  satunet search --budget-ms 20 --device cuda --precision bf16 --batch-size 8
  satunet search --budget-gmacs 6 --trials 6 --save-presets my_presets.toml
  # then: satunet train --set model.name=my_presets.toml:cand_s0_007 ...

writes OUT/search.md (Pareto table), OUT/search.json, OUT/pareto.png, OUT/candidates.toml (every
design measured, over-budget ones included and marked "OVER BUDGET" in their description) and
OUT/pareto_presets.toml (the Pareto-optimal ones); any design builds with
create_model("OUT/candidates.toml:NAME", num_classes=...). --budget-gmacs counts GMACs at
512x512 whatever --size is (designs over it are never timed).
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search",
        help="search UNet designs for the fastest ones on this hardware (Pareto table + chart)",
        description="Sample designs from the UNet design space (depth, widths, convs per level, "
        "stem stride, upsampling, separable/grouped convs, residual blocks, skip fusion incl. "
        "UNet v2's SDI, bottleneck context), measure each one side by side with a reference "
        "model using `satunet benchmark`'s method, optionally train each briefly for a proxy "
        "mIoU, and report the Pareto fronts (speed vs accuracy, speed vs GMACs).",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--budget-ms", type=float, help="keep designs with median latency <= X ms")
    budget.add_argument(
        "--budget-gmacs",
        type=float,
        help="keep designs with <= G GMACs per image at 512x512 (whatever --size)",
    )
    p.add_argument("--trials", type=int, default=8, help="designs to measure (default 8)")
    p.add_argument("-o", "--out", default="runs/search", help="output folder (runs/search)")
    p.add_argument("--size", type=int, default=512, help="square input size (512)")
    p.add_argument("--num-classes", type=int, default=5, help="output classes (5)")
    add_device(p)
    add_precision(p)
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    p.add_argument("--batch-size", type=int, default=1, help="batch for timing (1: latency)")
    p.add_argument("--train", action="store_true", help="also measure training throughput")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per model (3)")
    p.add_argument(
        "--reference",
        default="deeplabv3plus_resnet34",
        help="registered model measured alongside for ratios; 'none' to skip",
    )
    p.add_argument("--seed", type=int, default=0, help="sampling and training seed (0)")
    p.add_argument(
        "--no-seeds", action="store_true", help="do not start from unet_fast and unet_v2"
    )
    p.add_argument("--data", help="dataset name for proxy accuracy (e.g. loveda)")
    p.add_argument("--root", help="dataset root for proxy accuracy")
    p.add_argument("--epochs", type=int, default=1, help="proxy training epochs (1)")
    p.add_argument(
        "--budget-min",
        type=float,
        metavar="M",
        help="train each kept design for M minutes of training time with the race's fast "
        "recipe instead of --epochs (a fair, time-to-accuracy proxy)",
    )
    p.add_argument("--crop", type=int, default=256, help="proxy training crop (256)")
    p.add_argument("--save-presets", help="also add the Pareto designs to this .toml/.json file")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from satunet.errors import ConfigError
    from satunet.search import SEEDS, search

    if args.trials < 1 or args.size < 32 or args.rounds < 1 or args.batch_size < 1:
        raise ConfigError("--trials, --rounds and --batch-size must be >= 1 and --size >= 32")
    if args.budget_min is not None and not args.budget_min > 0:
        raise ConfigError(f"--budget-min must be > 0 minutes, got {args.budget_min}")
    if args.epochs < 1 or args.crop < 32:
        raise ConfigError("--epochs must be >= 1 and --crop >= 32")
    for flag, value in (("--budget-ms", args.budget_ms), ("--budget-gmacs", args.budget_gmacs)):
        if value is not None and value <= 0:
            raise ConfigError(f"{flag} must be > 0, got {value}")
    if args.save_presets and not args.save_presets.endswith((".toml", ".json")):
        raise ConfigError(
            f"--save-presets {args.save_presets}: the file must end in .toml or .json"
        )
    from satunet.runtime import resolve_device

    resolve_device(args.device, args.precision)  # a bad --device fails before any work
    progress = sys.stderr.isatty() and not args.quiet
    result = search(
        args.out,
        trials=args.trials,
        budget_ms=args.budget_ms,
        budget_gmacs=args.budget_gmacs,
        size=args.size,
        num_classes=args.num_classes,
        device=args.device,
        precision=args.precision,
        channels_last=args.channels_last,
        batch_size=args.batch_size,
        rounds=args.rounds,
        measure_train=args.train,
        reference=None if args.reference == "none" else args.reference,
        seed=args.seed,
        seeds=() if args.no_seeds else SEEDS,
        data=args.data,
        root=args.root,
        epochs=args.epochs,
        budget_min=args.budget_min,
        crop=args.crop,
        progress=progress,
    )
    out = Path(args.out)
    print((out / "search.md").read_text(encoding="utf-8"))
    if args.save_presets:
        from satunet.search import save_front

        path, names = save_front(result, args.save_presets)
        print(f"added {', '.join(names) or 'no designs'} to {path}")
    if args.budget_gmacs is not None and args.size != 512:
        print(f"note: --budget-gmacs {args.budget_gmacs:g} was applied to GMACs at 512x512; the "
              f"table's GMACs are at --size {args.size}")  # fmt: skip
    print(f"wrote {out / 'search.md'}, {out / 'search.json'}, {out / 'pareto.png'}, "
          f"{out / 'candidates.toml'}")  # fmt: skip
    return 0
