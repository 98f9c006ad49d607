"""`satunet race`: time-to-accuracy, models trained one after another on the same budget."""

from __future__ import annotations

import argparse

from satunet.cli._flags import add_dataset, add_device, non_negative_int, positive_int

EXAMPLE = """examples:
  satunet race unet_fast,deeplabv3plus_resnet34 --data loveda --root ../shared/data/loveda \\
      --scene rural --val-fraction 0.2 --budget-min 1 --seeds 0 --out runs/race-smoke
  satunet race unet_base,unet_skinny,unet_fast,unet_v2,deeplabv3plus_resnet34 --data loveda \\
      --root ../shared/data/loveda --scene rural --val-fraction 0.2 --budget-min 20 \\
      --seeds 0,1,2 --recipe fast --out runs/race-20min
  satunet race unet_fast,unet_fast@study --data loveda --root ../shared/data/loveda \
      --scene rural --budget-min 20 --out runs/race-recipes     # the recipes against each other
  satunet race ... --out runs/race-20min --resume     # continue a race that was stopped

Every model trains for --budget-min minutes of *training* time per seed (validation runs every
10% of the budget and is not counted), one run at a time, with the same recipe, data split,
crop and batch. Writes OUT/race.md, OUT/race.json, OUT/curves.png and OUT/runs/MODEL-seedS/.
Recipes: `study` is the study's exactly (Adam 1e-3, ReduceLROnPlateau, Jaccard loss, early
stop 5); `fast` is AdamW + warm-up + cosine over the budget, Jaccard + cross-entropy, decoded
tiles cached, bf16 + channels_last where the CPU has AVX-512 BF16 / AMX (or on a GPU).
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "race",
        help="time-to-accuracy: train models on the same wall-clock budget and compare",
        description="Train every model with the same recipe, data, crops and seeds for the same "
        "training-time budget, one after another, validating on a fixed schedule of elapsed "
        "time; report final mIoU over seeds, time to the slowest model's accuracy, and curves.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("models", help="comma-separated entries: MODEL (a registry name or FILE:NAME) "
                   "or MODEL@RECIPE to race a model under another recipe, e.g. "
                   "unet_fast,unet_fast@study")  # fmt: skip
    add_dataset(p, required=True)
    p.add_argument("--budget-min", type=float, required=True, metavar="M",
                   help="minutes of training time per model and seed")  # fmt: skip
    p.add_argument("--seeds", default="0", help="comma-separated seeds (0)")
    p.add_argument("--recipe", choices=("fast", "study"), default="fast", help="recipe (fast)")
    p.add_argument("--val-fraction", type=float, default=0.2, metavar="F",
                   help="validation carve-out of the training split, by source image "
                   "(0.2)")  # fmt: skip
    p.add_argument("--split-seed", type=int, default=0,
                   help="seed of that carve-out, the same for every seed (0)")  # fmt: skip
    p.add_argument("--crop", type=positive_int, default=256, help="random training crop (256)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="batch size (8)")
    p.add_argument("--val-every", type=float, default=0.1, metavar="FRACTION",
                   help="validate every this fraction of the budget (0.1)")  # fmt: skip
    p.add_argument("--workers", type=non_negative_int, default=0, help="loader workers (0)")
    p.add_argument("--mixed", choices=("auto", "on", "off"), default="auto",
                   help="fast recipe's bf16 + channels_last: auto (where the hardware has "
                   "bf16), on or off")  # fmt: skip
    p.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a dataset option, e.g. tile_size=256 (repeatable)")  # fmt: skip
    p.add_argument("--reference", help="entry whose final mIoU is the target (the slowest)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted race in --out: reuse its finished runs "
                   "(same settings), run the rest; an unfinished run is kept aside and run "
                   "again")  # fmt: skip
    add_device(p)
    p.add_argument("-o", "--out", default="runs/race", help="output folder (runs/race)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import shlex
    import sys
    from pathlib import Path

    from satunet.errors import ConfigError
    from satunet.race import race

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    if not 0 < args.val_fraction < 1:
        raise ConfigError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    if not 0 < args.val_every <= 1:
        raise ConfigError(f"--val-every must be in (0, 1], got {args.val_every}")
    options = dict(_option(item) for item in args.data_option)
    result = race(
        models,
        data=args.data,
        root=args.root,
        budget_min=args.budget_min,
        seeds=seeds,
        recipe=args.recipe,
        scene=args.scene,
        val_fraction=args.val_fraction,
        crop=args.crop,
        batch_size=args.batch_size,
        out=args.out,
        device=args.device,
        val_every=args.val_every,
        workers=args.workers,
        split_seed=args.split_seed,
        mixed={"auto": None, "on": True, "off": False}[args.mixed],
        reference=args.reference,
        data_options=options,
        progress=sys.stderr.isatty() and not args.quiet,
        command="satunet " + shlex.join(sys.argv[1:]),
        resume=args.resume,
    )
    out = Path(args.out)
    print((out / "race.md").read_text(encoding="utf-8"))
    print(f"wrote {out / 'race.md'}, {out / 'race.json'}, {out / 'curves.png'}, {out / 'runs'}/")
    return 0 if result else 1


def _option(item: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE read as TOML (bare words are strings, none is None)."""
    import tomllib

    from satunet.errors import ConfigError

    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--data-option {item!r} must look like KEY=VALUE, e.g. tile_size=256")
    if text.strip().lower() in {"none", "null"}:
        return key.strip(), None
    try:
        return key.strip(), tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return key.strip(), text
