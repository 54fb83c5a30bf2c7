"""Plain geometry of a binary mask: its deepest interior point and its tight box.

Used to place a click or a box on an object (following objects through a stack, simulated users in training, the
demo). Coordinates are (x, y) pixel positions of the mask array.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def deepest_point(mask: np.ndarray) -> tuple[float, int, int]:
    """(distance, row, column) of the first maximum (row-major) of the distance to the nearest pixel outside
    ``mask`` (the image's outside counts as outside); (0, 0, 0) for an empty mask. Computed on the mask's bounding
    box padded by one pixel, which gives exactly the whole image's transform inside it, at a fraction of the cost."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if rows.size == 0:
        return 0.0, 0, 0
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    dist = ndimage.distance_transform_edt(np.pad(mask[y0:y1, x0:x1], 1))[1:-1, 1:-1]
    y, x = np.unravel_index(np.argmax(dist), dist.shape)
    return float(dist[y, x]), int(y + y0), int(x + x0)


def interior_point(mask: np.ndarray) -> tuple[float, float]:
    """The pixel farthest from the mask's border (maximum of the distance transform), as (x, y)."""
    _, y, x = deepest_point(mask)
    return float(x), float(y)


def mask_box(mask: np.ndarray) -> np.ndarray:
    """Tight box (x0, y0, x1, y1) of a mask, with x1/y1 the last pixel's coordinate."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float32)
