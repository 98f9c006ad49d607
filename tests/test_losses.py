from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from satunet.errors import ConfigError, DataError, UnknownNameError
from satunet.losses import LOSSES, CrossEntropyLoss, JDTLoss, WeightedSum, create_loss

# Two pixels, three classes, labels [0, 1]; class 2 is predicted a little but never labelled.
PROBS = torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.6, 0.2]])  # (pixel, class)
LOGITS = PROBS.log().T.reshape(1, 3, 1, 2)  # softmax(LOGITS) == PROBS
TARGET = torch.tensor([[[0, 1]]])
# Per class: TP = sum min(p, y), FP = sum p - TP, FN = sum y - TP
#   class 0: TP 0.7, FP 0.2, FN 0.3    class 1: TP 0.6, FP 0.2, FN 0.4    class 2: TP 0, FP 0.3


def test_jaccard_is_one_minus_soft_iou_by_hand():
    loss = JDTLoss(smooth=0.0)(LOGITS, TARGET)
    iou = [0.7 / (0.7 + 0.2 + 0.3), 0.6 / (0.6 + 0.2 + 0.4)]  # class 2 absent: not PRESENT
    assert loss.item() == pytest.approx(1 - sum(iou) / 2, abs=1e-6)


def test_jaccard_with_smoothing_is_one_minus_smoothed_soft_iou():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 4, 5, 5), torch.randint(0, 4, (2, 5, 5))
    p, y = logits.softmax(1), F.one_hot(target, 4).permute(0, 3, 1, 2).float()
    inter = (p * y).sum((0, 2, 3))
    union = p.sum((0, 2, 3)) + y.sum((0, 2, 3)) - inter
    present = y.sum((0, 2, 3)) > 0
    expected = (1 - (inter + 1) / (union + 1))[present].mean()
    assert JDTLoss(smooth=1.0)(logits, target).item() == pytest.approx(expected.item(), abs=1e-6)


def test_dice_is_one_minus_soft_dice_by_hand():
    loss = JDTLoss(alpha=0.5, beta=0.5, smooth=0.0)(LOGITS, TARGET)
    dice = [2 * 0.7 / (0.9 + 1.0), 2 * 0.6 / (0.8 + 1.0)]
    assert loss.item() == pytest.approx(1 - sum(dice) / 2, abs=1e-6)
    # smooth=1 enters Tversky's form: (TP + 1) / (TP + FP/2 + FN/2 + 1) = (2TP + 2) / (|p|+|y| + 2)
    smoothed = [(2 * 0.7 + 2) / (1.9 + 2), (2 * 0.6 + 2) / (1.8 + 2)]
    dice_loss = create_loss("dice", num_classes=3)(LOGITS, TARGET)
    assert dice_loss.item() == pytest.approx(1 - sum(smoothed) / 2, abs=1e-6)


def test_tversky_weighs_false_negatives_by_beta():
    loss = create_loss("tversky", num_classes=3)(LOGITS, TARGET)  # alpha 0.3, beta 0.7, smooth 1
    t = [
        (0.7 + 1) / (0.7 + 0.3 * 0.2 + 0.7 * 0.3 + 1),
        (0.6 + 1) / (0.6 + 0.3 * 0.2 + 0.7 * 0.4 + 1),
    ]
    assert loss.item() == pytest.approx(1 - sum(t) / 2, abs=1e-6)


def test_present_mode_skips_unlabelled_classes_and_all_mode_counts_them():
    present = JDTLoss(smooth=0.0)(LOGITS, TARGET)
    every = JDTLoss(smooth=0.0, active_classes_mode_hard="ALL")(LOGITS, TARGET)
    l0, l1, l2 = 1 - 0.7 / 1.2, 1 - 0.6 / 1.2, 1.0  # class 2: TP 0 -> IoU 0
    assert present.item() == pytest.approx((l0 + l1) / 2, abs=1e-6)
    assert every.item() == pytest.approx((l0 + l1 + l2) / 3, abs=1e-6)


