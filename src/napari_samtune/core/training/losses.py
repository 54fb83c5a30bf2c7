"""Segmentation losses on logits (SAM's recipe: focal + Dice, plus MSE of the IoU head), with optional pixel weights.

Pixel weights (e.g. 1 − uncertainty for pseudo-labels) multiply each pixel's contribution; ``None`` means 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> torch.Tensor:
    """Sigmoid focal loss averaged over pixels, per mask: logits/target ``(N, ..., H, W)`` → ``(N, ...)``."""
    prob = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    if weight is not None:
        return (loss * weight).sum((-2, -1)) / weight.sum((-2, -1)).clamp_min(1e-6)
    return loss.mean((-2, -1))


def dice_loss(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, smooth: float = 1.0
) -> torch.Tensor:
    """Soft Dice loss per mask: ``(N, ..., H, W)`` → ``(N, ...)``."""
    prob = torch.sigmoid(logits)
    if weight is not None:
        prob, target = prob * weight, target * weight
    inter = (prob * target).sum((-2, -1))
    total = prob.sum((-2, -1)) + target.sum((-2, -1))
    return 1 - (2 * inter + smooth) / (total + smooth)


def soft_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of the thresholded prediction with a binary target, per mask (no gradient): the IoU head's target."""
    with torch.no_grad():
        pred = logits > 0
        tgt = target > 0.5
        inter = (pred & tgt).sum((-2, -1)).float()
        union = (pred | tgt).sum((-2, -1)).float()
        return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def mask_losses(
    logits: torch.Tensor,
    iou_pred: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    focal_weight: float = 20.0,
    dice_weight: float = 1.0,
    iou_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """SAM's loss for ``(N, M, H, W)`` logits (M candidate masks) against ``(N, 1, H, W)`` targets.

    Logits are upsampled to the target's size. With M > 1 only the candidate of lowest mask loss is trained
    (SAM's multimask rule); the IoU head is trained on every candidate. Returns per-term means and ``total``.
    """
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    target = target.expand_as(logits)
    w = weight.expand_as(logits) if weight is not None else None
    focal = focal_loss(logits, target, w)
    dice = dice_loss(logits, target, w)
    per_candidate = focal_weight * focal + dice_weight * dice
    best = per_candidate.argmin(dim=1, keepdim=True)
    take = lambda t: t.gather(1, best).squeeze(1)  # noqa: E731
    iou_mse = F.mse_loss(iou_pred, soft_iou(logits, target), reduction="none").mean(1)
    focal_b, dice_b = take(focal), take(dice)
    total = focal_weight * focal_b + dice_weight * dice_b + iou_weight * iou_mse
    return {
        "total": total.mean(),
        "focal": focal_b.mean().detach(),
        "dice": dice_b.mean().detach(),
        "iou_mse": iou_mse.mean().detach(),
        "best": best.squeeze(1),
    }
