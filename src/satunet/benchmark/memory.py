"""Peak memory of one training step: CUDA's high-water mark, or a fresh child process's RSS.

The child is told what to build as data (a registry name, or a UNet design as a presets-file
entry) in a JSON spec; nothing is pickled, so the child never unpickles anything.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from satunet.benchmark.timing import Variant, memory_train_step
from satunet.checkpoint import unwrap
from satunet.files import atomic_write_json
from satunet.models import UNet
from satunet.runtime import synchronize

log = logging.getLogger(__name__)

# What the child needs to rebuild the step, besides the model: copied from the run's settings.
STEP_KEYS = (
    "precision", "channels_last", "size", "batch_size", "in_channels", "num_classes", "threads",
)  # fmt: skip


def peak_memory_cuda(v: Variant, device: torch.device) -> float:
    """Peak MiB of one training step: the step's own high-water mark plus persistent state."""
    v.model.train()
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    memory_train_step(v, device)
    synchronize(device)
    step_peak = torch.cuda.max_memory_allocated(device) - before
    persistent = sum(p.numel() * p.element_size() for p in v.model.parameters())
    for state in v.optimizer.state.values():
        persistent += sum(
            t.numel() * t.element_size() for t in state.values() if torch.is_tensor(t)
        )
    persistent += v.x.numel() * v.x.element_size() + v.y.numel() * v.y.element_size()
    return (step_peak + persistent) / 2**20


def child_spec(
    name: str, model: nn.Module, settings: Mapping[str, Any], *, registry: bool
) -> dict[str, Any] | None:
    """The JSON spec a child rebuilds ``model`` from, or None (with a warning) if it cannot.

    A registry model goes by its name; a satunet UNet by its design (levels and options, as a
    presets file stores it). Any other module cannot be described without pickle.
    """
    step = {k: settings[k] for k in STEP_KEYS}
    if registry:
        return {"name": name, "model": name, "options": {}, "device": "cpu", **step}
    plain = unwrap(model)
    if type(plain) is UNet:
        design = plain.spec().to_dict()
        return {"name": name, "design": design, "device": "cpu", **step}
    log.warning(
        "peak memory of %s not measured: the child process rebuilds models from data only "
        "(a registry name or a satunet UNet design), and %s is neither; register it or build "
        "it as a UNet",
        name,
        type(plain).__name__,
    )
    return None


def peak_memory_child(spec: Mapping[str, Any]) -> float | None:
    """Peak RSS (MiB) of a fresh process that builds the model and runs one training step.

    A fresh process is used because in this one, freed memory is cached by the allocator and
    other models are resident, which would hide or inflate the step's real footprint.
    """
    with tempfile.TemporaryDirectory(prefix="satunet-mem-") as tmp:
        spec_path = Path(tmp) / "spec.json"
        atomic_write_json(spec_path, dict(spec))
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        proc = subprocess.run(
            [sys.executable, "-m", "satunet.benchmark", str(spec_path)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        log.warning("peak memory of %s not measured: child process failed: %s", spec["name"], tail)
        return None
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["peak_mb"])