def test_class_weights_scale_each_class_before_the_mean():
    loss = JDTLoss(smooth=0.0, class_weights=[1.0, 3.0, 5.0])(LOGITS, TARGET)
    assert loss.item() == pytest.approx((1 * (1 - 0.7 / 1.2) + 3 * (1 - 0.6 / 1.2)) / 2, abs=1e-6)


def test_focal_gamma_raises_each_class_loss_to_the_power():
    loss = JDTLoss(smooth=0.0, gamma=2.0)(LOGITS, TARGET)
    assert loss.item() == pytest.approx(((1 - 0.7 / 1.2) ** 2 + (1 - 0.6 / 1.2) ** 2) / 2, abs=1e-6)


def test_image_and_class_level_terms_by_hand():
    # Image A as above; image B is all class 2 with probabilities (0.1, 0.1, 0.8), (0.1, 0.3, 0.6).
    probs_b = torch.tensor([[0.1, 0.1, 0.8], [0.1, 0.3, 0.6]])
    logits = torch.cat([LOGITS, probs_b.log().T.reshape(1, 3, 1, 2)])
    target = torch.tensor([[[0, 1]], [[2, 2]]])
    a0, a1, b2 = 1 - 0.7 / 1.2, 1 - 0.6 / 1.2, 1 - 1.4 / 2.0  # per-image losses of present classes
    expect_i = ((a0 + a1) / 2 + b2) / 2  # mean over each image's classes, then over images
    expect_c = (a0 + a1 + b2) / 3  # mean over images per class, then over classes
    # Batch sums: class 0 TP .7 FP .4 FN .3; class 1 TP .6 FP .6 FN .4; class 2 TP 1.4 FP .3 FN .6
    expect_d = ((1 - 0.7 / 1.4) + (1 - 0.6 / 1.6) + (1 - 1.4 / 2.3)) / 3

    def loss(**kw: float) -> float:
        return JDTLoss(smooth=0.0, **kw)(logits, target).item()

    assert loss(miou_d=0.0, miou_i=1.0) == pytest.approx(expect_i, abs=1e-6)
    assert loss(miou_d=0.0, miou_c=1.0) == pytest.approx(expect_c, abs=1e-6)
    assert loss() == pytest.approx(expect_d, abs=1e-6)
    combined = loss(miou_d=0.5, miou_i=0.25, miou_c=2.0)
    assert combined == pytest.approx(0.5 * expect_d + 0.25 * expect_i + 2.0 * expect_c, abs=1e-6)


CONFIGS = [
    {},
    {"alpha": 0.5, "beta": 0.5, "gamma": 2.0},
    {"miou_d": 0.0, "miou_i": 1.0, "miou_c": 1.0, "active_classes_mode_hard": "ALL"},
    {"label_smoothing": 0.1, "class_weights": [1.0, 2.0, 0.5, 1.0]},
]


@pytest.mark.parametrize("options", CONFIGS)
def test_ignored_pixels_change_nothing_compared_with_cropping_them(options: dict):
    torch.manual_seed(1)
    logits, target = torch.randn(2, 4, 4, 6), torch.randint(0, 4, (2, 4, 6))
    ignored = target.clone()
    ignored[..., 4:] = 255
    loss = JDTLoss(ignore_index=255, **options)
    cropped = loss(logits[..., :4], target[..., :4])
    assert loss(logits, ignored).item() == pytest.approx(cropped.item(), abs=1e-6)


def test_scattered_ignored_pixels_equal_removing_them():
    torch.manual_seed(2)
    logits, target = torch.randn(1, 3, 5, 5), torch.randint(0, 3, (1, 5, 5))
    drop = torch.rand(1, 5, 5) < 0.4
    kept_logits = logits[:, :, ~drop[0]].unsqueeze(2)  # (1, C, 1, K)
    kept_target = target[:, ~drop[0]].unsqueeze(1)  # (1, 1, K)
    loss = JDTLoss(ignore_index=7, miou_i=1.0)
    expected = loss(kept_logits, kept_target)
    assert loss(logits, target.masked_fill(drop, 7)).item() == pytest.approx(expected.item(), 1e-6)
    # A keep_mask does the same for soft targets.
    soft = F.one_hot(target, 3).permute(0, 3, 1, 2).float()
    soft_loss = JDTLoss(miou_i=1.0, active_classes_mode_soft="PRESENT")
    masked = soft_loss(logits, soft, keep_mask=~drop)
    assert masked.item() == pytest.approx(expected.item(), abs=1e-6)


