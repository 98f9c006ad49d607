"""The peak-memory child process: read a JSON spec, build the model from data, one step, RSS.

Run as ``python -m satunet.benchmark SPEC.json`` (internal). The spec names a registry model or
holds a UNet design; it is checked key by key and never points at code: nothing is unpickled.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from satunet.benchmark.timing import make_variant, memory_train_step, train_step
from satunet.errors import ConfigError, SatunetError
from satunet.models import Preset, create_model
from satunet.runtime import PRECISIONS

INT_KEYS = ("size", "batch_size", "in_channels", "num_classes", "threads")
CHILD_KEYS = frozenset(
    {"name", "model", "design", "options", "precision", "channels_last", "device", *INT_KEYS}
)


def read_child_spec(path: str | Path) -> dict[str, Any]:
    """The checked spec at ``path``: JSON only, known keys only, a model named or designed."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"benchmark child: cannot read spec {path}: {e.strerror or e}") from e
    if raw[:1] == b"\x80" or raw[:2] == b"PK":
        raise ConfigError(
            f"benchmark child: {path} is a pickle or torch file, not a JSON spec; the child "
            "never unpickles"
        )
    try:
        spec = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"benchmark child: spec {path} is not JSON: {e}") from e
    if not isinstance(spec, dict):
        raise ConfigError(f"benchmark child: spec {path} must be a JSON object")
    unknown = sorted(set(spec) - CHILD_KEYS)
    if unknown:
        raise ConfigError(
            f"benchmark child: unknown spec key(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(CHILD_KEYS))}"
        )
    _check_values(spec)
    return spec


def _check_values(spec: dict[str, Any]) -> None:
    if ("model" in spec) == ("design" in spec):
        raise ConfigError("benchmark child: the spec needs exactly one of 'model' or 'design'")
    if "model" in spec and not isinstance(spec["model"], str):
        raise ConfigError("benchmark child: 'model' must be a model name")
    if "design" in spec and not isinstance(spec["design"], dict):
        raise ConfigError("benchmark child: 'design' must be a presets-file entry (an object)")
    if not isinstance(spec.get("options", {}), dict):
        raise ConfigError("benchmark child: 'options' must be an object")
    if not isinstance(spec.get("name"), str):
        raise ConfigError("benchmark child: 'name' must be a string")
    for key in INT_KEYS:
        value = spec.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"benchmark child: {key!r} must be an integer >= 1, got {value!r}")
    if spec.get("precision") not in PRECISIONS:
        raise ConfigError(f"benchmark child: unknown precision {spec.get('precision')!r}")
    if not isinstance(spec.get("channels_last"), bool):
        raise ConfigError("benchmark child: 'channels_last' must be true or false")
    if spec.get("device", "cpu") != "cpu":
        raise ConfigError("benchmark child: measures CPU memory only ('device': 'cpu')")


def build_child_model(spec: dict[str, Any]) -> nn.Module:
    """The model the spec describes, built here from data (registry name or UNet design)."""
    shape = {"in_channels": spec["in_channels"], "num_classes": spec["num_classes"]}
    if "model" in spec:
        return create_model(spec["model"], **shape, **spec.get("options", {}))
    return Preset.from_dict(spec["design"], where="benchmark child: design").build(**shape)


def _rss_kb(field_name: str) -> int:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise OSError(f"{field_name} not in /proc/self/status")


def _baseline_kb() -> tuple[int, bool]:
    """RSS before the model exists, and whether /proc gives a resettable high-water mark."""
    import resource

    try:  # "5" resets the peak-RSS high-water mark (Linux >= 4.0), dropping import transients
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
            f.write("5")
        return _rss_kb("VmRSS"), True
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, False


def _peak_kb(before_kb: int, proc_fs: bool) -> int:
    import resource

    if proc_fs:
        return _rss_kb("VmHWM") - before_kb
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return (peak // 1024 if sys.platform == "darwin" else peak) - before_kb


def measure_child_peak(spec_path: str | Path) -> float:
    """Build the spec's model, run one training step, return the step's peak RSS in MiB."""
    spec = read_child_spec(spec_path)
    torch.set_num_threads(spec["threads"])
    device = torch.device("cpu")
    # Start thread pools, oneDNN and autograd on a tiny net first: their one-off memory is the
    # process's, not the model's, and must be in the baseline.
    tiny = nn.Sequential(nn.Conv2d(spec["in_channels"], 4, 3, padding=1), nn.BatchNorm2d(4))
    warm_spec = {**spec, "size": 8, "num_classes": 4}
    warm = make_variant("warm-up", tiny, warm_spec, device, baseline=False, compile=False)
    train_step(warm, device)
    del warm, tiny
    before_kb, proc_fs = _baseline_kb()
    model = build_child_model(spec)
    v = make_variant(spec["name"], model, spec, device, baseline=False, compile=False)
    # Adam's state exists in every step after the first: create it with a zero-gradient step.
    for p in v.model.parameters():
        p.grad = torch.zeros_like(p)
    v.optimizer.step()
    v.optimizer.zero_grad(set_to_none=True)
    memory_train_step(v, device)
    return _peak_kb(before_kb, proc_fs) / 1024


def main(argv: Sequence[str]) -> int:
    """Entry point of ``python -m satunet.benchmark SPEC.json``: prints {"peak_mb": ...}."""
    if len(argv) != 1:
        sys.stderr.write("usage: python -m satunet.benchmark SPEC.json (internal)\n")
        return 2
    try:
        peak = measure_child_peak(argv[0])
    except SatunetError as e:
        sys.stderr.write(f"satunet benchmark child: error: {e}\n")
        return 2
    sys.stdout.write(json.dumps({"peak_mb": peak}) + "\n")
    return 0
