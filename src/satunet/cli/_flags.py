"""Flags several commands share, defined once so they mean the same everywhere."""

from __future__ import annotations

import argparse

DEVICES_HELP = "auto (GPU if torch sees one, else CPU), cpu, cuda or cuda:N (default auto)"


def add_device(p: argparse.ArgumentParser, default: str = "auto") -> None:
    """``--device auto|cpu|cuda|cuda:N``, checked by satunet.runtime.resolve_device."""
    p.add_argument(
        "--device",
        default=default,
        metavar="DEVICE",
        help=DEVICES_HELP.replace("auto)", f"{default})") if default != "auto" else DEVICES_HELP,
    )


def add_precision(
    p: argparse.ArgumentParser, choices: tuple[str, ...] = ("fp32", "bf16", "fp16")
) -> None:
    """``--precision``: fp32, or bf16/fp16 autocast."""
    p.add_argument(
        "--precision",
        choices=choices,
        default="fp32",
        help="fp32, or bf16/fp16 autocast (bf16 is fast on CPUs with AVX-512 BF16/AMX) (fp32)",
    )


def add_dataset(p: argparse.ArgumentParser, required: bool = False) -> None:
    """``--data`` (choices from the dataset registry), ``--root`` and ``--scene``."""
    p.add_argument(
        "--data",
        metavar="NAME",
        required=required,
        help="a registered dataset (list them with `satunet data list`)",
    )
    p.add_argument("--root", metavar="DIR", required=required, help="dataset root folder")
    p.add_argument("--scene", help="LoveDA scene: urban, rural or both")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value