@pytest.mark.parametrize("mode", ["PRESENT", "ALL"])
def test_soft_one_hot_targets_equal_hard_targets(mode: str):
    torch.manual_seed(3)
    logits, target = torch.randn(2, 5, 4, 4), torch.randint(0, 3, (2, 4, 4))  # classes 3, 4 absent
    soft = F.one_hot(target, 5).permute(0, 3, 1, 2).float()
    options = {"active_classes_mode_hard": mode, "active_classes_mode_soft": mode, "miou_i": 0.5}
    loss = JDTLoss(**options)
    assert loss(logits, soft).item() == pytest.approx(loss(logits, target).item(), abs=1e-6)


def test_label_smoothing_equals_smoothed_soft_targets():
    torch.manual_seed(4)
    logits, target = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    eps = 0.2
    soft = F.one_hot(target, 3).permute(0, 3, 1, 2).float() * (1 - eps) + eps / 3
    hard = JDTLoss(label_smoothing=eps, active_classes_mode_hard="ALL")(logits, target)
    assert hard.item() == pytest.approx(JDTLoss()(logits, soft).item(), abs=1e-6)
    assert hard.item() != pytest.approx(JDTLoss()(logits, target).item(), abs=1e-4)


def test_soft_labels_keep_the_l1_intersection():
    # TP = sum min(p, y), not sum p*y: with p == y the loss is exactly 0 even for soft labels.
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]).T.reshape(1, 3, 1, 2)
    assert JDTLoss(smooth=0.0)(probs.log(), probs).item() == pytest.approx(0.0, abs=1e-6)


def test_gradients_are_finite_including_all_ignored_and_extreme_logits():
    torch.manual_seed(5)
    cases = [
        (torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))),
        (torch.full((2, 3, 4, 4), 1e4) * torch.randn(2, 3, 1, 1).sign(), torch.zeros(2, 4, 4)),
        (torch.randn(2, 3, 4, 4), torch.full((2, 4, 4), 255)),  # every pixel ignored
    ]
    losses = [
        JDTLoss(ignore_index=255, miou_i=1.0, miou_c=1.0),
        JDTLoss(ignore_index=255, smooth=0.0, active_classes_mode_hard="ALL", gamma=2.0),
        create_loss("jaccard+ce", num_classes=3, ignore_index=255, class_weights=[1, 2, 3]),
    ]
    for logits, target in cases:
        for loss_fn in losses:
            leaf = logits.clone().requires_grad_()
            loss = loss_fn(leaf, target.long())
            loss.backward()
            assert torch.isfinite(loss), (loss_fn, target.unique())
            assert torch.isfinite(leaf.grad).all()
    all_ignored = losses[0](cases[2][0], cases[2][1])
    assert all_ignored.item() == 0.0


def test_low_precision_logits_are_scored_in_float32():
    torch.manual_seed(6)
    logits, target = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    loss = JDTLoss()
    half = loss(logits.bfloat16(), target)
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(loss(logits, target).item(), abs=1e-2)


