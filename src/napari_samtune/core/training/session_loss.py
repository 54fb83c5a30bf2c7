"""The loss of a simulated interactive session (SAM's training recipe), shared by pretraining and fine-tuning.

Round 0 decodes each object's first prompt (a click: the best of the multimask outputs is trained; a box: the
single output). Each corrective round adds a click at the interior of the larger error region (missed → positive,
extra → negative) and feeds the previous low-resolution logits back as a mask prompt.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..decoder import decode, pack_prompts
from .losses import mask_losses
from .prompts import corrective_click, interior_point


def session_loss(
    sam,
    embeddings: torch.Tensor,
    image_pe: torch.Tensor,
    masks: np.ndarray,
    points: list[np.ndarray | None],
    point_labels: list[np.ndarray | None],
    boxes: list[np.ndarray | None],
    is_click: np.ndarray,
    corrective_rounds: int,
    loss_size: int,
    weight: torch.Tensor | None = None,
    iou_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss over ``1 + corrective_rounds`` rounds for N objects.

    embeddings: ``(N, C, h, w)`` one per object; masks ``(N, S, S)`` bool targets in the encoder-input frame;
    prompts in that frame as (x, y) (see ``pack_prompts``); weight: optional ``(N, 1, S, S)`` pixel weights (0 on
    padding). Losses are computed at ``loss_size``² (targets averaged by area); ``iou_weight`` weights the IoU head's
    MSE. Returns the total and its parts.
    """
    target = F.adaptive_avg_pool2d(torch.from_numpy(masks).float()[:, None], loss_size)
    w = F.adaptive_avg_pool2d(weight, loss_size) if weight is not None else None
    coords, labels = pack_prompts(points, point_labels, boxes)
    logits, iou = decode(sam, embeddings, image_pe, coords, labels)
    click = torch.from_numpy(is_click)
    total, parts = 0.0, {}
    chosen = torch.zeros(len(target), *logits.shape[-2:])
    for group, sl in ((click, slice(1, None)), (~click, slice(0, 1))):
        if group.any():
            out = mask_losses(
                logits[group][:, sl],
                iou[group][:, sl],
                target[group],
                w[group] if w is not None else None,
                iou_weight=iou_weight,
            )
            share = float(group.float().mean())
            total = total + out["total"] * share
            best = out["best"] + sl.start
            index = best[:, None, None, None].expand(-1, 1, *logits.shape[-2:])
            chosen[group] = logits[group].gather(1, index)[:, 0].detach()
            for key in ("focal", "dice", "iou_mse"):
                parts[key] = parts.get(key, 0.0) + float(out[key]) * share
    points, point_labels = list(points), list(point_labels)
    for _ in range(corrective_rounds):
        size = masks.shape[-2:]
        pred = F.interpolate(chosen[:, None], size=size, mode="bilinear", align_corners=False)[:, 0] > 0
        for i, (p, m) in enumerate(zip(pred.numpy(), masks)):
            fix = corrective_click(p, m)
            new_point, new_label = fix if fix is not None else (interior_point(m), 1)
            old = points[i] if points[i] is not None else np.zeros((0, 2), np.float32)
            old_l = point_labels[i] if point_labels[i] is not None else np.zeros(0, np.float32)
            points[i] = np.concatenate([old, np.array([new_point], np.float32)])
            point_labels[i] = np.concatenate([old_l, np.array([new_label], np.float32)])
        coords, labels = pack_prompts(points, point_labels, boxes)
        logits, iou = decode(sam, embeddings, image_pe, coords, labels, mask_inputs=chosen[:, None])
        out = mask_losses(logits[:, :1], iou[:, :1], target, w, iou_weight=iou_weight)
        total = total + out["total"]
        chosen = logits[:, 0].detach()
        parts["corrective_dice"] = float(out["dice"])
    return total, parts
