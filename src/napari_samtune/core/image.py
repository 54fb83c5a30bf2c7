"""Turning user images (any dtype, grey/RGB/multichannel, 2D or 3D) into what a SAM encoder takes.

A ``Volume`` is a stack of 2D planes, each prepared on demand as ``(H, W, 3)`` float32 in [0, 255]; a 2D image is a
stack of one. Intensities are normalised once for the whole volume (robust percentiles) so that every plane and every
tile of a large plane sees the same mapping.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from .errors import SamtuneError

Channel = int | str  # an index, or "mean" to average the channels, or "rgb" for the first three


class ImageError(SamtuneError, ValueError):
    """An image that cannot be segmented as given; the message says what to pass instead."""


@dataclass(frozen=True)
class Normalization:
    """Robust intensity mapping: ``low`` percentile → 0, ``high`` percentile → 255, clipped."""

    low_percentile: float = 1.0
    high_percentile: float = 99.8

    def to_dict(self) -> dict:
        return {"low_percentile": self.low_percentile, "high_percentile": self.high_percentile}


@dataclass(frozen=True)
class Volume:
    """A normalised image stack. ``planes`` is ``(Z, H, W)`` or ``(Z, H, W, 3)`` in the user's dtype (a view, no copy).

    ``low``/``high`` are the intensities mapped to 0 and 255.
    """

    planes: np.ndarray
    low: float
    high: float
    is_stack: bool

    @property
    def n_planes(self) -> int:
        return self.planes.shape[0]

    @property
    def plane_shape(self) -> tuple[int, int]:
        return tuple(self.planes.shape[1:3])

    def plane(self, index: int) -> np.ndarray:
        """Plane ``index`` as ``(H, W, 3)`` float32 in [0, 255]."""
        if not 0 <= index < self.n_planes:
            raise IndexError(f"plane {index} is outside the stack of {self.n_planes} planes")
        # float64: values beyond float32's range (e.g. 1e300) would become inf, then NaN embeddings.
        data = np.asarray(self.planes[index], dtype=np.float64)
        low, span = self.low, self.high - self.low
        if not np.isfinite(span):  # e.g. -1e308..1e308: halve everything so that the differences stay finite
            data, low, span = data / 2, low / 2, self.high / 2 - low / 2
        data = np.clip((data - low) * (255.0 / max(span, 1e-12)), 0.0, 255.0).astype(np.float32)
        if data.ndim == 2:
            data = np.repeat(data[..., None], 3, axis=-1)
        return data

    def content_hash(self) -> str:
        """A hash of the raw pixels, shape and dtype (what the embedding cache is keyed by)."""
        h = hashlib.blake2b(digest_size=16)
        h.update(str((self.planes.shape, self.planes.dtype.str)).encode())
        for i in range(self.n_planes):
            h.update(np.ascontiguousarray(self.planes[i]).tobytes())
        return h.hexdigest()


def as_volume(
    image: np.ndarray,
    *,
    rgb: bool | None = None,
    channel_axis: int | None = None,
    channel: Channel = "mean",
    normalization: Normalization | None = None,
) -> Volume:
    """Interpret ``image`` and return a normalised ``Volume``.

    image: ``(H, W)`` grey, ``(H, W, 3|4)`` RGB/RGBA, ``(Z, H, W)`` stack, ``(Z, H, W, 3|4)`` RGB stack, or any of
    those with an extra channel axis named by ``channel_axis`` (then ``channel`` picks one channel, "mean" averages
    them, "rgb" uses the first three as colour). ``rgb=None`` guesses RGB when the last axis has 3 or 4 entries.
    Any real numeric dtype; NaN or infinite values are refused.
    """
    data = np.asarray(image)
    if data.dtype == bool:
        data = data.astype(np.uint8)
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise ImageError(f"image dtype {data.dtype} is not a real number type; pass an integer or float array")
    if channel_axis is not None:
        data = _combine_channels(data, channel_axis, channel)
        rgb = data.ndim in (3, 4) and data.shape[-1] == 3 and channel == "rgb"
    if rgb is None:
        rgb = data.ndim in (3, 4) and data.shape[-1] in (3, 4) and data.shape[-2] > 4
    if rgb:
        if data.shape[-1] not in (3, 4):
            raise ImageError(f"an RGB image needs 3 or 4 values in its last axis; got shape {data.shape}")
        data = data[..., :3]
        spatial = data.ndim - 1
    else:
        spatial = data.ndim
    if spatial not in (2, 3):
        raise ImageError(
            f"image of shape {image.shape} has {spatial} spatial axes; expected a 2D image (H, W) or a 3D stack "
            "(Z, H, W), optionally with RGB in the last axis or a channel axis given as channel_axis"
        )
    if not rgb and spatial == 3 and data.shape[-1] < 8 <= min(data.shape[:2]):
        raise ImageError(
            f"image of shape {image.shape} looks like a {data.shape[-1]}-channel image (channels in the last axis): "
            "give channel_axis=-1 (command line: --channel-axis -1), and channel=INDEX to pick one or 'mean'"
        )
    if min(data.shape[spatial - 2 : spatial]) < 8:
        raise ImageError(f"image of shape {image.shape} is too small to segment (each side needs ≥ 8 pixels)")
    is_stack = spatial == 3
    planes = data if is_stack else data[None]
    low, high = intensity_range(planes, normalization or Normalization())
    return Volume(planes=planes, low=low, high=high, is_stack=is_stack)


def _combine_channels(data: np.ndarray, channel_axis: int, channel: Channel) -> np.ndarray:
    axis = channel_axis % data.ndim
    n = data.shape[axis]
    moved = np.moveaxis(data, axis, -1)
    if isinstance(channel, (int, np.integer)):
        if not 0 <= channel < n:
            raise ImageError(f"channel {channel} does not exist: the channel axis {axis} has {n} channels")
        return moved[..., channel]
    if channel == "mean":
        return moved.mean(axis=-1, dtype=np.float32)
    if channel == "rgb":
        if n < 3:
            raise ImageError(f"channel='rgb' needs ≥ 3 channels but axis {axis} has {n}")
        return moved[..., :3]
    raise ImageError(f"channel must be a channel index, 'mean' or 'rgb'; got {channel!r}")


def intensity_range(planes: np.ndarray, norm: Normalization) -> tuple[float, float]:
    """The intensities ``norm`` maps to 0 and 255 for ``(Z, H, W[, C])`` planes (block-wise work passes a subsample
    of a plane too large to read whole)."""
    # Percentiles of a strided subsample: exact enough for a display-like mapping, fast on large stacks.
    step = max(1, int(np.ceil((planes.size / 4_000_000) ** 0.5)))
    sample = np.asarray(planes[:, ::step, ::step], dtype=np.float64)
    if np.issubdtype(planes.dtype, np.floating) and not np.isfinite(planes).all():
        raise ImageError("image contains NaN or infinite values; replace them (e.g. np.nan_to_num) before segmenting")
    low, high = np.percentile(sample, [norm.low_percentile, norm.high_percentile])
    if high <= low:
        low, high = float(sample.min()), float(sample.max())
    if high <= low:
        high = low + 1.0  # a constant image: map it to black rather than dividing by zero
    return float(low), float(high)
