"""Test-time augmentation: flips and D4 averaged inside the streaming engine and in evaluate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from satunet.checkpoint import ModelInfo
from satunet.errors import UnknownNameError
from satunet.evaluate import predict_logits
from satunet.infer import TorchPredictor, TtaPredictor, predict_array, tta_transforms, with_tta
from satunet.models import Level, UNet


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_unet() -> UNet:
    torch.manual_seed(0)
    return UNet((Level(4), Level(8)), in_channels=3, num_classes=3).eval()


def manual_d4(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The 8 symmetries written out by hand: rotate (and flip), predict, undo, average."""
    outs = []
    with torch.no_grad():
        for flip in (False, True):
            for k in range(4):
                t = x.flip(-1) if flip else x
                y = model(torch.rot90(t, k, dims=(-2, -1)))
                y = torch.rot90(y, -k, dims=(-2, -1))
                outs.append(y.flip(-1) if flip else y)
    return torch.stack(outs).mean(0)


def test_transform_sets() -> None:
    assert len(tta_transforms("none")) == 1 and len(tta_transforms("flip")) == 3
    assert len(set(tta_transforms("d4"))) == 8 and tta_transforms("d4")[0] == (0, False)
    with pytest.raises(UnknownNameError):
        tta_transforms("d8")


def test_d4_equals_the_mean_of_eight_manual_transforms() -> None:
    model = tiny_unet()
    x = torch.rand(2, 3, 32, 48)  # not square: rotations swap H and W
    want = manual_d4(model, x)
    np.testing.assert_allclose(predict_logits(model, x, tta="d4").numpy(), want.numpy(),
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    predictor = TtaPredictor(TorchPredictor(model), "d4")
    assert predictor.passes == 8
    np.testing.assert_allclose(predictor(x.numpy()), want.numpy(), rtol=1e-5, atol=1e-5)


def test_engine_with_tta_covers_the_scene_like_the_whole_image() -> None:
    """One tile over the whole (padded) image: the streamed TTA result is the direct one."""
    model = tiny_unet()
    image = np.random.default_rng(0).integers(0, 256, (3, 32, 32), dtype=np.uint8)
    predictor = with_tta(TorchPredictor(model), "d4")
    got = predict_array(predictor, image, tile=32, overlap=0, output="logits")
    want = manual_d4(model, torch.from_numpy(image.astype(np.float32) / 255)[None])[0]
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)


class SymmetricConv(nn.Module):
    """A 3x3 conv whose kernels are symmetric under both flips: it commutes with flips."""

    in_channels, num_classes, size_multiple = 3, 3, 1

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect")
        with torch.no_grad():
            w = self.conv.weight
            w.copy_((w + w.flip(-1) + w.flip(-2) + w.flip(-1, -2)) / 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_flip_on_a_symmetric_input_changes_nothing() -> None:
    model = SymmetricConv().eval()
    a = np.random.default_rng(2).random((3, 24, 40)).astype(np.float32)
    a = a + a[:, :, ::-1]
    symmetric = ((a + a[:, ::-1, :]) / 4 * 255).astype(np.uint8)  # mirror-symmetric both ways
    info = ModelInfo.from_model(model)
    plain = predict_array(TorchPredictor(model, info=info), symmetric, tile=16, overlap=4,
                          output="logits")  # fmt: skip
    flipped = predict_array(with_tta(TorchPredictor(model, info=info), "flip"), symmetric,
                            tile=16, overlap=4, output="logits")  # fmt: skip
    np.testing.assert_allclose(flipped, plain, rtol=1e-5, atol=1e-5)
    x = torch.from_numpy(symmetric.astype(np.float32) / 255)[None]
    np.testing.assert_allclose(predict_logits(model, x, tta="flip"), predict_logits(model, x),
                               rtol=1e-5, atol=1e-5)  # fmt: skip


def test_none_is_the_predictor_itself() -> None:
    predictor = TorchPredictor(tiny_unet())
    assert with_tta(predictor, "none") is predictor
    with pytest.raises(UnknownNameError):
        with_tta(predictor, "rot")
