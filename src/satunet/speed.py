"""Speed options shared by benchmark, predict and export: precision, channels_last, BN folding.

Each option is one small function, so ``satunet benchmark`` measures exactly what ``satunet
predict`` runs. fp32 options (channels_last, BN folding, torch.compile) keep outputs equal to
fp32 eager within float rounding; bf16/fp16 change the logits and are measured, not assumed.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from satunet.errors import DeviceError, SatunetError
from satunet.runtime import Precision, resolve_device, to_channels_last

log = logging.getLogger(__name__)


def _example_input(model: nn.Module) -> torch.Tensor:
    in_channels = getattr(model, "in_channels", None)
    multiple = getattr(model, "size_multiple", None)
    if in_channels is None or multiple is None:
        raise ValueError(
            f"{type(model).__name__} has no in_channels/size_multiple attributes; pass "
            "example_input=a (1, C, H, W) tensor the model accepts to fold_batchnorm"
        )
    side = max(64, 2 * multiple)
    param = next(model.parameters())
    gen = torch.Generator().manual_seed(0)
    return torch.rand(1, in_channels, side, side, generator=gen).to(param.device)


def fold_batchnorm(model: nn.Module, example_input: torch.Tensor | None = None) -> nn.Module:
    """An eval-mode copy of ``model`` with every BatchNorm that directly follows a conv folded in.

    Inference only: the BN's running statistics and affine become the conv's weight and bias, so
    each block runs one op instead of two. Conv -> BN pairs are found by running
    ``example_input`` once and matching each BatchNorm2d's input tensor to the conv that produced
    it, which covers the UNet blocks, smp's Conv2dReLU and the resnet encoders alike. The folded
    copy is checked against the original on that input, so a conv whose output is also used
    elsewhere is never folded silently. The original model is left untouched.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(model).eval()
    x = _example_input(folded) if example_input is None else example_input
    produced: list[tuple[torch.Tensor, nn.Module]] = []  # keeps outputs alive: ids stay unique
    pairs: dict[nn.Module, nn.Module] = {}  # bn -> conv
    bad: set[nn.Module] = set()

    def after_conv(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        produced.append((output, module))

    def before_bn(module: nn.Module, inputs: tuple) -> None:
        conv = next((c for out, c in reversed(produced) if out is inputs[0]), None)
        if conv is None or pairs.get(module, conv) is not conv:
            bad.add(module)
        else:
            pairs[module] = conv

    hooks = []
    for m in folded.modules():
        if type(m) is nn.Conv2d:
            hooks.append(m.register_forward_hook(after_conv))
        elif type(m) is nn.BatchNorm2d:
            hooks.append(m.register_forward_pre_hook(before_bn))
    try:
        with torch.no_grad():
            reference = folded(x).float()
    finally:
        for h in hooks:
            h.remove()
        produced.clear()

    convs = [conv for bn, conv in pairs.items() if bn not in bad]
    shared = {c for c in convs if convs.count(c) > 1}  # one conv feeding two BNs: leave it
    names = {m: name for name, m in folded.named_modules()}
    count = 0
    for bn, conv in pairs.items():
        if bn in bad or conv in shared or not bn.track_running_stats:
            continue
        _replace(folded, names[conv], fuse_conv_bn_eval(conv, bn))
        _replace(folded, names[bn], nn.Identity())
        count += 1
    with torch.no_grad():
        out = folded(x).float()
    error = _rel_rms(out, reference)
    if not error <= 1e-4:
        raise SatunetError(
            f"folding BatchNorm into the convs of {type(model).__name__} changed its output "
            f"(relative RMS error {error:.2e}): a conv output is used by more than its BatchNorm; "
            "run this model without BN folding"
        )
    log.debug("folded %d BatchNorm layers of %s", count, type(model).__name__)
    return folded


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    parent._modules[child] = new


def _rel_rms(out: torch.Tensor, reference: torch.Tensor) -> float:
    rms = (out - reference).pow(2).mean().sqrt()
    return float(rms / reference.pow(2).mean().sqrt().clamp_min(1e-12))


def maybe_compile(model: nn.Module, enabled: bool = True, **options) -> nn.Module:
    """``torch.compile(model)`` when enabled (compilation itself happens on the first call).

    The compiled wrapper shares the parameters of ``model``; save ``satunet.checkpoint.unwrap``
    of it, never the wrapper.
    """
    if not enabled:
        return model
    if not hasattr(torch, "compile"):
        raise DeviceError(f"torch {torch.__version__} has no torch.compile; drop --compile")
    return torch.compile(model, **options)


def prepare_for_inference(
    model: nn.Module,
    *,
    device: str | torch.device = "cpu",
    precision: Precision = "fp32",
    channels_last: bool = False,
    fold_bn: bool = False,
    compile: bool = False,
) -> nn.Module:
    """The model as predict/export/benchmark run it: eval mode, on device, with the options on.

    ``device`` is auto, cpu, cuda or cuda:N. Precision is not baked in: run the returned model
    inside :func:`satunet.runtime.inference_context` with the
    same ``precision``. BN folding returns a copy; the other options change ``model`` in place.
    """
    dev = resolve_device(device, precision)
    model = model.to(dev).eval()
    if fold_bn:
        model = fold_batchnorm(model)
    if channels_last:
        model = to_channels_last(model)
    return maybe_compile(model, compile)


def compare_outputs(out: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """How far logits ``out`` are from ``reference``: argmax agreement and relative RMS error.

    Shape: (B, num_classes, H, W) both.
    """
    out, reference = out.float(), reference.float()
    agreement = (out.argmax(1) == reference.argmax(1)).float().mean()
    return {"argmax_agreement": float(agreement), "rel_rms_error": _rel_rms(out, reference)}
