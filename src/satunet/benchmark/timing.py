"""Timed steps: one model variant with fixed synthetic data, its train/infer steps and timers."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from satunet.checkpoint import unwrap
from satunet.errors import ConfigError
from satunet.runtime import (
    Precision,
    autocast_context,
    inference_context,
    synchronize,
    to_channels_last,
    to_input,
)
from satunet.speed import compare_outputs, maybe_compile


@dataclass
class Variant:
    """One model under one set of speed options, with its optimiser and fixed synthetic data."""

    name: str
    baseline: bool
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: Any
    x: torch.Tensor
    y: torch.Tensor
    x1: torch.Tensor
    precision: Precision
    infer_model: nn.Module | None = None
    train_s: list[float] = field(default_factory=list)  # seconds per image, one per round
    infer_s: list[float] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)
    train_steps: int = 1
    infer_steps: int = 1
    latency_calls: int = 3
    first_train_s: float | None = None
    first_infer_s: float | None = None


def make_variant(
    name: str,
    model: nn.Module,
    spec: Mapping[str, Any],
    device: torch.device,
    *,
    baseline: bool,
    compile: bool,
) -> Variant:
    """``model`` on ``device`` with Adam and seeded synthetic inputs shaped by ``spec``."""
    precision = "fp32" if baseline else spec["precision"]
    cl = spec["channels_last"] and not baseline
    model = model.to(device).train()
    if cl:
        model = to_channels_last(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-3)  # the study's
    train_model = maybe_compile(model, compile and not baseline)
    gen = torch.Generator().manual_seed(0)
    b, c, s, k = spec["batch_size"], spec["in_channels"], spec["size"], spec["num_classes"]
    x = torch.rand(b, c, s, s, generator=gen)
    y = torch.randint(0, k, (b, s, s), generator=gen)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    return Variant(
        name=name,
        baseline=baseline,
        model=train_model,
        optimizer=optimizer,
        scaler=scaler,
        x=to_input(x, device, cl),
        y=y.to(device),
        x1=to_input(x[:1].clone(), device, cl),
        precision=precision,
    )


def train_step(v: Variant, device: torch.device) -> None:
    """One forward + backward + Adam step on the variant's batch."""
    with autocast_context(device, v.precision):
        logits = v.model(v.x)
    loss = F.cross_entropy(logits.float(), v.y)
    if v.scaler is not None:
        v.scaler.scale(loss).backward()
        v.scaler.step(v.optimizer)
        v.scaler.update()
    else:
        loss.backward()
        v.optimizer.step()
    v.optimizer.zero_grad(set_to_none=True)


def is_single_value_batchnorm_error(error: ValueError) -> bool:
    """True for BatchNorm's "Expected more than 1 value per channel when training" error."""
    return "more than 1 value per channel" in str(error)


def memory_train_step(v: Variant, device: torch.device) -> bool:
    """One training step for a memory measurement; returns whether BatchNorm had to be frozen.

    A model with a 1x1 bottleneck or a global-pooling branch (DeepLabV3+'s ASPP) cannot train
    on batch 1 in BatchNorm's training mode: then the step runs with BatchNorm layers using
    their running statistics (as batch-1 fine-tuning does), which costs the same memory to
    within the BN statistics.
    """
    try:
        train_step(v, device)
        return False
    except ValueError as e:
        if not is_single_value_batchnorm_error(e):
            raise
    v.optimizer.zero_grad(set_to_none=True)
    for module in v.model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    train_step(v, device)
    return True


def time_train(v: Variant, device: torch.device, steps: int) -> float:
    """Seconds for ``steps`` training steps, GPU work included."""
    v.model.train()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        train_step(v, device)
    synchronize(device)
    return time.perf_counter() - start


def first_train_step(v: Variant, device: torch.device) -> float:
    """The first (untimed) training step, turning BatchNorm's batch-of-one error into advice."""
    try:
        return time_train(v, device, 1)
    except ValueError as e:
        if not is_single_value_batchnorm_error(e):
            raise
        raise ConfigError(
            f"{v.name} cannot train on batch {len(v.x)} at {v.x.shape[-1]}x{v.x.shape[-1]}: a "
            "BatchNorm layer would see one value per channel (a 1x1 bottleneck or a global "
            "pooling branch); use --batch-size 2 or more, or a larger --size"
        ) from e


def time_infer(v: Variant, device: torch.device, steps: int, x: torch.Tensor) -> float:
    """Seconds for ``steps`` inference calls of the variant's inference model on ``x``."""
    if v.infer_model is None:
        raise RuntimeError(f"{v.name}: inference model not prepared before timing")
    v.infer_model.eval()
    with inference_context(device, v.precision):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            v.infer_model(x)
        synchronize(device)
        return time.perf_counter() - start


def calibrated_steps(min_time_s: float, step_s: float, least: int = 1) -> int:
    """How many steps of ``step_s`` fill ``min_time_s`` (between ``least`` and 100)."""
    return max(least, min(100, math.ceil(min_time_s / step_s)))


def harness_overhead_s(device: torch.device, calls: int = 2000) -> float:
    """Seconds per timed call that the timing loop itself costs (timer, loop, sync)."""

    def noop() -> None:
        return None

    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        noop()
    synchronize(device)
    return (time.perf_counter() - start) / calls


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, linearly interpolated."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def agreement(v: Variant, device: torch.device) -> dict[str, float]:
    """Logits of the configured inference path against fp32 eager on the same weights and input."""
    reference = copy.deepcopy(unwrap(v.model)).to(memory_format=torch.contiguous_format).eval()
    x = v.x[: min(2, len(v.x))].contiguous()
    with torch.inference_mode():
        expected = reference(x)
    model = v.infer_model if v.infer_model is not None else v.model
    model.eval()
    with inference_context(device, v.precision):
        cl = v.x.dim() == 4 and v.x.is_contiguous(memory_format=torch.channels_last)
        got = model(x.contiguous(memory_format=torch.channels_last) if cl else x)
    return compare_outputs(got, expected)
