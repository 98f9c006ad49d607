"""The `satunet` command: one subcommand per module in this package. Only the CLI prints."""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence

from satunet import __version__
from satunet.errors import SatunetError

# Every public module of this package is one subcommand with add_parser(subparsers) and
# run(args) -> int. Heavy imports happen inside run(), so `satunet --help` stays fast.
ORDER = ("models", "data", "train", "evaluate", "reproduce", "benchmark", "search", "predict")


def _command_modules() -> list:
    names = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    names.sort(key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    return [importlib.import_module(f"{__name__}.{name}") for name in names]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="satunet",
        description="Fast UNet-family semantic segmentation of satellite and aerial imagery.",
        epilog="Example: satunet models --num-classes 5 --format json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"satunet {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in _command_modules():
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `satunet` and `python -m satunet`; returns the exit status."""
    args = build_parser().parse_args(argv)
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    try:
        return int(args.run(args) or 0)
    except SatunetError as e:
        print(f"satunet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"satunet {args.command}: interrupted", file=sys.stderr)
        return 130