def test_bad_class_ids_and_shapes_are_clear_errors():
    logits = torch.randn(1, 3, 2, 2)
    with pytest.raises(DataError, match=r"class ids \{3\} outside 0..2"):
        JDTLoss()(logits, torch.tensor([[[0, 1], [2, 3]]]))
    with pytest.raises(DataError, match="ignore_index"):
        create_loss("ce", num_classes=3)(logits, torch.tensor([[[0, 255], [1, 2]]]))
    with pytest.raises(ValueError, match="hard target shape"):
        JDTLoss()(logits, torch.zeros(1, 3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="class_weights has 2 values"):
        JDTLoss(class_weights=[1.0, 2.0])(logits, torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="gamma"):
        JDTLoss(gamma=0.5)


def test_cross_entropy_matches_torch_and_survives_all_ignored():
    torch.manual_seed(7)
    logits, target = torch.randn(2, 4, 3, 3), torch.randint(0, 4, (2, 3, 3))
    target[0, 0] = 9
    weights = [0.5, 1.0, 2.0, 4.0]
    ours = CrossEntropyLoss(class_weights=weights, ignore_index=9, label_smoothing=0.1)
    ref = torch.nn.CrossEntropyLoss(torch.tensor(weights), ignore_index=9, label_smoothing=0.1)
    assert ours(logits, target).item() == pytest.approx(ref(logits, target).item(), rel=1e-5)
    assert isinstance(ours, torch.nn.CrossEntropyLoss)
    probs = torch.rand(2, 4, 3, 3).softmax(1)
    soft_ref = torch.nn.CrossEntropyLoss(torch.tensor(weights), label_smoothing=0.1)
    assert ours(logits, probs).item() == pytest.approx(soft_ref(logits, probs).item(), rel=1e-5)
    logits.requires_grad_()
    empty = ours(logits, torch.full((2, 3, 3), 9))
    empty.backward()
    assert empty.item() == 0.0 and torch.isfinite(logits.grad).all()
    assert math.isnan(ref(logits, torch.full((2, 3, 3), 9)).item())  # what we protect against


def test_create_loss_names_and_sums():
    assert set(LOSSES) >= {"jaccard", "dice", "tversky", "ce"}
    jaccard = create_loss("jaccard", num_classes=3)
    assert isinstance(jaccard, JDTLoss) and (jaccard.alpha, jaccard.beta) == (1.0, 1.0)
    total = create_loss("jaccard + ce", num_classes=3, ignore_index=255)
    assert isinstance(total, WeightedSum) and total.weights == [1.0, 1.0]
    weighted = create_loss("0.5*jaccard+2*ce", num_classes=3)
    assert weighted.weights == [0.5, 2.0]
    expected = 0.5 * jaccard(LOGITS, TARGET) + 2 * F.cross_entropy(LOGITS, TARGET)
    assert weighted(LOGITS, TARGET).item() == pytest.approx(expected.item(), abs=1e-6)
    with pytest.raises(UnknownNameError, match="Did you mean 'jaccard'"):
        create_loss("jacard+ce", num_classes=3)
    with pytest.raises(ConfigError, match="one weight per class"):
        create_loss("ce", num_classes=3, class_weights=[1.0, 2.0])


def test_class_weights_follow_the_module_to_a_device_and_stay_out_of_state_dict():
    loss = create_loss("jaccard+ce", num_classes=3, class_weights=[1, 2, 3])
    assert loss.state_dict().keys() <= {"losses.1.weight"}  # torch's CE keeps its weight buffer
    assert loss.to(torch.float64).losses[0].class_weights.dtype == torch.float64


@pytest.mark.gpu
def test_cuda_fp16_autocast_matches_cpu():
    torch.manual_seed(8)
    logits, target = torch.randn(2, 3, 16, 16), torch.randint(0, 3, (2, 16, 16))
    loss = create_loss("jaccard+ce", num_classes=3, class_weights=[1, 2, 3], ignore_index=255)
    expected = loss(logits, target).item()
    with torch.autocast("cuda", dtype=torch.float16):
        got = loss.cuda()(logits.cuda().half(), target.cuda())
    assert got.dtype == torch.float32 and got.item() == pytest.approx(expected, abs=1e-2)


@pytest.mark.parametrize("name", ["jaccard", "dice", "tversky", "jaccard+ce"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_logits_give_a_nan_loss_never_a_perfect_score(name: str, bad: float):
    """Issue 11: a NaN denominator used to score as perfect (loss 0.0) and hide divergence."""
    logits = torch.randn(2, 3, 8, 8)
    logits[0, :, 0, 0] = bad
    target = torch.randint(0, 3, (2, 8, 8))
    assert torch.isnan(create_loss(name, num_classes=3)(logits, target))
    assert torch.isnan(JDTLoss(miou_d=0, miou_i=1, miou_c=1, gamma=2)(logits, target))
