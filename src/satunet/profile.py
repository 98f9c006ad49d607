"""Model facts: parameter count, GMACs (counted by torch), and the study's footprint proxy."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from satunet.models import create_model, describe_model


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all of them, as torchsummary and the study count)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_gmacs(model: nn.Module, size: int | tuple[int, int] = 512, in_channels: int = 3) -> float:
    """Multiply-accumulates (in 1e9) of one forward pass of one image, counted by FlopCounterMode.

    Runs on a meta-device copy of the input, so it costs no real compute; 1 MAC = 2 FLOPs.
    """
    h, w = (size, size) if isinstance(size, int) else size
    device = next(model.parameters()).device
    x = torch.zeros(1, in_channels, h, w, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 2 / 1e9


def _wrap_int32(n: int) -> int:
    """What numpy 1.x's int32 ``np.prod`` returns on Windows: the product modulo 2**32, signed."""
    return (n + 2**31) % 2**32 - 2**31


def study_footprint_mb(model: nn.Module, size: int = 512, in_channels: int = 3) -> float:
    """The study's "Memory_Footprint" column: torchsummary 1.5.1's "Forward/backward pass size".

    This is a proxy, not memory. torchsummary hooks every module except Sequential, ModuleList
    and the root, multiplies each output's shape with the batch dimension set to -1, sums the
    products and reports ``abs(2 * sum * 4 bytes) / 2**20``: per sample, float32, x2 for
    gradients, MiB. A module returning a tuple (the study's encoder blocks) contributes the
    product of *all* its shapes, which the study's Windows numpy computed in int32, where it wraps
    to 0: we emulate that, which is how the paper's figures come out (seed spec section 4.3).
    """
    total = 0
    hooks = []

    def hook(_module: nn.Module, _inputs: tuple, output: object) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            shapes = [[-1, *output.shape[1:]]]
        elif isinstance(output, list | tuple) and all(isinstance(o, torch.Tensor) for o in output):
            shapes = [[-1, *o.shape[1:]] for o in output]
        else:
            return  # torchsummary would crash on such outputs; no study model has one
        product = 1
        for shape in shapes:
            for dim in shape:
                product *= int(dim)
        total += _wrap_int32(product)

    for module in model.modules():
        if module is model or isinstance(module, nn.Sequential | nn.ModuleList):
            continue
        hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        # torchsummary runs a batch of 2; shapes are what matter, so the meta device would do,
        # but BatchNorm in train mode needs >1 sample: eval() + batch 1 gives the same shapes.
        with torch.no_grad():
            model(torch.zeros(1, in_channels, size, size, device=device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return round(abs(2.0 * total * 4.0 / 2**20), 2)


@dataclass(frozen=True)
class ModelFacts:
    """What `satunet models` reports for one model."""

    name: str
    params: int
    gmacs: float
    study_footprint_mb: float
    description: str

    def as_dict(self) -> dict:
        return asdict(self)


def model_facts(
    name: str, *, num_classes: int = 5, in_channels: int = 3, size: int = 512
) -> ModelFacts:
    """Parameters, GMACs at ``size`` and the study's footprint figure for a registered model.

    Built on the meta device: no weights are allocated and no real compute is done.
    """
    with torch.device("meta"):
        model = create_model(name, in_channels=in_channels, num_classes=num_classes)
    return ModelFacts(
        name=name,
        params=count_params(model),
        gmacs=round(count_gmacs(model, size, in_channels), 2),
        study_footprint_mb=study_footprint_mb(model, size, in_channels),
        description=describe_model(name),
    )
