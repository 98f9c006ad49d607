"""`satunet benchmark`: the study's Tables 3/4 (speed, memory) measured side by side here."""

from __future__ import annotations

import argparse
import sys

from satunet.cli._flags import add_device, add_precision

EXAMPLE = """examples:
  # quick look (about 5 minutes on a 2-core CPU): reduced input size, stated in the output
  satunet benchmark --size 256 --batch-size 2 --rounds 3
  # the study's setting: 512x512 tiles, batch 8, all six study models; files into bench/
  satunet benchmark --size 512 --batch-size 8 --out bench/
  # bf16 autocast + channels_last against fp32 measured in the same run
  satunet benchmark --device cpu --precision bf16 --channels-last --size 256 --batch-size 2
  # refuse (exit 1, no table) when the machine is loaded or a model's rounds disagree by > 10 %
  satunet benchmark --models unet_fast,smp:Unet:resnet18 --size 256 --batch-size 2 --strict \
      --max-spread 0.1
  # two models as JSON, on a GPU, with torch.compile
  satunet benchmark --models unet_skinny,unet_base --device cuda --compile --format json
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "benchmark",
        help="measure training/inference speed and peak memory of models side by side",
        description="Measure models side by side on this machine, in interleaved rounds after "
        "warm-up, on synthetic inputs: parameters, GMACs, the study's footprint figure, measured "
        "peak memory of a training step, training images/s (forward + backward + Adam step) and "
        "the epoch times it implies for LoveDA and LandCover.ai, inference latency p50/p95 at "
        "batch 1 and images/s at the batch size, each as a ratio to a reference model. "
        "Speed options (--precision, --channels-last, --compile, --fold-bn) are measured against "
        "fp32 eager in the same run.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--models",
        default=None,
        help="comma-separated model names (default: the study's six; see `satunet models`)",
    )
    p.add_argument("--size", type=int, default=512, help="square input size (default 512)")
    p.add_argument("--batch-size", type=int, default=8, help="training/inference batch (8)")
    add_device(p)
    add_precision(p)
    p.add_argument("--channels-last", action="store_true", help="NHWC weights and inputs")
    p.add_argument(
        "--compile", action="store_true", help="torch.compile (compile time reported apart)"
    )
    p.add_argument(
        "--fold-bn", action="store_true", help="fold BatchNorm into the convs for inference"
    )
    p.add_argument("--num-classes", type=int, default=5, help="output classes (default 5)")
    p.add_argument("--in-channels", type=int, default=3, help="input bands (default 3)")
    p.add_argument(
        "--reference",
        default="deeplabv3plus_resnet34",
        help="model the ratios are relative to; 'none' for no ratios",
    )
    p.add_argument("--rounds", type=int, default=3, help="timed interleaved rounds (3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up rounds (1)")
    p.add_argument("--no-train", action="store_true", help="skip the training measurement")
    p.add_argument("--no-infer", action="store_true", help="skip the inference measurement")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument(
        "--max-spread",
        type=float,
        default=0.2,
        help="flag a model whose per-round img/s spread, (max - min) / median, exceeds this "
        "(default 0.2)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="refuse (exit 1, no table) a run that is noisy, or started with the 1-minute load "
        "average above the usable cores; without it, such a table carries a warning line",
    )
    p.add_argument("--format", choices=("md", "csv", "json"), default="md", help="stdout format")
    p.add_argument(
        "-o", "--out", default=None, help="folder for table.md, results.csv/json, chart.png"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from satunet.benchmark import STUDY_MODELS, benchmark_models
    from satunet.errors import ConfigError
    from satunet.files import check_output_dir
    from satunet.models import check_model_name

    if args.models is None:
        names = list(STUDY_MODELS)
    else:
        names = [n.strip() for n in args.models.split(",") if n.strip()]
        if not names:
            raise ConfigError(
                f"--models {args.models!r} names no model: give comma-separated names (see "
                "`satunet models`), or leave --models out for the study's six"
            )
    for name in names:
        check_model_name(name)
    if len(set(names)) != len(names):
        raise ConfigError(f"--models lists a model twice: {args.models}")
    reference = None if args.reference.lower() == "none" else args.reference
    if args.max_spread <= 0:
        raise ConfigError(f"--max-spread must be > 0, got {args.max_spread}")
    if args.out:  # before the measurements, which take minutes
        check_output_dir(args.out, what="--out folder")
    if args.strict and _refuse(_loaded_now()):
        return 1
    report = benchmark_models(
        names,
        size=args.size,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
        channels_last=args.channels_last,
        compile=args.compile,
        fold_bn=args.fold_bn,
        num_classes=args.num_classes,
        in_channels=args.in_channels,
        rounds=args.rounds,
        warmup=args.warmup,
        reference=reference,
        measure_train=not args.no_train,
        measure_infer=not args.no_infer,
        measure_memory=not args.no_memory,
        progress=not args.quiet,
        max_spread=args.max_spread,
    )
    noise = report.settings.get("noise") or {}
    if args.strict and _refuse(noise.get("warnings") or []):
        return 1
    if args.format == "json":
        print(report.to_json())
    elif args.format == "csv":
        sys.stdout.write(report.to_csv())
    else:
        print(report.to_markdown())
    if args.out:
        files = report.save(args.out)
        print(f"wrote {', '.join(str(p) for p in files.values())}", file=sys.stderr)
    return 0


def _loaded_now() -> list[str]:
    from satunet.benchmark.noise import load_average, load_warning
    from satunet.runtime import usable_cores

    warning = load_warning(load_average(), usable_cores())
    return [warning] if warning else []


def _refuse(warnings: list[str]) -> bool:
    """With --strict: print why the run is refused (no table) and return True."""
    if not warnings:
        return False
    print(
        "satunet benchmark: refused (--strict): the timings would not be trustworthy:\n"
        + "\n".join(f"  - {w}" for w in warnings)
        + "\nrun on an idle machine, add --rounds, or drop --strict to get the table with a "
        "warning line",
        file=sys.stderr,
    )
    return True
