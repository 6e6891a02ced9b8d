"""SAM's training loss: focal (x20) + dice on the mask logits, and MSE of the predicted IoU.

As in the SAM paper (Kirillov et al. 2023, section 3 and appendix A): sigmoid focal loss (gamma 2)
averaged over pixels, weighted 20:1 against the dice loss (+1 smoothing, on the sigmoid
probabilities), plus the squared error between the IoU head's output and the IoU of the thresholded
prediction with the truth. Targets may be soft (the fraction of each low-resolution cell the object
covers); for 0/1 targets every term is the textbook one.

The focal loss has no alpha weighting by default. The paper gives none; SAM 2's released training
code uses alpha 0.25, which puts the loss's optimum at logit 0 only where a pixel is an object
pixel with 75 % probability. From an unsure start (a new domain, or random weights) the decoder
then keeps its logits below 0. A random-weight MobileSAM trained so for 1,200 steps had found the
objects' boxes (logits about -0.8 inside them, -6 outside) but its validation IoU stayed at 0 to
0.12 (mostly empty masks); the same weights trained on without alpha reached 0.26 in one epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

FOCAL_WEIGHT = 20.0
FOCAL_ALPHA: float | None = None  # see the module docstring
DICE_WEIGHT = 1.0
IOU_WEIGHT = 1.0


def focal_loss(
    logits: torch.Tensor, target: torch.Tensor, *, alpha: float | None = None, gamma: float = 2.0
) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al. 2017) of each mask, averaged over its pixels.

    ``(1 - p_t)^gamma BCE(logit, t)`` with ``p_t = p t + (1 - p)(1 - t)``, times
    ``alpha_t = alpha t + (1 - alpha)(1 - t)`` when ``alpha`` is given.

    Args:
        logits: float (N, h, w) mask logits.
        target: float (N, h, w) in [0, 1].

    Returns:
        float (N,).
    """
    logits, target = logits.float(), target.float()
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = (1 - p_t) ** gamma * ce
    if alpha is not None:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.flatten(1).mean(1)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, *, smooth: float = 1.0) -> torch.Tensor:
    """``1 - (2 sum(p t) + smooth) / (sum(p) + sum(t) + smooth)`` per mask, ``p = sigmoid(logits)``.

    Args:
        logits: float (N, h, w) mask logits.
        target: float (N, h, w) in [0, 1].

    Returns:
        float (N,).
    """
    p = torch.sigmoid(logits.float()).flatten(1)
    t = target.float().flatten(1)
    return 1 - (2 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth)


@torch.no_grad()
def mask_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of the predicted mask (``logits > 0``) with the target, per mask; 1 where both are empty.

    With a soft target the intersection and union weigh each cell by its coverage: ``sum(m t) /
    (sum(m) + sum(t) - sum(m t))``, which is the plain IoU for a 0/1 target.

    Returns:
        float (N,), no gradient.
    """
    m = (logits > 0).flatten(1).float()
    t = target.float().flatten(1)
    inter = (m * t).sum(1)
    union = m.sum(1) + t.sum(1) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.ones_like(union))


@dataclass(frozen=True)
class LossTerms:
    """The loss of a batch of masks and its parts, each float (N,) per mask."""

    total: torch.Tensor
    focal: torch.Tensor
    dice: torch.Tensor
    iou_mse: torch.Tensor
    true_iou: torch.Tensor


def sam_loss(
    logits: torch.Tensor,
    iou_pred: torch.Tensor,
    target: torch.Tensor,
    *,
    focal_weight: float = FOCAL_WEIGHT,
    dice_weight: float = DICE_WEIGHT,
    iou_weight: float = IOU_WEIGHT,
) -> LossTerms:
    """``focal_weight x focal + dice_weight x dice + iou_weight x (iou_pred - IoU)^2`` per mask.

    Args:
        logits: float (N, h, w) mask logits.
        iou_pred: float (N,) the IoU head's prediction for each mask.
        target: float (N, h, w) in [0, 1], on the logits' grid.
    """
    if logits.shape != target.shape or logits.ndim != 3 or iou_pred.shape != logits.shape[:1]:
        raise ValueError(
            f"sam_loss: expected logits and target (N, h, w) and iou_pred (N,), got {tuple(logits.shape)}, "
            f"{tuple(target.shape)} and {tuple(iou_pred.shape)}"
        )
    focal = focal_loss(logits, target, alpha=FOCAL_ALPHA)
    dice = dice_loss(logits, target)
    true_iou = mask_iou(logits, target)
    iou_mse = (iou_pred.float() - true_iou) ** 2
    total = focal_weight * focal + dice_weight * dice + iou_weight * iou_mse
    return LossTerms(total=total, focal=focal, dice=dice, iou_mse=iou_mse, true_iou=true_iou)
