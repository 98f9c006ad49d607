"""`satunet models`: the registry with parameters, GMACs and the study's footprint figure."""

from __future__ import annotations

import argparse
import json

EXAMPLE = """examples:
  satunet models
  satunet models --num-classes 8 --size 1024
  satunet models --num-classes 5 --format json
  satunet models --all-smp          # smp's architectures and encoders: smp:ARCH:ENCODER names

Any segmentation-models-pytorch architecture and encoder is a model name: smp:ARCH:ENCODER,
e.g. smp:Unet:resnet18, smp:FPN:mobilenet_v2, smp:Segformer:mit_b0, smp:Unet:tu-convnext_atto
(tu- + any timm model). It works wherever a model name does (train, benchmark --models, ...).
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
    p.add_argument(
        "--all-smp",
        action="store_true",
        help="list smp's architectures (each with its default encoder: params and GMACs at "
        "--size) and every smp encoder, instead of the registry",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from satunet.errors import ConfigError
    from satunet.models import list_models
    from satunet.profile import model_facts

    if args.num_classes < 1 or args.in_channels < 1 or args.size < 32:
        raise ConfigError("--num-classes and --in-channels must be >= 1 and --size >= 32")
    if args.all_smp:
        return run_all_smp(args)
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


def smp_catalog(*, num_classes: int, in_channels: int, size: int) -> dict:
    """smp's architectures with their default encoders' params/GMACs, and the encoder names.

    Built on the meta device and counted by FlopCounterMode: no weights, no real compute.
    """
    import torch

    from satunet.errors import InputSizeError
    from satunet.models import create_model, smp_architectures, smp_default_encoder, smp_encoders
    from satunet.profile import count_gmacs, count_params

    rows = []
    for arch in smp_architectures():
        name = f"smp:{arch}:{smp_default_encoder(arch)}"
        with torch.device("meta"):
            model = create_model(name, in_channels=in_channels, num_classes=num_classes)
        try:
            gmacs: float | None = round(count_gmacs(model, size, in_channels), 2)
        except InputSizeError:  # e.g. PAN below 128 px
            gmacs = None
        rows.append(
            {
                "name": name,
                "architecture": arch,
                "encoder": smp_default_encoder(arch),
                "params": count_params(model),
                "gmacs": gmacs,
                "size": size,
                "size_multiple": model.size_multiple,
                "min_size": model.min_size,
            }
        )
    return {
        "architectures": rows,
        "encoders": smp_encoders(),
        "timm_encoders": "tu-NAME for any timm model (python -c 'import timm; "
        "print(timm.list_models())'), e.g. tu-convnext_atto, tu-efficientnet_b0",
    }


def run_all_smp(args: argparse.Namespace) -> int:
    import textwrap

    catalog = smp_catalog(
        num_classes=args.num_classes, in_channels=args.in_channels, size=args.size
    )
    if args.format == "json":
        print(json.dumps(catalog, indent=2))
        return 0
    rows = catalog["architectures"]
    width = max(len(r["architecture"]) for r in rows)
    print(
        f"{'architecture':<{width}} {'params':>12} {'GMACs@' + str(args.size):>11} "
        f"{'multiple':>8}  name (the default encoder)"
    )
    for row in rows:
        gmacs = f"{row['gmacs']:>11.2f}" if row["gmacs"] is not None else f"{'-':>11}"
        print(
            f"{row['architecture']:<{width}} {row['params']:>12,} {gmacs} "
            f"{row['size_multiple']:>8}  {row['name']}"
        )
    print(f"\nsmp encoders ({len(catalog['encoders'])}), for smp:ARCH:ENCODER:")
    text = ", ".join(catalog["encoders"])
    print(
        textwrap.fill(
            text, 100, initial_indent="  ", subsequent_indent="  ", break_on_hyphens=False
        )
    )
    print(f"  and {catalog['timm_encoders']}")
    print(
        f"\nparams and GMACs with the default encoder, num_classes={args.num_classes}, "
        f"in_channels={args.in_channels}; not every encoder suits every architecture (an "
        "unsuitable pair is a clear error)."
    )
    return 0
