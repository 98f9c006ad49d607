"""`satunet benchmark`: the study's Tables 3/4 (speed, memory) measured side by side here."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from satunet.cli._flags import add_dataset, add_device, add_precision, positive_int

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
  # one model on every backend x precision (torch/ONNX Runtime/OpenVINO, fp32/bf16/int8),
  # int8 quantized here on real tiles, timed and scored on the first 4 val tiles
  satunet benchmark --backends torch,onnx,openvino --precisions fp32,bf16,int8 \
      --checkpoint runs/fast/best.pt --data loveda --root data/loveda --batch-size 4
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
        "-o", "--out", default=None,
        help="folder for table.md, results.csv/json, chart.png (with --backends: backends.md, "
        "backends.json)",
    )  # fmt: skip
    add_matrix_flags(p)
    p.set_defaults(run=run)


def add_matrix_flags(p: argparse.ArgumentParser) -> None:
    """--backends/--precisions: one model on every inference backend x precision instead."""
    g = p.add_argument_group(
        "backends x precisions (inference only; instead of the benchmark above when "
        "--backends or --precisions is given)"
    )
    g.add_argument(
        "--backends",
        metavar="LIST",
        help="comma list of torch, onnx, openvino (default: all three)",
    )
    g.add_argument(
        "--precisions",
        metavar="LIST",
        help="comma list of fp32, bf16, fp16, int8 (default: fp32,bf16,int8)",
    )
    g.add_argument(
        "--checkpoint",
        metavar="CKPT",
        help="a trained checkpoint (default: the one --models name, random weights)",
    )
    g.add_argument(
        "--int8",
        metavar="FILE",
        help="the model's QDQ int8 ONNX file from `satunet quantize` (default: "
        "quantized here, U8S8, first conv float, calibrated on --data tiles or, "
        "without --data, on synthetic ones)",
    )
    add_dataset(g)
    g.add_argument(
        "--split",
        default="val",
        help="split whose first --batch-size tiles are timed and scored (val)",
    )
    g.add_argument(
        "--calibration-split",
        default="train",
        help="split the int8 ranges are calibrated on (train)",
    )
    g.add_argument(
        "--calibration-tiles", type=positive_int, default=16, help="tiles calibrated on (16)"
    )
    g.add_argument("--streams", type=positive_int, default=None,
                   help="OpenVINO parallel requests (default min(2, usable cores))")  # fmt: skip
    g.add_argument("--tta", choices=("none", "flip", "d4"), default="none",
                   help="also time every pair with test-time augmentation (its cost and "
                   "accuracy beside the plain row)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from satunet.benchmark import STUDY_MODELS, benchmark_models
    from satunet.errors import ConfigError
    from satunet.files import check_output_dir
    from satunet.models import check_model_name

    if args.backends is not None or args.precisions is not None:
        return run_matrix(args)
    _refuse_matrix_flags(args)
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


# ------------------------------------------------------------- --backends x --precisions

MATRIX_ONLY = ("checkpoint", "int8", "data", "root", "scene", "streams")
MATRIX_DEFAULTS = {"split": "val", "calibration_split": "train", "calibration_tiles": 16,
                   "tta": "none"}  # fmt: skip
# Flags of the models benchmark that mean nothing for the backends matrix (refused, not ignored).
MODELS_ONLY = {"precision": "fp32", "channels_last": False, "compile": False, "fold_bn": False,
               "reference": "deeplabv3plus_resnet34", "no_train": False, "no_infer": False,
               "no_memory": False}  # fmt: skip


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _refuse_matrix_flags(args: argparse.Namespace) -> None:
    from satunet.errors import ConfigError

    given = [n for n in MATRIX_ONLY if getattr(args, n, None) is not None]
    given += [n for n, d in MATRIX_DEFAULTS.items() if getattr(args, n, d) != d]
    if given:
        raise ConfigError(
            f"{', '.join(_flag(n) for n in given)} only apply with --backends/--precisions"
        )


def _check_matrix_args(args: argparse.Namespace) -> None:
    from satunet.errors import ConfigError

    wrong = [n for n, d in MODELS_ONLY.items() if getattr(args, n) != d]
    if wrong:
        raise ConfigError(
            f"{', '.join(_flag(n) for n in wrong)} do not apply with --backends/--precisions "
            "(the torch rows run as `satunet predict` does: BatchNorm folded, channels_last; "
            "precisions come from --precisions)"
        )
    if args.format == "csv":
        raise ConfigError("--backends writes md or json, not csv")
    if (args.data is None) != (args.root is None):
        raise ConfigError("--data and --root go together (real tiles), or leave both out")
    if args.checkpoint and args.models:
        raise ConfigError("give --checkpoint or --models, not both")
    if args.models and len([n for n in args.models.split(",") if n.strip()]) != 1:
        raise ConfigError("--backends measures one model: give one --models name or --checkpoint")


def _matrix_model(args: argparse.Namespace) -> tuple[Any, Any]:
    """(model, ModelInfo): the checkpoint, or the --models name (default unet_fast) seeded."""
    import torch

    from satunet.checkpoint import ModelInfo, load_checkpoint
    from satunet.models import check_model_name, create_model

    if args.checkpoint:
        model, state = load_checkpoint(args.checkpoint)
        return model.eval(), ModelInfo.from_checkpoint(state, model)
    name = (args.models or "unet_fast").strip().strip(",")
    check_model_name(name)
    torch.manual_seed(0)
    model = create_model(name, in_channels=args.in_channels, num_classes=args.num_classes)
    return model.eval(), ModelInfo.from_model(model, name=name)


def _quantize_here(
    model: Any, info: Any, work: Path, calibration: Any, tiles: int
) -> tuple[Path, Path]:
    """(fp32 ONNX, int8 QDQ ONNX) as `satunet quantize` writes them: U8S8, per-channel weights,
    the first conv kept in float, reduce_range on x86 CPUs without VNNI."""
    from satunet import quantize as q

    prepared = q.prepare_fp32(model, info, work)
    reader = q.TileReader(calibration, q.spread(len(calibration), tiles), "x", info.size_multiple)
    target = work / "int8.onnx"
    q.quantize_file(prepared, target, reader, work / "calibration.json", scheme="u8s8",
                    reduce_range=q.needs_reduce_range(),
                    exclude=q.conv_nodes(prepared, q.DEFAULT_KEEP_FLOAT))  # fmt: skip
    return work / "fp32.onnx", target


def _int8_inputs(
    args: argparse.Namespace, model: Any, info: Any, work: Path, precisions: list[str]
) -> dict[str, Any]:
    """int8 / onnx / int8_source for benchmark_backends: --int8, or quantized here."""
    import torch

    from satunet.benchmark.backends import open_dataset

    if "int8" not in precisions:
        return {}
    if args.int8:
        _check_int8_file(Path(args.int8), info)
        return {"int8": args.int8, "int8_source": f"given file {args.int8}"}
    try:
        import onnxruntime.quantization  # noqa: F401
    except ImportError:
        return {}  # the int8 rows then say the file is missing; ORT's own rows say why
    n = args.calibration_tiles
    if args.data:
        calibration = open_dataset(
            info, args.data, args.root, args.calibration_split, args.scene, args.size
        )
        what = f"{min(n, len(calibration))} {args.data} {args.calibration_split} tiles"
    else:
        gen = torch.Generator().manual_seed(1)
        shape = (info.in_channels, args.size, args.size)
        calibration = [{"image": torch.randn(shape, generator=gen)} for _ in range(n)]
        what = f"{n} synthetic normal-noise tiles (no --data: ranges not representative)"
    onnx, int8 = _quantize_here(model, info, work, calibration, n)
    source = f"quantized here (QDQ U8S8, per-channel, first conv float), calibrated on {what}"
    return {"int8": int8, "onnx": onnx, "int8_source": source}


def _check_int8_file(path: Path, info: Any) -> None:
    """Refuse an --int8 file of another model (when it carries satunet's metadata)."""
    from satunet.errors import CheckpointError, ConfigError
    from satunet.infer import read_onnx_info

    if not path.is_file():
        raise ConfigError(f"--int8 {path} does not exist; make it with `satunet quantize`")
    try:
        theirs = read_onnx_info(path)
    except (CheckpointError, ImportError):
        return
    for key in ("in_channels", "num_classes"):
        if getattr(theirs, key) != getattr(info, key):
            raise ConfigError(
                f"--int8 {path} has {key} {getattr(theirs, key)}, the model "
                f"{getattr(info, key)}: quantize this model (`satunet quantize`)"
            )


def run_matrix(args: argparse.Namespace) -> int:
    """`satunet benchmark --backends ... --precisions ...`: the backends x precisions table."""
    import tempfile

    from satunet.benchmark import backends as bb
    from satunet.files import check_output_dir

    _check_matrix_args(args)
    backends = parse_list_or_default(args.backends, bb.BACKEND_CHOICES, None, "--backends")
    precisions = parse_list_or_default(
        args.precisions, bb.PRECISION_CHOICES, ("fp32", "bf16", "int8"), "--precisions"
    )
    if args.out:
        check_output_dir(args.out, what="--out folder")
    if args.strict and _refuse(_loaded_now()):
        return 1
    model, info = _matrix_model(args)
    tiles = None
    if args.data:
        dataset = bb.open_dataset(info, args.data, args.root, args.split, args.scene, args.size)
        tiles = bb.dataset_tiles(info, dataset, f"{args.data} {args.split}", args.batch_size,
                              args.size)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="satunet-bench-int8-") as tmp:
        report = bb.benchmark_backends(
            model, info, backends, precisions, size=args.size, batch_size=args.batch_size,
            rounds=args.rounds, warmup=args.warmup, device=args.device, tiles=tiles,
            streams=args.streams, max_spread=args.max_spread, tta=args.tta,
            **_int8_inputs(args, model, info, Path(tmp), precisions),
        )  # fmt: skip
    if args.strict and _refuse(report.settings["warnings"]):
        return 1
    print(report.to_json() if args.format == "json" else report.to_markdown())
    if args.out:
        files = report.save(args.out)
        print(f"wrote {', '.join(str(p) for p in files.values())}", file=sys.stderr)
    return 0


def parse_list_or_default(
    text: str | None, choices: tuple[str, ...], default: tuple[str, ...] | None, flag: str
) -> list[str]:
    from satunet.benchmark.backends import parse_list

    return parse_list(text, choices, flag) if text is not None else list(default or choices)
