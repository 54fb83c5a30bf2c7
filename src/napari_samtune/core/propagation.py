"""Following one object through a stack: segment it on a slice, then on the next slices from the previous mask.

Each new slice is prompted with the previous slice's mask as a user would prompt it: its bounding box, a little
enlarged so a growing object still fits, and one positive click at its interior point. The walk goes up the stack,
then down, and stops in each direction when the object vanishes or its mask changes too much from one slice to the
next (where SAM has usually jumped to a neighbouring object).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass

import numpy as np

from .mask_geometry import interior_point
from .metrics import iou
from .predictor import ObjectPrompt
from .segmenter import Segmenter


@dataclass(frozen=True)
class PropagationSettings:
    """min_area: a mask of fewer pixels means the object has ended; min_iou: a mask overlapping the previous slice's
    by less (intersection over union) has changed too much; margin: the box prompt is the previous mask's bounding
    box grown by this fraction of its size on each side (at least 2 pixels)."""

    min_area: int = 8
    min_iou: float = 0.3
    margin: float = 0.1

    def __post_init__(self) -> None:
        if self.min_area < 1 or not 0 <= self.min_iou <= 1 or self.margin < 0:
            raise ValueError(
                f"need min_area ≥ 1, 0 ≤ min_iou ≤ 1 and margin ≥ 0, got {self.min_area}, {self.min_iou}, {self.margin}"
            )


def prompt_from_mask(mask: np.ndarray, margin: float = 0.1) -> ObjectPrompt:
    """``(H, W)`` bool mask → the prompt for the same object on a neighbouring slice: its bounding box (row0, col0,
    row1, col1) grown by ``margin`` of its size (≥ 2 px, clipped to the plane) and a positive click at its interior
    point."""
    rows, cols = np.nonzero(mask)
    r0, r1, c0, c1 = rows.min(), rows.max(), cols.min(), cols.max()
    grow_r, grow_c = max(2.0, margin * (r1 - r0 + 1)), max(2.0, margin * (c1 - c0 + 1))
    h, w = mask.shape
    box = np.array([max(0, r0 - grow_r), max(0, c0 - grow_c), min(h - 1, r1 + grow_r), min(w - 1, c1 + grow_c)])
    x, y = interior_point(mask)
    return ObjectPrompt(points=np.array([[y, x]]), labels=np.ones(1), box=box)


def propagate(
    segmenter: Segmenter,
    mask: np.ndarray,
    plane: int,
    settings: PropagationSettings | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> Generator[dict, None, dict[int, np.ndarray] | None]:
    """Follow the object ``mask`` (``(H, W)`` bool on ``plane``) through the segmenter's stack.

    Planes are encoded as they are reached (from the cache when they were before). Yields ``{"done", "total",
    "plane"}`` per plane settled (segmented, or skipped because the walk stopped before it). Returns ``{plane: (H, W)
    bool mask}`` for every plane the object was found on, ``plane`` itself included, or None when ``should_stop``
    ended it.
    """
    s = settings or PropagationSettings()
    n = segmenter.n_planes
    if not 0 <= plane < n:
        raise ValueError(f"plane {plane} is outside the stack (planes 0 to {n - 1})")
    mask = np.asarray(mask, bool)
    if mask.shape != segmenter.plane_shape:
        raise ValueError(f"the mask has shape {mask.shape} but the planes have {segmenter.plane_shape}")
    if mask.sum() < s.min_area:
        raise ValueError(f"the object to propagate has {int(mask.sum())} pixels, fewer than min_area={s.min_area}")
    found = {plane: mask}
    done, total = 0, n - 1
    for step, last in ((1, n - 1), (-1, 0)):
        previous, current = mask, plane + step
        while previous is not None and current * step <= last * step:
            if should_stop():
                return None
            for _ in segmenter.encode([current], should_stop):
                pass
            if should_stop():
                return None
            new = segmenter.segment([prompt_from_mask(previous, s.margin)], current).masks[0]
            if new.sum() < s.min_area or iou(new, previous) < s.min_iou:
                done += abs(last - current) + 1  # the rest of this direction is settled: not this object
                previous = None
            else:
                found[current], previous = new, new
                done += 1
            yield {"done": done, "total": total, "plane": current}
            current += step
    return found
