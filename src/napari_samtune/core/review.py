"""Where a user should look next: the uncertainty of a prompt-free segmentation and the most uncertain regions of an
uncertainty map that have not been visited yet.

Plain numpy/scipy: a region is a local maximum of the uncertainty smoothed over a few pixels, so one blurry boundary
counts once instead of as hundreds of single bright pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage


def prompt_free_uncertainty(probabilities: np.ndarray) -> np.ndarray:
    """``(K + 1, H, W)`` class probabilities (background first, summing to 1 per pixel) → ``(H, W)`` float32 in
    [0, 1]: the entropy normalised by its maximum log(K + 1) (0: one class is certain, 1: all classes equally
    likely)."""
    p = np.clip(np.asarray(probabilities, np.float64), 1e-12, 1.0)
    if len(p) < 2:
        raise ValueError(f"need probabilities of at least 2 classes (background first), got shape {p.shape}")
    entropy = -(p * np.log(p)).sum(axis=0) / np.log(len(p))
    return np.clip(entropy, 0.0, 1.0).astype(np.float32)


def uncertain_regions(
    uncertainty: np.ndarray, sigma: float = 3.0, radius: int = 8, threshold: float = 0.02
) -> tuple[np.ndarray, np.ndarray]:
    """Centres of uncertain regions, most uncertain first.

    uncertainty: ``(H, W)`` or ``(Z, H, W)`` in [0, 1] (each plane is smoothed on its own); sigma: Gaussian smoothing
    in pixels; radius: a centre is the largest smoothed value within this many pixels of its plane; threshold:
    smoothed values below it are not regions. Returns ``(N, ndim)`` int coordinates and their ``(N,)`` smoothed
    values, in descending order.
    """
    values = np.asarray(uncertainty, np.float32)
    if values.ndim not in (2, 3):
        raise ValueError(f"uncertainty must be (H, W) or (Z, H, W), got shape {values.shape}")
    spatial = (0.0,) * (values.ndim - 2) + (sigma, sigma)
    smoothed = ndimage.gaussian_filter(values, spatial)
    size = (1,) * (values.ndim - 2) + (2 * radius + 1,) * 2
    peaks = (smoothed == ndimage.maximum_filter(smoothed, size=size, mode="nearest")) & (smoothed >= threshold)
    coords = np.argwhere(peaks)
    scores = smoothed[tuple(coords.T)]
    order = np.argsort(-scores, kind="stable")
    return coords[order], scores[order]


def next_uncertain_region(
    uncertainty: np.ndarray,
    visited: Sequence[Sequence[float]] = (),
    *,
    sigma: float = 3.0,
    radius: int = 8,
    threshold: float = 0.02,
) -> tuple[int, ...] | None:
    """The most uncertain region (see ``uncertain_regions``) farther than ``2 * radius`` pixels from every
    ``visited`` position of the same plane; None when there is none left.

    visited: positions in the map's coordinates, ``(row, col)`` or ``(plane, row, col)``.
    """
    coords, _ = uncertain_regions(uncertainty, sigma, radius, threshold)
    seen = np.asarray(visited, float).reshape(-1, np.ndim(uncertainty))
    for centre in coords:
        if len(seen):
            same_plane = np.all(seen[:, :-2] == centre[:-2], axis=1)
            near = np.hypot(*(seen[:, -2:] - centre[-2:]).T) <= 2 * radius
            if (same_plane & near).any():
                continue
        return tuple(int(c) for c in centre)
    return None
