"""Speed options keep fp32 outputs (channels_last, BN folding, compile); bf16 stays close."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from satunet.errors import DeviceError, SatunetError
from satunet.models import Level, UNet, create_model
from satunet.runtime import autocast_context, inference_context, resolve_device, to_input
from satunet.speed import compare_outputs, fold_batchnorm, prepare_for_inference


def _randomize_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affine, as after training (init values would hide bugs)."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
    return model.eval()


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return _randomize_bn(UNet((Level(4), Level(8, 1), Level(16)), num_classes=3))


def _input(channels: int = 3, size: int = 64, batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(2))


def _fp32_close(out: torch.Tensor, ref: torch.Tensor) -> None:
    scores = compare_outputs(out, ref)
    assert scores["argmax_agreement"] >= 0.999, scores
    assert scores["rel_rms_error"] <= 1e-4, scores


# The fast study models (and the smp baselines, whose resnet encoder has BN outside Sequentials).
@pytest.mark.parametrize(
    "name",
    [
        "unet_skinny",
        "deeplabv3plus_resnet34",
        pytest.param("unetplusplus_resnet34", marks=pytest.mark.slow),
    ],
)
@pytest.mark.parametrize("options", [{"fold_bn": True}, {"channels_last": True}])
def test_fp32_options_keep_outputs(name: str, options: dict) -> None:
    torch.manual_seed(0)
    model = _randomize_bn(create_model(name, num_classes=5))
    x = _input()
    with torch.inference_mode():
        ref = model(x)
    fast = prepare_for_inference(model, **options)
    with inference_context("cpu"):
        out = fast(to_input(x, channels_last=options.get("channels_last", False)))
    _fp32_close(out, ref)
    if options.get("fold_bn"):  # every conv -> BN pair, also in resnet blocks and ASPP
        assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())


def test_fold_batchnorm_removes_every_bn_and_leaves_the_original() -> None:
    model = _tiny()
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 8
    x = _input()
    with torch.no_grad():
        _fp32_close(folded(x), model(x))


def test_fold_batchnorm_refuses_a_conv_output_used_twice() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.bn(y) + y  # folding would change the un-normalized branch

    model = _randomize_bn(Branchy())
    with pytest.raises(SatunetError, match="BN folding"):
        fold_batchnorm(model, example_input=_input())


def test_fold_batchnorm_needs_an_input_for_foreign_models() -> None:
    with pytest.raises(ValueError, match="example_input"):
        fold_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))


def test_bf16_autocast_is_close_to_fp32() -> None:
    model = _tiny()
    x = _input()
    with torch.inference_mode():
        ref = model(x)
    with inference_context("cpu", "bf16"):
        out = model(x)
    assert out.dtype == torch.bfloat16
    assert compare_outputs(out, ref)["rel_rms_error"] <= 2e-2


def test_bf16_channels_last_fold_is_close_to_fp32_on_a_study_model() -> None:
    torch.manual_seed(0)
    model = _randomize_bn(create_model("unet_skinny", num_classes=5))
    x = _input()
    with torch.inference_mode():
        ref = model(x)
    fast = prepare_for_inference(model, precision="bf16", channels_last=True, fold_bn=True)
    with inference_context("cpu", "bf16"):
        out = fast(to_input(x, channels_last=True))
    assert compare_outputs(out, ref)["rel_rms_error"] <= 2e-2


def test_autocast_fp32_is_a_no_op() -> None:
    with autocast_context("cpu", "fp32"):
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == torch.float32


@pytest.mark.parametrize(
    ("device", "precision", "match"),
    [
        ("cpu", "fp16", "bf16"),
        ("cpu", "fp8", "unknown precision"),
        ("tpu", "fp32", "device"),
    ],
)
def test_resolve_device_explains_bad_choices(device: str, precision: str, match: str) -> None:
    with pytest.raises(DeviceError, match=match):
        resolve_device(device, precision)


def test_prepare_for_inference_accepts_auto() -> None:
    model = prepare_for_inference(_tiny(), device="auto")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert next(model.parameters()).device.type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_resolve_device_without_cuda() -> None:
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        resolve_device("cuda")


@pytest.mark.slow
def test_compile_keeps_outputs() -> None:
    model = _tiny()
    x = _input()
    with torch.inference_mode():
        ref = model(x)
    fast = prepare_for_inference(model, compile=True, fold_bn=True)
    with inference_context("cpu"):
        out = fast(x)
    _fp32_close(out, ref)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_reduced_precision_is_close(precision: str) -> None:
    model = _tiny().cuda()
    x = _input().cuda()
    with torch.inference_mode():
        ref = model(x)
    fast = prepare_for_inference(model, device="cuda", precision=precision, channels_last=True)
    with inference_context("cuda", precision):
        out = fast(to_input(x, "cuda", channels_last=True))
    assert compare_outputs(out, ref)["rel_rms_error"] <= 2e-2
