"""Training images/s of this checkout against an older commit, in short races on real tiles.

A change to the training step (the optimizer kernel, the per-step NaN/inf checks) shows here
as images/s in the same `satunet race` a user runs: the older commit is checked out into a
temporary git worktree and each version trains in its own process (``PYTHONPATH`` picks the
version), alternating base and current in every round so a drifting machine load touches both
alike. Each run is a race of one model and one seed for ``--minutes`` of training time on the
shared LoveDA images.

Not a test: the numbers depend on the machine and on what else runs on it, which is why the
load average at start and end is printed with them.

    .venv/bin/python benchmarks/train_overhead.py --base 2b5b9b3
    .venv/bin/python benchmarks/train_overhead.py --base 2b5b9b3 --models unet_fast --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def child(args: argparse.Namespace) -> None:
    """One run: a one-model race with the satunet on PYTHONPATH; prints steps and images/s."""
    import satunet
    from satunet.race.run import race

    race([args.model], data="loveda", root=args.root, scene="rural", val_fraction=0.2,
         budget_min=args.minutes, seeds=[0], val_every=1.0, out=args.out,
         progress=False)  # fmt: skip
    lines = (Path(args.out) / "runs" / f"{args.model}-seed0" / "metrics.jsonl").read_text()
    last = json.loads(lines.splitlines()[-1])
    print(json.dumps({"satunet": satunet.__file__, "steps": last["steps"],
                      "img_s": last["train_img_s"]}))  # fmt: skip


def run_one(src: Path, model: str, args: argparse.Namespace, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, __file__, "--child", "--model", model, "--out", str(out),
               "--minutes", str(args.minutes), "--root", args.root]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{model} with {src} failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not result["satunet"].startswith(str(src)):
        raise SystemExit(f"imported {result['satunet']}, not the satunet under {src}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="2b5b9b3", help="the older commit to compare with")
    parser.add_argument("--models", default="unet_fast_stride4,deeplabv3plus_resnet34")
    parser.add_argument("--minutes", type=float, default=1.0, help="training minutes per run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "loveda"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if not (Path(args.root) / "Train").is_dir():
        raise SystemExit(f"no LoveDA images under {args.root}: pass --root")
    print(f"load average at start: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="train-overhead-") as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(base),
                        args.base], check=True)  # fmt: skip
        try:
            rates = _measure(args, {"base": base / "src", "now": REPO / "src"}, Path(tmp))
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)],
                           check=False)  # fmt: skip
    print(f"load average at end: {os.getloadavg()}")
    print(f"\n| model | {args.base} img/s | now img/s | now / base |")
    print("| :--- | ---: | ---: | ---: |")
    for model, by_version in rates.items():
        old, new = (statistics.mean(by_version[v]) for v in ("base", "now"))
        base_runs, now_runs = ("/".join(f"{r:.2f}" for r in by_version[v]) for v in ("base", "now"))
        print(f"| {model} | {old:.2f} ({base_runs}) | {new:.2f} ({now_runs}) | {new / old:.3f} |")


def _measure(args: argparse.Namespace, sources: dict[str, Path], tmp: Path) -> dict:
    rates: dict[str, dict[str, list[float]]] = {}
    for model in args.models.split(","):
        rates[model] = {version: [] for version in sources}
        for k in range(args.rounds):
            for version, src in sources.items():
                result = run_one(src, model, args, tmp / f"{model}-{version}-{k}")
                rates[model][version].append(result["img_s"])
                print(f"{model} {version} round {k + 1}: {result['steps']} steps, "
                      f"{result['img_s']:.2f} img/s", flush=True)  # fmt: skip
    return rates


if __name__ == "__main__":
    main()
