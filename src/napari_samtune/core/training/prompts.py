"""Simulated prompts from ground-truth masks: interior clicks, jittered boxes and corrective clicks.

These stand in for a user during training and evaluation. Coordinates are (x, y) pixel positions of the mask array.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..mask_geometry import deepest_point, interior_point, mask_box

# interior_point and mask_box are part of the simulated user's vocabulary (and the pretraining recipe's imports).
__all__ = ["corrective_click", "interior_point", "jittered_box", "mask_box", "random_click"]


def random_click(mask: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """A point inside ``mask`` drawn with probability ∝ (distance to the border)²: users click near the middle."""
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = np.pad(mask[y0:y1, x0:x1], 1)
    dist = ndimage.distance_transform_edt(crop)[1:-1, 1:-1].ravel() ** 2
    idx = rng.choice(dist.size, p=dist / dist.sum())
    y, x = np.unravel_index(idx, (y1 - y0, x1 - x0))
    return float(x + x0), float(y + y0)


def jittered_box(mask: np.ndarray, rng: np.random.Generator, jitter: float = 0.08) -> np.ndarray:
    """The mask's box with each side moved by up to ``jitter`` × the box size (clamped to the image)."""
    box = mask_box(mask)
    w, h = box[2] - box[0] + 1, box[3] - box[1] + 1
    noise = rng.uniform(-jitter, jitter, 4) * np.array([w, h, w, h])
    box = box + noise
    height, width = mask.shape
    return np.clip(box, 0, [width - 1, height - 1, width - 1, height - 1]).astype(np.float32)


def corrective_click(pred: np.ndarray, target: np.ndarray) -> tuple[tuple[float, float], int] | None:
    """Where a user would click next: the interior point of the larger error region.

    Missed object pixels give a positive click (label 1), extra pixels a negative one (label 0); ``None`` when the
    prediction is already exact.
    """
    missed = deepest_point(target & ~pred)
    extra = deepest_point(pred & ~target)
    if missed[0] == 0 and extra[0] == 0:
        return None
    positive = missed[0] >= extra[0]
    _, y, x = missed if positive else extra
    return (float(x), float(y)), int(positive)
