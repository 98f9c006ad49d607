"""Segmentation losses: the Jaccard metric loss family (JDTLoss), cross-entropy and their sums."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from satunet.errors import ConfigError, UnknownNameError
from satunet.metrics import check_labels

ActiveClassesMode = Literal["ALL", "PRESENT"]


def _class_weight_buffer(class_weights: Sequence[float] | None) -> torch.Tensor | None:
    if class_weights is None:
        return None
    weights = torch.as_tensor([float(w) for w in class_weights], dtype=torch.float32)
    if weights.ndim != 1 or len(weights) == 0 or not bool(torch.isfinite(weights).all()):
        raise ValueError(f"class_weights must be a non-empty list of finite numbers, got {weights}")
    if bool((weights < 0).any()):
        raise ValueError(f"class_weights must be >= 0, got {weights.tolist()}")
    return weights


class JDTLoss(nn.Module):
    """Jaccard/Dice/Tversky metric loss (JDTLoss); with the defaults, the study's loss.

    After Wang & Blaschko (arXiv 2302.05666) and upstream ``zifuwanggg/JDTLosses``.

    Per image and class, with probabilities p and labels y over pixels, the intersection is
    TP = Σ min(p, y) = (‖p‖₁ + ‖y‖₁ − ‖p − y‖₁) / 2 (the L1 form: equal to Σ p·y for one-hot
    labels, and still a metric for soft labels), FP = Σ p − TP and FN = Σ y − TP. A class scores
    T = (TP + smooth) / (TP + alpha·FP + beta·FN + smooth) and its loss is (1 − T)^gamma, times
    its class weight. alpha = beta = 1 is the soft Jaccard (IoU) loss, 0.5/0.5 soft Dice,
    anything else Tversky.

    The loss is ``miou_d·L_D + miou_i·L_I + miou_c·L_C``:
      * L_D (mIoU^D, dataset level): TP/FP/FN summed over the batch, mean over active classes.
      * L_I (mIoU^I, image level): per image, mean over its active classes; then mean over
        images with any active class.
      * L_C (mIoU^C, class level): per class, mean over images where it is active; then mean
        over classes active in any image.

    Active classes: "PRESENT" keeps classes whose label reaches above ``threshold`` (for hard
    labels: classes present in the unignored labels, before label smoothing); "ALL" keeps all.
    Class weights scale each class's loss before the plain mean over active classes (as
    upstream: the mean is not normalised by the weights).

    Args:
        gamma: focal exponent (>= 1): larger values focus on badly predicted classes.
        smooth: added to numerator and denominator; with 0 a class absent from labels and
            prediction (only possible when fully ignored) counts as perfectly predicted.
        ignore_index: hard-label value whose pixels are left out entirely (they change
            nothing). Soft targets pass ``keep_mask`` to ``forward`` instead.
        label_smoothing: hard labels become (1 − ε)·one_hot + ε / C.

    Returns a scalar; an all-ignored batch gives 0 with finite (zero) gradients, never NaN.
    NaN or inf logits give a NaN loss (never a perfect score), so divergence cannot pass unseen.
    """

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 1.0,
        gamma: float = 1.0,
        smooth: float = 1.0,
        threshold: float = 0.01,
        class_weights: Sequence[float] | None = None,
        ignore_index: int | None = None,
        miou_d: float = 1.0,
        miou_i: float = 0.0,
        miou_c: float = 0.0,
        active_classes_mode_hard: ActiveClassesMode = "PRESENT",
        active_classes_mode_soft: ActiveClassesMode = "ALL",
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value in [
            ("alpha", alpha), ("beta", beta), ("smooth", smooth), ("threshold", threshold),
            ("miou_d", miou_d), ("miou_i", miou_i), ("miou_c", miou_c),
        ]:  # fmt: skip
            if not value >= 0:
                raise ValueError(f"JDTLoss {name} must be >= 0, got {value}")
        if not gamma >= 1:
            raise ValueError(f"JDTLoss gamma must be >= 1 (1 = no focusing), got {gamma}")
        if miou_d + miou_i + miou_c <= 0:
            raise ValueError("JDTLoss needs one of miou_d, miou_i, miou_c > 0; all are 0")
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        for name, mode in [("hard", active_classes_mode_hard), ("soft", active_classes_mode_soft)]:
            if mode not in ("ALL", "PRESENT"):
                raise ValueError(
                    f"active_classes_mode_{name} must be 'ALL' or 'PRESENT', got {mode!r}"
                )
        self.alpha, self.beta, self.gamma, self.smooth = alpha, beta, gamma, smooth
        self.threshold = threshold
        self.ignore_index = ignore_index
        self.miou_d, self.miou_i, self.miou_c = miou_d, miou_i, miou_c
        self.active_classes_mode_hard = active_classes_mode_hard
        self.active_classes_mode_soft = active_classes_mode_soft
        self.label_smoothing = label_smoothing
        # A buffer follows .to(device); not persistent, so model checkpoints stay loss-free.
        self.register_buffer("class_weights", _class_weight_buffer(class_weights), persistent=False)

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, keep_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Loss of ``logits`` against hard or soft targets.

        Shape:
            logits: (B, C, H, W) raw scores (any float dtype; the loss is computed in float32);
            target: (B, H, W) integer class ids, or (B, C, H, W) float label probabilities;
            keep_mask: optional (B, H, W) bool, False for pixels to leave out.
        """
        if logits.ndim < 2 or not logits.is_floating_point():
            raise ValueError(f"logits must be float (B, C, ...), got {tuple(logits.shape)}")
        batch, num_classes = logits.shape[:2]
        spatial = logits.shape[2:]
        prob = logits.float().softmax(1).reshape(batch, num_classes, -1)  # (B, C, N)
        keep = None
        if keep_mask is not None:
            if keep_mask.shape != (batch, *spatial):
                raise ValueError(f"keep_mask shape {tuple(keep_mask.shape)} != {(batch, *spatial)}")
            keep = keep_mask.reshape(batch, 1, -1).bool()

        if target.is_floating_point():
            if target.shape != logits.shape:
                raise ValueError(
                    f"soft target shape {tuple(target.shape)} != logits shape "
                    f"{tuple(logits.shape)}; hard targets must be integer (B, H, W)"
                )
            label = target.float().reshape(batch, num_classes, -1)
            if keep is not None:
                label = label * keep
            presence = label.amax(2)  # (B, C)
            mode = self.active_classes_mode_soft
        else:
            if target.shape != (batch, *spatial):
                raise ValueError(
                    f"hard target shape {tuple(target.shape)} != {(batch, *spatial)} "
                    f"(logits {tuple(logits.shape)})"
                )
            check_labels(target, num_classes, self.ignore_index)
            target = target.long().reshape(batch, 1, -1)
            if self.ignore_index is not None:
                unignored = target != self.ignore_index
                keep = unignored if keep is None else keep & unignored
                target = target.masked_fill(~unignored, 0)
            classes = torch.arange(num_classes, device=target.device).view(1, -1, 1)
            label = (target == classes).float()  # one-hot (B, C, N)
            if keep is not None:
                label = label * keep
            presence = label.amax(2)
            if self.label_smoothing > 0:
                eps = self.label_smoothing
                label = label * (1 - eps) + eps / num_classes
                if keep is not None:
                    label = label * keep
            mode = self.active_classes_mode_hard

        if keep is not None:
            prob = prob * keep
        tp = torch.minimum(prob, label).sum(2)  # (B, C)
        # Rounding can leave -1e-7 here; a negative FP/FN would push T above 1.
        fp = (prob.sum(2) - tp).clamp_min(0)
        fn = (label.sum(2) - tp).clamp_min(0)

        active = presence > self.threshold if mode == "PRESENT" else torch.ones_like(tp).bool()
        loss = logits.new_zeros((), dtype=torch.float32)
        if self.miou_d > 0:
            per_class = self._class_loss(tp.sum(0), fp.sum(0), fn.sum(0))
            loss = loss + self.miou_d * _masked_mean(per_class, active.any(0))
        if self.miou_i > 0 or self.miou_c > 0:
            matrix = self._class_loss(tp, fp, fn) * active  # (B, C)
            if self.miou_i > 0:
                per_image = matrix.sum(1) / active.sum(1).clamp_min(1)
                loss = loss + self.miou_i * _masked_mean(per_image, active.any(1))
            if self.miou_c > 0:
                per_class = matrix.sum(0) / active.sum(0).clamp_min(1)
                loss = loss + self.miou_c * _masked_mean(per_class, active.any(0))
        return loss

    def extra_repr(self) -> str:
        """The coefficients, shown when the loss is printed."""
        return (
            f"alpha={self.alpha}, beta={self.beta}, gamma={self.gamma}, smooth={self.smooth}, "
            f"miou_d={self.miou_d}, miou_i={self.miou_i}, miou_c={self.miou_c}"
        )

    def _class_loss(self, tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
        """(1 − Tversky)^gamma × class weight, elementwise over (..., C)."""
        den = tp + self.alpha * fp + self.beta * fn + self.smooth
        empty = den == 0
        # den = 0 only when a class has nothing left after masking: score it as perfect. A NaN
        # den (NaN logits, a diverged model) is not 0, so the NaN reaches the loss and the
        # trainer's finite check instead of passing as a perfect score.
        score = torch.where(empty, 1.0, (tp + self.smooth) / torch.where(empty, 1.0, den))
        loss = 1.0 - score
        if self.gamma != 1:
            loss = loss.clamp_min(0) ** self.gamma
        if self.class_weights is not None:
            if self.class_weights.numel() != loss.shape[-1]:
                raise ValueError(
                    f"class_weights has {self.class_weights.numel()} values but the logits "
                    f"have {loss.shape[-1]} classes"
                )
            loss = loss * self.class_weights
        return loss


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask``; 0 (keeping the graph) when nothing is selected.

    No data-dependent branch, so no host sync and nothing for torch.compile to break on.
    """
    return (values * mask).sum() / mask.sum().clamp_min(1)


class CrossEntropyLoss(nn.CrossEntropyLoss):
    """Torch's cross-entropy, but an all-ignored batch gives 0, not NaN, and bad ids a clear error.

    Class weights, label smoothing and ``ignore_index`` behave as in torch.

    Hard targets (B, H, W) are averaged over unignored pixels, weighted as torch does; float
    targets (B, C, H, W) are class probabilities.
    """

    def __init__(
        self,
        class_weights: Sequence[float] | None = None,
        ignore_index: int | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        super().__init__(
            weight=_class_weight_buffer(class_weights),
            ignore_index=-100 if ignore_index is None else ignore_index,
            label_smoothing=label_smoothing,
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy, computed in float32."""
        num_classes = logits.shape[1]
        if self.weight is not None and self.weight.numel() != num_classes:
            raise ValueError(
                f"class_weights has {self.weight.numel()} values but the logits have "
                f"{num_classes} classes"
            )
        logits = logits.float()
        if target.is_floating_point():
            return F.cross_entropy(
                logits, target.float(), weight=self.weight, label_smoothing=self.label_smoothing
            )
        check_labels(target, num_classes, self.ignore_index)
        target = target.long()
        total = F.cross_entropy(
            logits,
            target,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction="sum",
            label_smoothing=self.label_smoothing,
        )
        valid = target != self.ignore_index
        if self.weight is None:
            count = valid.sum().float()
        else:
            count = (self.weight[target.masked_fill(~valid, 0)] * valid).sum()
        # torch's "mean" divides by this too, but gives 0/0 = NaN when every pixel is ignored.
        return total / count.clamp_min(torch.finfo(torch.float32).tiny)


class WeightedSum(nn.Module):
    """Σ weight × loss(logits, target) over ``[(weight, loss), ...]``, e.g. Jaccard + CE."""

    def __init__(self, terms: Sequence[tuple[float, nn.Module]]) -> None:
        super().__init__()
        if not terms:
            raise ValueError("WeightedSum needs at least one (weight, loss) term")
        self.weights = [float(w) for w, _ in terms]
        self.losses = nn.ModuleList(loss for _, loss in terms)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The weighted sum of every term's loss."""
        return sum(
            (w * loss(logits, target) for w, loss in zip(self.weights, self.losses, strict=True)),
            start=logits.new_zeros((), dtype=torch.float32),
        )

    def extra_repr(self) -> str:
        """The term weights, shown when the loss is printed."""
        return f"weights={self.weights}"


LossName = Literal["jaccard", "dice", "tversky", "ce"]

# Each factory takes (class_weights=, ignore_index=, label_smoothing=).
LOSSES: dict[str, Callable[..., nn.Module]] = {
    "jaccard": partial(JDTLoss, alpha=1.0, beta=1.0),  # the study's loss (seed spec section 5)
    "dice": partial(JDTLoss, alpha=0.5, beta=0.5),
    # Tversky (Salehi et al. 2017): FN cost more than FP, which favours recall of rare classes.
    "tversky": partial(JDTLoss, alpha=0.3, beta=0.7),
    "ce": CrossEntropyLoss,
}

_TERM = re.compile(r"^(?:(?P<weight>[0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\*)?(?P<name>[a-z_]+)$")


def create_loss(
    name: str,
    *,
    num_classes: int,
    ignore_index: int | None = None,
    class_weights: Sequence[float] | None = None,
    label_smoothing: float = 0.0,
) -> nn.Module:
    """Build a loss from its name in :data:`LOSSES`, or a sum such as ``"jaccard+ce"``.

    Terms of a sum weigh 1 each unless written ``"0.5*jaccard+ce"``.
    """
    if class_weights is not None and len(class_weights) != num_classes:
        raise ConfigError(
            f"class_weights has {len(class_weights)} values but there are {num_classes} "
            f"classes: give one weight per class"
        )
    terms = []
    for part in name.replace(" ", "").split("+"):
        match = _TERM.match(part)
        if match is None or match["name"] not in LOSSES:
            raise UnknownNameError("loss", match["name"] if match else part, LOSSES)
        loss = LOSSES[match["name"]](
            class_weights=class_weights, ignore_index=ignore_index, label_smoothing=label_smoothing
        )
        terms.append((float(match["weight"] or 1.0), loss))
    if len(terms) == 1 and terms[0][0] == 1.0:
        return terms[0][1]
    return WeightedSum(terms)
