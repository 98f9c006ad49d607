"""Segmentation metrics: a streaming confusion matrix (the standard scores) and the study's metric.

Both accumulate integer counts per batch and derive ratios only at the end, so results do not
depend on batch size, and both sum their counts across processes under DDP.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from satunet.errors import DataError
from satunet.files import jsonable
from satunet.runtime import is_distributed

# The study divides each class's summed per-image IoU by (count + 1e-10) (seed spec section 6).
_STUDY_EPS = 1e-10


@dataclass
class Scores:
    """Scores of one model on one split.

    ``miou``, ``iou``, ``f1``, ``micro_iou`` and ``pixel_accuracy`` are the standard scores from
    one confusion matrix over every pixel (comparable with published results); ``study_miou``
    and ``study_iou`` are the study's per-image metric (seed spec section 6), kept to reproduce
    its tables, not to compare. Per-class values are nan (None in JSON) where undefined.
    """

    classes: list[str]
    miou: float
    iou: list[float]
    f1: list[float]
    micro_iou: float
    pixel_accuracy: float
    study_miou: float
    study_iou: list[float]
    loss: float | None = None
    num_samples: int = 0
    ignore_index: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict with nan written as None, ready for strict JSON."""
        return jsonable(asdict(self))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Scores:
        """Inverse of :meth:`as_dict` (None back to nan)."""
        known = {f for f in cls.__dataclass_fields__}
        values = {k: _nan_for_none(v) for k, v in raw.items() if k in known}
        for key in ("loss", "ignore_index"):
            if key in raw:
                values[key] = raw[key]
        return cls(**values)

    @classmethod
    def from_counts(
        cls,
        matrix: ConfusionMatrix,
        study: StudyImageIoU,
        *,
        classes: list[str] | None = None,
        loss: float | None = None,
        num_samples: int = 0,
    ) -> Scores:
        """The scores of a filled (and all-reduced) confusion matrix and study metric."""
        standard, theirs = matrix.compute(), study.compute()
        n = matrix.num_classes
        return cls(
            classes=list(classes) if classes is not None else [str(i) for i in range(n)],
            miou=standard["miou"],
            iou=standard["iou"],
            f1=standard["f1"],
            micro_iou=standard["micro_iou"],
            pixel_accuracy=standard["pixel_accuracy"],
            study_miou=theirs["study_miou"],
            study_iou=theirs["study_iou"],
            loss=loss,
            num_samples=num_samples,
            ignore_index=matrix.ignore_index,
        )


def _nan_for_none(value: Any) -> Any:
    if value is None:
        return math.nan
    if isinstance(value, list):
        return [_nan_for_none(v) for v in value]
    return value


def check_labels(
    target: torch.Tensor, num_classes: int, ignore_index: int | None = None, *, what: str = "target"
) -> None:
    """Raise DataError if ``target`` holds a class id outside ``[0, num_classes)``.

    Without this check an out-of-range id corrupts counts silently (bincount) or kills a CUDA
    context with a device-side assert (cross-entropy). It costs one host sync.
    """
    bad = (target < 0) | (target >= num_classes)
    if ignore_index is not None:
        bad &= target != ignore_index
    if bool(bad.any()):
        values = torch.unique(target[bad]).tolist()
        shown = ", ".join(str(v) for v in values[:8]) + (", ..." if len(values) > 8 else "")
        hint = (
            "set ignore_index to the no-data value or fix num_classes"
            if ignore_index is None
            else f"ignore_index is {ignore_index}; check num_classes and the mask encoding"
        )
        raise DataError(
            f"{what} has class ids {{{shown}}} outside 0..{num_classes - 1} "
            f"(num_classes={num_classes}): {hint}"
        )


