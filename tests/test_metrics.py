from __future__ import annotations

import math
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from satunet.errors import DataError
from satunet.metrics import ConfusionMatrix, StudyImageIoU

# Six pixels, three classes.     matrix [target, pred]:
TARGET = torch.tensor([[[0, 0, 0], [1, 1, 2]]])  # [[2, 1, 0],
PRED = torch.tensor([[[0, 0, 1], [1, 2, 2]]])  #    [0, 1, 1],
MATRIX = torch.tensor([[2, 1, 0], [0, 1, 1], [0, 0, 1]])  # [0, 0, 1]]
# class 0: TP 2 FP 0 FN 1 -> IoU 2/3, F1 4/5; class 1: TP 1 FP 1 FN 1 -> 1/3, 1/2;
# class 2: TP 1 FP 1 FN 0 -> 1/2, 2/3


def test_confusion_matrix_by_hand():
    cm = ConfusionMatrix(3)
    cm.update(PRED, TARGET)
    assert torch.equal(cm.matrix, MATRIX) and cm.matrix.dtype == torch.int64
    assert cm.iou().tolist() == pytest.approx([2 / 3, 1 / 3, 1 / 2])
    assert cm.f1().tolist() == pytest.approx([4 / 5, 1 / 2, 2 / 3])
    scores = cm.compute()
    assert scores["miou"] == pytest.approx((2 / 3 + 1 / 3 + 1 / 2) / 3)
    assert scores["pixel_accuracy"] == pytest.approx(4 / 6)
    assert scores["micro_iou"] == pytest.approx(4 / (4 + 2 + 2))
    assert scores["iou"] == pytest.approx([2 / 3, 1 / 3, 1 / 2])
    assert scores["f1"] == pytest.approx([4 / 5, 1 / 2, 2 / 3])


def test_streaming_logits_and_batches_give_the_same_counts():
    cm = ConfusionMatrix(3)
    logits = torch.nn.functional.one_hot(PRED, 3).permute(0, 3, 1, 2).float() * 5
    cm.update(logits[..., :1, :], TARGET[..., :1, :])  # row by row, logits for half of them
    cm.update(PRED[..., 1:, :], TARGET[..., 1:, :])
    assert torch.equal(cm.matrix, MATRIX)
    cm.reset()
    assert cm.matrix.sum() == 0 and math.isnan(cm.miou()) and math.isnan(cm.pixel_accuracy())


def test_ignored_pixels_are_not_counted():
    cm = ConfusionMatrix(3, ignore_index=255)
    target = torch.cat([TARGET, torch.full((1, 2, 3), 255)], dim=1)
    pred = torch.cat([PRED, torch.tensor([[[0, 1, 2], [2, 2, 2]]])], dim=1)
    cm.update(pred, target)
    assert torch.equal(cm.matrix, MATRIX)


def test_ignored_class_id_gets_no_score():
    cm = ConfusionMatrix(3, ignore_index=0)  # e.g. LoveDA's no-data class 0
    cm.update(PRED, TARGET)
    # Target-0 pixels are gone; class 1 then has TP 1, FP 1 (target 0 -> pred 1 dropped), FN 1.
    assert cm.matrix.tolist() == [[0, 0, 0], [0, 1, 1], [0, 0, 1]]
    iou = cm.iou()
    assert math.isnan(iou[0]) and iou[1:].tolist() == pytest.approx([1 / 2, 1 / 2])
    assert cm.miou() == pytest.approx(0.5)


def test_absent_class_is_nan_and_left_out_of_the_mean():
    cm = ConfusionMatrix(4)
    cm.update(PRED, TARGET)
    assert math.isnan(cm.iou()[3]) and math.isnan(cm.f1()[3])
    assert cm.miou() == pytest.approx((2 / 3 + 1 / 3 + 1 / 2) / 3)


def test_bad_inputs_are_clear_errors():
    cm = ConfusionMatrix(3)
    with pytest.raises(DataError, match=r"class ids \{5\} outside 0..2"):
        cm.update(PRED, TARGET.masked_fill(TARGET == 2, 5))
    with pytest.raises(DataError, match="prediction has class ids"):
        cm.update(PRED + 1, TARGET)
    with pytest.raises(ValueError, match="prediction shape"):
        cm.update(PRED[..., :2], TARGET)
    with pytest.raises(ValueError, match="num_classes=3"):
        cm.update(torch.randn(1, 4, 2, 3), TARGET)


# Study vs standard. Image 1: all class 0, one pixel predicted 1. Image 2: all class 1, all right.
STUDY_TARGET = torch.tensor([[[0, 0], [0, 0]], [[1, 1], [1, 1]]])
STUDY_PRED = torch.tensor([[[0, 0], [0, 1]], [[1, 1], [1, 1]]])


