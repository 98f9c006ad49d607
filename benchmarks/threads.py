"""Training images/s under different CPU thread settings, measured in one run.

Each setting runs in a fresh process (so torch's own defaults really are the defaults), in
interleaved rounds so a drifting machine load affects every setting alike:

- ``default``: torch's defaults, nothing set (what satunet did before it called
  ``configure_cpu_threads``);
- ``threads=1``, ``threads=2``: ``torch.set_num_threads(N)``;
- ``2 ranks x ...``: two concurrent processes (as torchrun starts them), img/s summed;
- ``satunet CLI now``: what every ``satunet`` command now does at start: ``OMP_WAIT_POLICY=
  PASSIVE`` (unless set) and ``configure_cpu_threads()`` (intra-op = usable cores /
  LOCAL_WORLD_SIZE, inter-op 1).

Not a test: the numbers depend on the machine and on what else runs on it, which is why the
load average at start and end is printed with them.

    .venv/bin/python benchmarks/threads.py
    .venv/bin/python benchmarks/threads.py --size 128 --batch-size 4 --seconds 4 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# name: (child mode, concurrent ranks, extra environment)
PASSIVE = {"OMP_WAIT_POLICY": "PASSIVE"}
SETTINGS: dict[str, tuple[str, int, dict[str, str]]] = {
    "default (before)": ("default", 1, {}),
    "threads=1": ("threads=1", 1, {}),
    "threads=2": ("threads=2", 1, {}),
    "2 ranks x default (before)": ("default", 2, {}),
    "2 ranks x 1 thread": ("threads=1", 2, {}),
    "satunet CLI now": ("configured", 1, PASSIVE),
    "2 ranks, satunet CLI now": ("configured", 2, {**PASSIVE, "LOCAL_WORLD_SIZE": "2"}),
}


def child(args: argparse.Namespace) -> None:
    """One process: set threads as told, time training steps for ``--seconds``, print JSON."""
    import torch
    import torch.nn.functional as F

    from satunet.models import create_model
    from satunet.runtime import configure_cpu_threads

    if args.mode.startswith("threads="):
        torch.set_num_threads(int(args.mode.partition("=")[2]))
    elif args.mode == "configured":
        configure_cpu_threads()
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=5).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(args.batch_size, 3, args.size, args.size)
    y = torch.randint(0, 5, (args.batch_size, args.size, args.size))

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up: oneDNN primitives, Adam state
    steps, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < args.seconds or steps < 2:
        step()
        steps += 1
    threads = (torch.get_num_threads(), torch.get_num_interop_threads())
    print(json.dumps({"img_s": steps * args.batch_size / elapsed, "threads": threads}))


def run_setting(setting: str, args: argparse.Namespace) -> tuple[float, str]:
    """img/s of one setting (summed over concurrent ranks) and its threads (intra/inter-op)."""
    child_mode, ranks, extra = SETTINGS[setting]
    drop = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "LOCAL_WORLD_SIZE")
    env = {k: v for k, v in os.environ.items() if k not in drop} | extra
    cmd = [sys.executable, __file__, "--child", child_mode, "--model", args.model,
           "--size", str(args.size), "--batch-size", str(args.batch_size),
           "--seconds", str(args.seconds)]  # fmt: skip
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for _ in range(ranks)
    ]
    results = [json.loads(p.communicate(timeout=300)[0].strip().splitlines()[-1]) for p in procs]
    threads = " + ".join("{}/{}".format(*r["threads"]) for r in results)
    return sum(r["img_s"] for r in results), threads


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--child", dest="mode", default=None, help=argparse.SUPPRESS)
    p.add_argument("--model", default="unet_fast")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seconds", type=float, default=3.0, help="timed seconds per measurement")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds (2)")
    args = p.parse_args()
    if args.mode is not None:
        child(args)
        return
    start_load = os.getloadavg()
    t0 = time.perf_counter()
    rates: dict[str, list[float]] = {m: [] for m in SETTINGS}
    threads: dict[str, str] = {}
    for r in range(args.rounds):
        for mode in SETTINGS:
            rate, threads[mode] = run_setting(mode, args)
            rates[mode].append(rate)
            print(f"round {r + 1}: {mode}: {rate:.2f} img/s", file=sys.stderr)
    end_load = os.getloadavg()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"{args.model}, {args.size}x{args.size}, batch {args.batch_size}, training step "
        f"(fwd + bwd + Adam), {args.rounds} interleaved rounds of {args.seconds:g} s, "
        f"{cores} usable cores; load average (1/5/15 min) at start "
        f"{'/'.join(f'{v:.2f}' for v in start_load)}, at end "
        f"{'/'.join(f'{v:.2f}' for v in end_load)}; {time.perf_counter() - t0:.0f} s in all\n"
    )
    print("| setting | threads (intra/inter-op per process) | train img/s median | min–max |")
    print("| :--- | :--- | ---: | ---: |")
    base = statistics.median(rates["default (before)"])
    for mode in SETTINGS:
        med = statistics.median(rates[mode])
        print(
            f"| {mode} | {threads[mode]} | {med:.2f} ({med / base:.2f}x) | "
            f"{min(rates[mode]):.2f}–{max(rates[mode]):.2f} |"
        )


if __name__ == "__main__":
    main()
