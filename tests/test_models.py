from __future__ import annotations

import pytest
import torch

import satunet
from satunet.errors import InputSizeError, UnknownNameError, WeightsUnavailableError
from satunet.models import Level, UNet, create_model, list_models, model_options
from satunet.profile import count_params

STUDY_MODELS = [
    "unet_base",
    "unet_short",
    "unet_skinny",
    "unet_less_conv",
    "unetplusplus_resnet34",
    "deeplabv3plus_resnet34",
]
PARAMS = {  # seed spec sections 2, 3 and 11
    5: [31_043_781, 8_254_981, 20_095_781, 20_281_253, 26_079_189, 22_438_485],
    8: [31_043_976, 8_255_368, 20_095_880, 20_281_352, 26_079_624, 22_439_256],
}


def test_registry_lists_study_models():
    assert set(STUDY_MODELS) <= set(list_models())
    assert satunet.list_models() == list_models()


@pytest.mark.parametrize("num_classes", [5, 8])
@pytest.mark.parametrize("index", range(6), ids=STUDY_MODELS)
def test_preset_param_count(index: int, num_classes: int):
    with torch.device("meta"):
        model = create_model(STUDY_MODELS[index], num_classes=num_classes)
    assert count_params(model) == PARAMS[num_classes][index]


@pytest.mark.parametrize("name", STUDY_MODELS)
def test_output_shape(name: str):
    model = create_model(name, num_classes=7, in_channels=3).eval()
    multiple = model.size_multiple
    h, w = 2 * multiple, 3 * multiple  # non-square, smallest sizes every model takes
    with torch.no_grad():
        out = model(torch.rand(2, 3, h, w))
    assert out.shape == (2, 7, h, w)
    assert out.dtype == torch.float32


def test_multispectral_input_and_bilinear_option():
    model = create_model("unet_skinny", in_channels=13, num_classes=4, upsample="bilinear").eval()
    with torch.no_grad():
        out = model(torch.rand(1, 13, 64, 64))
    assert out.shape == (1, 4, 64, 64)
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in model.modules())


def test_levels_are_data():
    tiny = UNet((Level(4), Level(8, 1), Level(16, 3)), in_channels=2, num_classes=3)
    assert len(tiny.encoder) == 2 and len(tiny.decoder) == 2
    assert tiny.size_multiple == 4
    assert tiny(torch.rand(1, 2, 12, 8)).shape == (1, 3, 12, 8)


def test_unknown_model_suggests_closest():
    with pytest.raises(UnknownNameError, match="Did you mean 'unet_skinny'") as info:
        create_model("unet_skiny", num_classes=5)
    assert "deeplabv3plus_resnet34" in str(info.value)


def test_unknown_option_is_an_error():
    with pytest.raises(UnknownNameError, match="'upsample'"):
        create_model("unet_skinny", num_classes=5, upsampel="bilinear")
    with pytest.raises(UnknownNameError):
        create_model("deeplabv3plus_resnet34", num_classes=5, dropout=0.2)
    assert model_options("deeplabv3plus_resnet34") == ["encoder_weights"]


@pytest.mark.parametrize("name", ["unet_skinny", "deeplabv3plus_resnet34"])
def test_bad_input_size_says_what_works(name: str):
    model = create_model(name, num_classes=5).eval()
    with pytest.raises(InputSizeError, match=r"divisible by \d+.*height \d+ or \d+"):
        model(torch.rand(1, 3, 100, 100))


def test_wrong_band_count_is_explained():
    model = create_model("unet_skinny", num_classes=5)
    with pytest.raises(InputSizeError, match="built for 3 input bands but got 4"):
        model(torch.rand(1, 4, 64, 64))


def test_imagenet_offline_fails_clearly(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match="could not fetch.*encoder_weights="):
        create_model("deeplabv3plus_resnet34", num_classes=5, encoder_weights="imagenet")


def test_local_encoder_weights(tmp_path):
    source = create_model("deeplabv3plus_resnet34", num_classes=5)
    weights = {k: v.clone().fill_(0.5) for k, v in source.encoder.state_dict().items()}
    weights["fc.weight"] = torch.zeros(1000, 512)  # torchvision files carry the classifier too
    weights["fc.bias"] = torch.zeros(1000)
    path = tmp_path / "resnet34.pth"
    torch.save(weights, path)
    model = create_model("deeplabv3plus_resnet34", num_classes=5, encoder_weights=str(path))
    assert torch.all(model.encoder.conv1.weight == 0.5)

    with pytest.raises(WeightsUnavailableError, match="neither 'imagenet' nor an existing file"):
        create_model("deeplabv3plus_resnet34", num_classes=5, encoder_weights=tmp_path / "no.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(3)}, bad)
    with pytest.raises(WeightsUnavailableError, match="does not match the resnet34 encoder"):
        create_model("unetplusplus_resnet34", num_classes=5, encoder_weights=bad)
