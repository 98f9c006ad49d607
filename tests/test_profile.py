from __future__ import annotations

import pytest
import torch

from satunet.models import Level, UNet
from satunet.profile import count_gmacs, model_facts, study_footprint_mb

FOOTPRINT = {  # the paper's Memory_Footprint column, nc=5, 3x512x512 (seed spec 4.2)
    "unet_base": 3966.00,
    "unet_short": 5842.00,
    "unet_skinny": 1292.25,
    "unet_less_conv": 2444.25,
    "unetplusplus_resnet34": 3333.00,
    "deeplabv3plus_resnet34": 872.63,
}


@pytest.mark.parametrize("name", FOOTPRINT)
def test_study_footprint_reproduced_exactly(name: str):
    assert model_facts(name, num_classes=5, size=512).study_footprint_mb == FOOTPRINT[name]


def test_footprint_grows_with_classes_as_in_the_study():
    # seed spec section 9: at nc=8 the sane int32 figure for base is 3972
    assert model_facts("unet_base", num_classes=8).study_footprint_mb == 3972.00


def test_gmacs_are_counted_not_guessed():
    # One 3x3 conv 2->4 at 8x8 = 8*8*4*2*9 MACs; counting must see it, and scale with area.
    model = UNet((Level(4, 1), Level(8, 1)), in_channels=2, num_classes=3)
    small, large = count_gmacs(model, 16, 2), count_gmacs(model, 32, 2)
    assert small > 0
    assert large == pytest.approx(4 * small, rel=1e-6)
    conv = torch.nn.Conv2d(2, 4, 3, padding=1)
    conv.size_multiple = 1
    assert count_gmacs(conv, 8, 2) * 1e9 == 8 * 8 * 4 * 2 * 9


def test_footprint_counts_single_tensor_outputs_only():
    # A 1-level-deep model: Down returns a tuple (dropped, as the study's int32 numpy did).
    model = UNet((Level(2, 1), Level(2, 1)), in_channels=1, num_classes=1)
    mb = study_footprint_mb(model, size=4, in_channels=1)
    # Elements per module output: ConvBlock(4x4x2)+conv+bn+relu = 4*32, pool 8,
    # bottleneck block+conv+bn+relu at 2x2x2 = 4*8, Up: convT 32 + block(4*32) + Up 32, head 16
    elements = 4 * 32 + 8 + 4 * 8 + 32 + 4 * 32 + 32 + 16
    assert mb == round(2 * elements * 4 / 2**20, 2)
