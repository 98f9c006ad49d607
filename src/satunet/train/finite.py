"""Stopping a diverging run at the step it diverges, naming what became NaN/inf and why.

Every step checks the input pixels, logits and loss (:func:`check_forward`) and the gradients
and weights (through :func:`norm_finite`, one fused pass), with a single host sync; under
torch.distributed every rank agrees before any stops, so none is left waiting.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from satunet.errors import TrainingError
from satunet.runtime import is_distributed

LR_HINT = "a learning rate too high (try --set train.lr=3e-4 or train.grad_clip=1.0)"


def nonfinite_error(what: str, epoch: int, step: int | None, steps: int, run_dir: Path) -> str:
    """What became non-finite where, the likely causes, and which checkpoint is still good."""
    where = f"step {step}/{steps}" if step is not None else "validation"
    last = run_dir / "last.pt"
    kept = (
        f"the last good checkpoint is {last} (epoch {epoch - 1}); fix the cause, then "
        f"`satunet train --resume {run_dir}`"
        if epoch > 1
        else "no epoch completed, so there is no checkpoint yet"
    )
    return (
        f"{what} at epoch {epoch}, {where}. Likely causes: {LR_HINT}, fp16 overflow (use "
        "--precision bf16 or fp32), or NaN/inf values in the input images. Training stopped; "
        f"{kept}."
    )


def all_finite(tensors: Iterable[torch.Tensor | None], device: torch.device) -> torch.Tensor:
    """A 0-dim bool tensor: every given tensor is free of NaN and inf (no host sync)."""
    flags = [torch.isfinite(t.detach()).all() for t in tensors if t is not None]
    return torch.stack(flags).all() if flags else torch.ones((), dtype=torch.bool, device=device)


def norm_finite(tensors: Iterable[torch.Tensor | None], device: torch.device) -> torch.Tensor:
    """Like :func:`all_finite` in one fused pass: the tensors' total norm is finite.

    Checking a model's weights and gradients tensor by tensor cost 22 ms a step for
    unet_fast_stride4 on 2 CPU cores (8% of its step); the total norm costs 3 ms. A NaN or inf
    anywhere makes the norm non-finite; a norm that overflows though every value is finite
    (values near 1e19) is told apart by :func:`raise_if_bad`, which checks exactly then.
    """
    kept = [t.detach() for t in tensors if t is not None]
    if not kept:
        return torch.ones((), dtype=torch.bool, device=device)
    return torch.isfinite(nn.utils.get_total_norm(kept, foreach=True))


Check = tuple[torch.Tensor, str, list[torch.Tensor | None] | None]


def raise_if_bad(checks: list[Check], device: torch.device, where: Any) -> None:
    """One host sync for all ``(ok flag, what went wrong, tensors)`` checks, agreed by all ranks.

    ``tensors``, where given, are checked value by value before a failed fast check counts,
    so an overflowing norm of finite values is not taken for divergence.
    """
    bad = _agreed([~ok for ok, _, _ in checks], device)
    if not any(bad):
        return
    exact = [
        ~all_finite(tensors, device) if flag and tensors is not None else ok.new_tensor(flag)
        for flag, (ok, _, tensors) in zip(bad, checks, strict=True)
    ]
    for flag, (_, what, _) in zip(_agreed(exact, device), checks, strict=True):
        if flag:
            raise TrainingError(nonfinite_error(what, *where))


def _agreed(flags: list[torch.Tensor], device: torch.device) -> list[bool]:
    """The flags as bools, set where any rank set them (every rank must stop together)."""
    stacked = torch.stack(flags).to(device=device, dtype=torch.float32)
    if is_distributed():
        dist.all_reduce(stacked)
    return [bool(v) for v in stacked.tolist()]


def check_forward(
    x: torch.Tensor, logits: torch.Tensor, loss: torch.Tensor, device: torch.device, where: tuple
) -> None:
    """Stop on NaN/inf input pixels, logits or loss, naming which came first."""
    checks = [
        (
            all_finite([x], device),
            "the input images hold NaN/inf pixels (run `satunet data check`)",
            None,
        ),
        (all_finite([logits], device), "the model's outputs (logits) became NaN/inf", None),
        (torch.isfinite(loss).all(), "the loss became NaN/inf", None),
    ]
    raise_if_bad(checks, device, where)
