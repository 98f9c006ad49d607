"""`satunet train`: train a model from a TOML config and/or flags into a run directory."""

from __future__ import annotations

import argparse
import json

from satunet.cli._flags import DEVICES_HELP

EXAMPLE = """examples:
  satunet train --model unet_skinny --data loveda --root data/loveda --scene rural \\
      --epochs 2 --crop 128 --batch-size 4 --val-fraction 0.2 --out runs/skinny
  satunet train -c configs/loveda_skinny.toml --set train.lr=3e-4 --out runs/skinny_lr
  satunet train --resume runs/skinny --set train.epochs=80
  satunet train -c configs/loveda_skinny.toml --log tensorboard --out runs/tb
  torchrun --nproc_per_node 4 -m satunet train -c configs/loveda_skinny.toml --out runs/ddp

The run directory gets config.toml (resolved), metrics.jsonl (one line per epoch), last.pt
(every epoch), best.pt (best validation mIoU), curves.png, predictions.png, scores.json and
scores.md. The recipe (--recipe) is the study's Table 1 (Adam lr 1e-3, weight decay 1e-3,
plateau LR (patience 2, factor 0.5), early stopping 5, 50 epochs, batch 8, Jaccard loss) for the
study's models and baselines, and `fast` for satunet's own presets (unet_fast,
unet_fast_stride4, unet_v2).
"""

# Plain flags: sugar for --set overrides, applied before the explicit --set ones.
FLAGS = {
    "model": "model.name",
    "data": "data.name",
    "root": "data.root",
    "scene": "data.scene",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "crop": "data.crop",
    "val_fraction": "data.val_fraction",
    "workers": "train.num_workers",
    "device": "train.device",
    "precision": "train.precision",
    "seed": "train.seed",
    "log": "train.log",
}


def config_keys_help(width: int = 96) -> str:
    """Every config key with its type and default, read from the config dataclasses' fields."""
    import dataclasses
    import textwrap

    from satunet.config import DataConfig, ModelConfig, TrainConfig

    lines = ["config keys (TOML sections, or --set SECTION.KEY=VALUE), with their defaults:"]
    for section, cls in (("model", ModelConfig), ("data", DataConfig), ("train", TrainConfig)):
        items = []
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                default = repr(f.default)
            elif f.default_factory is not dataclasses.MISSING:
                default = repr(f.default_factory())
            else:
                default = "required"
            items.append(f"{section}.{f.name}={default}")
        lines += textwrap.wrap(", ".join(items), width, initial_indent="  ",
                               subsequent_indent="    ")  # fmt: skip
    return "\n".join(lines) + "\n"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model into a run directory (resumable; DDP under torchrun)",
        description="Train a segmentation model with the study's recipe or satunet's fast "
        "one (fixed: averaged gradient accumulation, best checkpoint kept, deterministic "
        "validation, standard mIoU). Settings come from a flat TOML config (-c), plain "
        "flags, and --set section.key=value overrides, in that order.",
        epilog=EXAMPLE + "\n" + config_keys_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-c", "--config", metavar="FILE", help="TOML config ([model], [data], [train])")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value (repeatable), e.g. train.lr=3e-4 or "
        "model.options.upsample=bilinear",
    )
    p.add_argument("--model", help="registered model (see `satunet models`) or presets.toml:NAME")
    p.add_argument(
        "--data", metavar="NAME", help="a registered dataset (list them: `satunet data list`)"
    )
    p.add_argument("--root", metavar="DIR", help="dataset root folder")
    p.add_argument("--scene", help="LoveDA scene: urban, rural or both")
    p.add_argument("--epochs", type=int, help="maximum epochs (default 50)")
    p.add_argument("--batch-size", type=int, help="logical batch over all processes (8)")
    p.add_argument("--crop", type=int, metavar="SIZE", help="train on random SIZE crops")
    p.add_argument(
        "--val-fraction",
        type=float,
        metavar="F",
        help="carve validation out of the training split, by source image (seeded)",
    )
    p.add_argument("--workers", type=int, metavar="N", help="data loader worker processes (0)")
    p.add_argument("--device", metavar="DEVICE", help=DEVICES_HELP)
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), help="default fp32")
    p.add_argument("--seed", type=int, help="seed of init, shuffling, augmentation and split")
    p.add_argument("--recipe", choices=("study", "fast"),
                   help="study: the study's Table 1; fast: AdamW + warm-up + cosine, Jaccard "
                   "+ CE, bf16 + channels_last where the CPU has bf16, tiles cached (see "
                   "`satunet race`). Default: fast for satunet's presets (unet_fast, "
                   "unet_fast_stride4, unet_v2) and presets files saying recipe = \"fast\", "
                   "study for the rest. Config keys and --set win over it")  # fmt: skip
    p.add_argument(
        "--log",
        choices=("none", "tensorboard", "mlflow"),
        help="follow the run in TensorBoard or MLflow (extras [tensorboard], [mlflow]); "
        "--set train.mlflow_uri=URI for a server",
    )
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("-o", "--out", metavar="RUN_DIR", help="new run directory")
    target.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")
    p.set_defaults(run=run)


def _flag_overrides(args: argparse.Namespace) -> list[str]:
    out = []
    for flag, key in FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            # JSON quoting makes any string a TOML string; numbers stay numbers.
            out.append(f"{key}={json.dumps(value)}")
    return out


def run(args: argparse.Namespace) -> int:
    from satunet.config import apply_overrides, load_config
    from satunet.errors import ConfigError
    from satunet.train import load_recipe_config, load_run_config, train_from_config

    overrides = _flag_overrides(args) + list(args.overrides)
    if args.resume and args.recipe:
        raise ConfigError("--recipe starts a new run; a resumed run keeps its own recipe")
    if args.resume:
        # The run's own config, then whatever is changed now: check_resume refuses a different
        # model or dataset and says what differs.
        cfg = load_run_config(args.resume)
        if args.config:
            cfg = load_config(args.config, [])
        cfg = apply_overrides(cfg, overrides)
        run_dir = args.resume
    else:
        cfg = load_recipe_config(args.config, overrides, args.recipe)
        run_dir = args.out
    if not cfg.data.root:
        raise ConfigError("no dataset root: give --root DIR or data.root in the config")
    summary = train_from_config(
        cfg, run_dir, resume=bool(args.resume), progress=not getattr(args, "quiet", False)
    )
    if summary["rank"] != 0:  # under torchrun, one process reports
        return 0
    if args.json:
        print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))
    elif summary.get("finished"):
        print(f"{summary['run_dir']}: nothing trained: {summary['finished']}")
    else:
        from satunet.report import fmt

        best = summary["best"] or {}
        print(
            f"{summary['run_dir']}: {summary['epochs_run']} epochs, best epoch "
            f"{summary['best_epoch']}: val mIoU {fmt(best.get('miou'))} (study metric "
            f"{fmt(best.get('study_miou'))}), {fmt(summary['mean_epoch_time_s'], 1)} s/epoch"
        )
    return 0
