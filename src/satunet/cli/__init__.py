"""The `satunet` command: one subcommand per module in this package. Only the CLI prints."""

from __future__ import annotations

import argparse
import datetime
import errno
import importlib
import logging
import os
import pkgutil
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

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
    # Before torch (imported lazily by the commands) starts OpenMP: idle threads sleep instead
    # of spinning. Spinning threads on a loaded or oversubscribed CPU made 2 threads ~10x slower
    # than 1 (benchmarks/threads.py). An explicit OMP_WAIT_POLICY wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(argv)
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    try:
        return _run_command(args)
    except SatunetError as e:
        print(f"satunet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"satunet {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EROFS, errno.EDQUOT):
            where = f" ({e.filename})" if e.filename else ""
            print(f"satunet {args.command}: error: {e.strerror}{where}", file=sys.stderr)
            return 2
        return _report_bug(args, e)
    except Exception as e:  # the error boundary: anything else is a satunet bug
        return _report_bug(args, e)


def _run_command(args: argparse.Namespace) -> int:
    """Sane CPU threads (train, predict, benchmark, search, each torchrun rank), then the command,
    with log lines printed above any progress bar instead of glued onto it."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    from satunet.runtime import configure_cpu_threads

    configure_cpu_threads()
    with logging_redirect_tqdm():
        return int(args.run(args) or 0)


def _report_bug(args: argparse.Namespace, error: BaseException) -> int:
    """One line on screen naming the command and its input; the traceback goes to a log file."""
    log_path = _bug_log_path(args)
    text = "".join(traceback.format_exception(error))
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(f"satunet {' '.join(sys.argv[1:])}\n{text}\n")
        where = f"the traceback is in {log_path}"
    except OSError:
        where = "the traceback could not be saved"
    subject = _input_of(args)
    print(
        f"satunet {args.command}: internal error ({type(error).__name__}: {error}) while "
        f"processing {subject}. This is a bug in satunet: {where}; please report it with "
        "that file.",
        file=sys.stderr,
    )
    return 1


def _input_of(args: argparse.Namespace) -> str:
    for key in ("checkpoint", "inputs", "config", "root", "resume", "dataset", "models"):
        value = getattr(args, key, None)
        if value:
            return ", ".join(map(str, value)) if isinstance(value, list) else str(value)
    return "the command line"


def _bug_log_path(args: argparse.Namespace) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"satunet-error-{stamp}-{os.getpid()}.log"
    out = getattr(args, "out", None)
    if out:
        out = Path(out)
        folder = out if out.is_dir() or not out.suffix else out.parent
        return folder / name
    return Path.cwd() / name
