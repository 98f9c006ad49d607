"""`satunet models`: the registry with parameters, GMACs and the study's footprint figure."""

from __future__ import annotations

import argparse
import json

EXAMPLE = """examples:
  satunet models
  satunet models --num-classes 8 --size 1024
  satunet models --num-classes 5 --format json
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="list the models with parameters, GMACs and the study's footprint figure",
        description="List every registered model with its parameter count, GMACs at one input "
        "size (counted by torch's FlopCounterMode) and the study's 'memory footprint' figure "
        "(torchsummary's forward/backward pass size: a proxy, not measured memory; see "
        "`satunet benchmark` for measured peak memory).",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--num-classes", type=int, default=5, help="output classes (default 5)")
    p.add_argument("--in-channels", type=int, default=3, help="input bands (default 3)")
    p.add_argument("--size", type=int, default=512, help="square input size for GMACs (512)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from satunet.errors import ConfigError
    from satunet.models import list_models
    from satunet.profile import model_facts

    if args.num_classes < 1 or args.in_channels < 1 or args.size < 32:
        raise ConfigError("--num-classes and --in-channels must be >= 1 and --size >= 32")
    facts = [
        model_facts(
            name, num_classes=args.num_classes, in_channels=args.in_channels, size=args.size
        )
        for name in list_models()
    ]
    if args.format == "json":
        print(json.dumps([f.as_dict() for f in facts], indent=2))
        return 0
    print(
        f"{'name':<24} {'params':>12} {'GMACs@' + str(args.size):>11} "
        f"{'study MB*':>10}  description"
    )
    for f in facts:
        print(
            f"{f.name:<24} {f.params:>12,} {f.gmacs:>11.2f} {f.study_footprint_mb:>10.2f}  "
            f"{f.description}"
        )
    print(
        f"\n* the study's 'memory footprint' (torchsummary pass size at 1x{args.in_channels}x"
        f"{args.size}x{args.size}): a proxy, not memory. num_classes={args.num_classes}."
    )
    return 0
