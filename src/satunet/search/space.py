"""The UNet design space and the candidates drawn from it (GMACs counted on the meta device)."""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from satunet.errors import ConfigError
from satunet.models import PRESETS, Level, Preset
from satunet.profile import count_gmacs, count_params

log = logging.getLogger(__name__)

# The design space: every axis of UNet's options, with the values worth trying on a budget.
SPACE: dict[str, tuple[Any, ...]] = {
    "stem_stride": (1, 2, 4),
    "depth": (4, 5, 6),  # levels, the bottleneck included
    "base_width": (8, 16, 24, 32, 48),
    "max_width": (256, 512),
    "deep_convs": (1, 2),  # convs per level from the third level down (the top two keep 1)
    "upsample": ("bilinear", "transpose"),
    "conv": ("standard", "separable"),
    "skip": ("concat", "add", "sdi"),
    "context": ("none", "ppm", "aspp"),
    "residual": (False, True),
}
SEEDS = ("unet_fast", "unet_v2")  # built-in designs every search starts from


@dataclass
class Candidate:
    """One design under test, and what was measured about it."""

    name: str
    preset: Preset
    gmacs: float = math.nan  # at the search's --size (what is measured)
    params: int = 0
    gmacs_512: float = math.nan  # at 512x512, what --budget-gmacs applies to
    metrics: dict[str, Any] = field(default_factory=dict)

    def build(self, num_classes: int, in_channels: int = 3) -> nn.Module:
        return self.preset.build(in_channels=in_channels, num_classes=num_classes)


def sample_design(rng: random.Random, space: Mapping[str, Sequence[Any]] | None = None) -> Preset:
    """One random point of the design space (:data:`SPACE`, axes overridden by ``space``)."""
    space = {**SPACE, **(space or {})}
    unknown = set(space) - set(SPACE)
    if unknown:
        raise ConfigError(f"unknown search axes {sorted(unknown)}; axes are {', '.join(SPACE)}")
    pick = {k: rng.choice(tuple(v)) for k, v in space.items()}
    widths = [min(pick["base_width"] * 2**i, pick["max_width"]) for i in range(pick["depth"])]
    levels = tuple(Level(w, 1 if i < 2 else pick["deep_convs"]) for i, w in enumerate(widths))
    options = {
        k: pick[k] for k in ("stem_stride", "upsample", "conv", "skip", "context", "residual")
    }
    defaults = {"stem_stride": 1, "upsample": "transpose", "conv": "standard", "skip": "concat",
                "context": "none", "residual": False}  # fmt: skip
    options = {k: v for k, v in options.items() if v != defaults[k]}
    return Preset(levels, options)


def _facts(preset: Preset, size: int, num_classes: int) -> tuple[float, int]:
    with torch.device("meta"):
        model = preset.build(num_classes=num_classes)
    return count_gmacs(model, size), count_params(model)


def propose(
    trials: int,
    *,
    size: int = 512,
    num_classes: int = 5,
    budget_gmacs: float | None = None,
    budget_size: int = 512,
    seed: int = 0,
    seeds: Sequence[str] = SEEDS,
    space: Mapping[str, Sequence[Any]] | None = None,
    max_draws: int = 500,
) -> list[Candidate]:
    """``trials`` distinct candidates: the built-in ``seeds`` first, then random designs.

    GMACs are counted on the meta device (free), so designs over ``budget_gmacs`` (GMACs at
    ``budget_size`` x ``budget_size``, 512 as documented, whatever ``size`` is) and designs
    whose size multiple does not divide ``size`` are dropped before anything is measured.
    """
    if trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {trials}")
    rng = random.Random(seed)
    out: list[Candidate] = []
    seen: set[str] = set()

    def consider(name: str, preset: Preset) -> None:
        key = json.dumps([[lv.channels, lv.convs] for lv in preset.levels] + [preset.options],
                         sort_keys=True)  # fmt: skip
        multiple = preset.options.get("stem_stride", 1) * 2 ** (len(preset.levels) - 1)
        if key in seen or size % multiple:
            return
        seen.add(key)
        gmacs, params = _facts(preset, size, num_classes)
        at_budget = gmacs if size == budget_size else _facts(preset, budget_size, num_classes)[0]
        if budget_gmacs is not None and at_budget > budget_gmacs:
            log.debug("skip %s: %.2f GMACs at %d > budget %.2f", name, at_budget, budget_size,
                      budget_gmacs)  # fmt: skip
            return
        out.append(Candidate(name, preset, round(gmacs, 6), params, round(at_budget, 6)))

    for name in seeds:
        if len(out) < trials:
            consider(name, PRESETS[name])
    draws = 0
    while len(out) < trials and draws < max_draws:
        draws += 1
        consider(f"cand_s{seed}_{draws:03d}", sample_design(rng, space))  # unique per seed
    if not out:
        raise ConfigError(
            f"no design of the search space fits --budget-gmacs {budget_gmacs} (GMACs at "
            f"{budget_size}x{budget_size}) with a size multiple dividing --size {size}; raise "
            "the budget"
        )
    return out