def _as_class_ids(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class ids from ``pred`` (ids, or logits with classes on dim 1), shape-checked to target."""
    if pred.is_floating_point():
        if pred.ndim != target.ndim + 1 or pred.shape[1] != num_classes:
            raise ValueError(
                f"logits of shape {tuple(pred.shape)} do not match num_classes={num_classes} and "
                f"target shape {tuple(target.shape)}: expected (B, {num_classes}, H, W)"
            )
        pred = pred.argmax(1)
    if pred.shape != target.shape:
        raise ValueError(
            f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}: "
            "pass class ids (B, H, W) or logits (B, C, H, W) for a (B, H, W) target"
        )
    if target.is_floating_point() or target.dtype == torch.bool:
        raise ValueError(f"target must hold integer class ids, got dtype {target.dtype}")
    return pred


def _batched_confusion(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int | None
) -> torch.Tensor:
    """Per-image confusion matrices (B, C, C) indexed [target, pred], from one bincount."""
    check_labels(target, num_classes, ignore_index)
    check_labels(pred, num_classes, what="prediction")
    c2 = num_classes * num_classes
    batch = target.shape[0] if target.ndim else 1
    target, pred = target.reshape(batch, -1).long(), pred.reshape(batch, -1).long()
    offset = torch.arange(batch, device=target.device).unsqueeze(1) * c2
    index = offset + target * num_classes + pred
    if ignore_index is not None:
        # Ignored pixels go to one extra bin that is dropped: no boolean indexing, no host sync.
        index = torch.where(target == ignore_index, batch * c2, index)
    counts = torch.bincount(index.flatten(), minlength=batch * c2 + 1)
    return counts[: batch * c2].view(batch, num_classes, num_classes)


def _all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes in place; no-op unless torch.distributed is running."""
    if not is_distributed():
        return tensor
    if dist.get_backend() == "nccl" and not tensor.is_cuda:
        # NCCL only reduces CUDA tensors; metrics may live on the CPU.
        reduced = tensor.cuda()
        dist.all_reduce(reduced)
        tensor.copy_(reduced.cpu())
    else:
        dist.all_reduce(tensor)
    return tensor


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """Return num / den with nan where den is 0 (the score is undefined, not zero)."""
    return torch.where(den > 0, num / den.clamp_min(1), torch.full_like(num, float("nan")))


class ConfusionMatrix:
    """Pixel counts over a whole dataset, from which the standard segmentation scores come.

    Scores are pooled over all pixels (TP, FP, FN summed over images) and then averaged over
    classes: the standard mIoU of the LoveDA and LandCover.ai benchmarks. Never average
    per-batch ratios instead.

    Args:
        num_classes: number of classes C the model predicts.
        ignore_index: target value whose pixels are skipped (no-data). If it is a class id in
            ``[0, C)``, that class gets no score (nan) and is left out of every mean.
        device: where counts live; by default they follow the tensors given to ``update``.

    Under DDP, call :meth:`all_reduce` once after the last ``update`` and before reading scores.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._pinned = device is not None
        self.matrix = torch.zeros(
            num_classes, num_classes, dtype=torch.int64, device=device or "cpu"
        )

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch.

        Shape:
            pred: (B, H, W) class ids or (B, C, H, W) logits/probabilities (argmax is taken);
            target: (B, H, W) integer class ids.
        """
        pred = _as_class_ids(pred, target, self.num_classes)
        if self._pinned:
            pred, target = pred.to(self.matrix.device), target.to(self.matrix.device)
        elif self.matrix.device != target.device:
            self.matrix = self.matrix.to(target.device)
            pred = pred.to(target.device)
        confusion = _batched_confusion(
            pred.reshape(1, -1), target.reshape(1, -1), self.num_classes, self.ignore_index
        )
        self.matrix += confusion[0]

    def all_reduce(self) -> ConfusionMatrix:
        """Sum the counts of every process (torch.distributed); no-op when not distributed."""
        _all_reduce_sum(self.matrix)
        return self

    def reset(self) -> None:
        """Zero the counts, e.g. before the next validation epoch."""
        self.matrix.zero_()

    def _scored(self) -> torch.Tensor:
        """Bool (C,): classes that get a score (all but an in-range ignore_index)."""
        scored = torch.ones(self.num_classes, dtype=torch.bool)
        if self.ignore_index is not None and 0 <= self.ignore_index < self.num_classes:
            scored[self.ignore_index] = False
        return scored

    def _stats(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m = self.matrix.cpu().double()
        tp = m.diagonal()
        return tp, m.sum(0) - tp, m.sum(1) - tp  # tp, fp, fn per class

    def iou(self) -> torch.Tensor:
        """Per-class IoU = TP / (TP + FP + FN), float64 (C,).

        nan where the class is absent from both target and prediction, or is the ignored class.
        """
        tp, fp, fn = self._stats()
        iou = _ratio(tp, tp + fp + fn)
        return torch.where(self._scored(), iou, float("nan"))

    def miou(self) -> float:
        """Macro mean of the per-class IoU over the classes that have one (the standard mIoU)."""
        return float(self.iou().nanmean())

    def micro_iou(self) -> float:
        """IoU of the pooled counts, Σ TP / Σ (TP + FP + FN) over scored classes.

        Frequent classes dominate it; it is the "micro" reduction of smp.metrics, which the
        study printed but did not report.
        """
        tp, fp, fn = (s[self._scored()] for s in self._stats())
        return float(_ratio(tp.sum(), (tp + fp + fn).sum()))

    def pixel_accuracy(self) -> float:
        """Fraction of counted pixels whose predicted class is right; nan before any pixel."""
        m = self.matrix.cpu().double()
        return float(_ratio(m.trace(), m.sum()))

    def f1(self) -> torch.Tensor:
        """Per-class F1 (Dice) = 2 TP / (2 TP + FP + FN), float64 (C,); nan as for :meth:`iou`."""
        tp, fp, fn = self._stats()
        f1 = _ratio(2 * tp, 2 * tp + fp + fn)
        return torch.where(self._scored(), f1, float("nan"))

    def compute(self) -> dict[str, Any]:
        """All scores as plain Python floats (nan where undefined) for logs and JSON."""
        return {
            "miou": self.miou(),
            "micro_iou": self.micro_iou(),
            "pixel_accuracy": self.pixel_accuracy(),
            "iou": self.iou().tolist(),
            "f1": self.f1().tolist(),
        }


class StudyImageIoU:
    """The study's "mIOU", exactly as its code computed it: reproduces the paper, nothing more.

    For every image and class c, with union = #(gt == c OR pred == c): if union > 0 the image's
    IoU for c is added to a per-class sum and a per-class count goes up by one (so an image
    counts when c is in the ground truth *or* only in the prediction). The class score is
    sum / (count + 1e-10) and the overall score is the sum of the class scores divided by
    ``num_classes``, over all classes, including no-data and classes never seen (seed spec
    section 6).

    It is a per-image macro average: a 20-pixel patch weighs as much as a whole tile, and false
    positives in images without the class add zeros. It is **not comparable** with the
    published LoveDA or LandCover.ai mIoU; use :class:`ConfusionMatrix` for that.

    With ``ignore_index`` set (the study had none), ignored pixels are left out of both the
    union and the intersection; the overall score still divides by ``num_classes``.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.iou_sum = torch.zeros(num_classes, dtype=torch.float64)
        self.count = torch.zeros(num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch, scoring each image on its own.

        Shape:
            pred: (B, H, W) class ids or (B, C, H, W) logits; target: (B, H, W) class ids.
        """
        pred = _as_class_ids(pred, target, self.num_classes)
        if target.ndim < 2:
            raise ValueError(f"target must be (B, H, W), got shape {tuple(target.shape)}")
        confusion = _batched_confusion(pred, target, self.num_classes, self.ignore_index)
        confusion = confusion.double()  # (B, C, C)
        inter = confusion.diagonal(dim1=1, dim2=2)
        union = confusion.sum(1) + confusion.sum(2) - inter
        counted = union > 0
        iou = torch.where(counted, inter / union.clamp_min(1), 0.0)
        self.iou_sum += iou.sum(0).cpu()
        self.count += counted.sum(0).cpu()

    def all_reduce(self) -> StudyImageIoU:
        """Sum sums and counts over processes (torch.distributed); no-op when not distributed."""
        _all_reduce_sum(self.iou_sum)
        _all_reduce_sum(self.count)
        return self

    def reset(self) -> None:
        """Forget every image seen so far."""
        self.iou_sum.zero_()
        self.count.zero_()

    def per_class(self) -> torch.Tensor:
        """The study's per-class score, sum / (count + 1e-10): 0 for a class never seen."""
        return self.iou_sum / (self.count + _STUDY_EPS)

    def miou(self) -> float:
        """The study's overall score: the per-class scores summed and divided by num_classes."""
        return float(self.per_class().sum() / self.num_classes)

    def compute(self) -> dict[str, Any]:
        """The study's scores as plain floats, under names that say whose metric they are."""
        return {"study_miou": self.miou(), "study_iou": self.per_class().tolist()}