def test_study_metric_differs_from_standard_miou_by_hand():
    study, standard = StudyImageIoU(3), ConfusionMatrix(3)
    study.update(STUDY_PRED, STUDY_TARGET)
    standard.update(STUDY_PRED, STUDY_TARGET)
    # Study: class 0 = image 1 only (3/4); class 1 = image 1 (union 1, IoU 0: counted because it
    # was predicted) and image 2 (1) -> 1/2; class 2 never seen -> 0, still divides by 3.
    assert study.per_class().tolist() == pytest.approx([0.75, 0.5, 0.0])
    assert study.count.tolist() == [1, 2, 0]
    assert study.miou() == pytest.approx((0.75 + 0.5 + 0.0) / 3)
    # Standard: pooled counts, class 0 TP 3 FN 1 -> 3/4; class 1 TP 4 FP 1 -> 4/5; class 2 nan.
    assert standard.miou() == pytest.approx((0.75 + 0.8) / 2)
    assert study.compute() == {
        "study_miou": pytest.approx(1.25 / 3),
        "study_iou": pytest.approx([0.75, 0.5, 0.0]),
    }


def test_study_metric_scores_each_image_alone_whatever_the_batching():
    one_by_one, batched = StudyImageIoU(3), StudyImageIoU(3)
    for i in range(2):
        one_by_one.update(STUDY_PRED[i : i + 1], STUDY_TARGET[i : i + 1])
    batched.update(
        torch.nn.functional.one_hot(STUDY_PRED, 3).permute(0, 3, 1, 2).float(), STUDY_TARGET
    )
    assert torch.equal(one_by_one.iou_sum, batched.iou_sum)
    assert torch.equal(one_by_one.count, batched.count)


def test_study_metric_leaves_ignored_pixels_out_of_union_and_intersection():
    study = StudyImageIoU(3, ignore_index=255)
    target = STUDY_TARGET.clone()
    target[0, 1, 1] = 255  # the one wrong pixel of image 1
    study.update(STUDY_PRED, target)
    assert study.per_class().tolist() == pytest.approx([1.0, 1.0, 0.0])
    assert study.count.tolist() == [1, 1, 0]


def test_all_reduce_is_a_noop_without_distributed():
    cm = ConfusionMatrix(3)
    cm.update(PRED, TARGET)
    assert torch.equal(cm.all_reduce().matrix, MATRIX)


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        cm, study = ConfusionMatrix(3), StudyImageIoU(3)
        cm.update(STUDY_PRED[rank : rank + 1], STUDY_TARGET[rank : rank + 1])  # one image each
        study.update(STUDY_PRED[rank : rank + 1], STUDY_TARGET[rank : rank + 1])
        cm.all_reduce()
        study.all_reduce()
        torch.save(
            {"matrix": cm.matrix, "sum": study.iou_sum, "count": study.count}, f"{out}.{rank}"
        )
    finally:
        dist.destroy_process_group()


def test_all_reduce_sums_over_two_gloo_processes(tmp_path: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "result")
    mp.spawn(_ddp_worker, args=(2, port, out), nprocs=2, join=True)
    cm, study = ConfusionMatrix(3), StudyImageIoU(3)
    cm.update(STUDY_PRED, STUDY_TARGET)
    study.update(STUDY_PRED, STUDY_TARGET)
    for rank in range(2):
        got = torch.load(f"{out}.{rank}", weights_only=True)
        assert torch.equal(got["matrix"], cm.matrix)
        assert torch.equal(got["sum"], study.iou_sum) and torch.equal(got["count"], study.count)


@pytest.mark.gpu
def test_cuda_inputs_give_the_same_scores():
    cm, study = ConfusionMatrix(3), StudyImageIoU(3)
    cm.update(STUDY_PRED.cuda(), STUDY_TARGET.cuda())
    study.update(STUDY_PRED.cuda(), STUDY_TARGET.cuda())
    assert cm.matrix.is_cuda
    assert cm.miou() == pytest.approx((0.75 + 0.8) / 2)
    assert study.miou() == pytest.approx(1.25 / 3)


def test_scores_come_from_the_counts_and_round_trip_through_strict_json():
    import json

    import satunet.evaluate
    from satunet.metrics import Scores

    assert satunet.evaluate.Scores is Scores  # the old import path still works
    target = torch.tensor([[[0, 0], [1, 255]]])
    pred = torch.tensor([[[0, 1], [1, 0]]])
    matrix, study = ConfusionMatrix(3, ignore_index=255), StudyImageIoU(3, ignore_index=255)
    matrix.update(pred, target)
    study.update(pred, target)
    scores = Scores.from_counts(matrix, study, classes=["a", "b", "c"], loss=0.5, num_samples=1)
    assert scores.iou[:2] == [0.5, 0.5] and math.isnan(scores.iou[2])
    assert scores.ignore_index == 255 and scores.loss == 0.5 and scores.miou == 0.5
    raw = json.loads(json.dumps(scores.as_dict(), allow_nan=False))  # nan became null
    assert raw["iou"][2] is None
    back = Scores.from_dict(raw)
    assert back.iou[:2] == scores.iou[:2] and math.isnan(back.iou[2]) and back.loss == 0.5
