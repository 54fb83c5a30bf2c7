"""One object for the common job: a model, an image with its cached embeddings, and prompting on it.

The napari widgets, the command line and scripts all go through ``Segmenter``, so they behave the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from .embeddings import EmbeddingStore, PlaneEmbedding, Tiling
from .image import Channel, as_volume
from .models.registry import BUNDLED_NAME, SamModel, load_model
from .predictor import ObjectPrompt, Prediction, Predictor, PromptError


class Segmenter:
    """Prompt-based segmentation of one image (2D, RGB or a 3D stack) with one model.

    model: a loaded ``SamModel`` or a name for ``load_model``. cache_root: embedding cache folder (None: the user
    cache folder, False: memory only).
    """

    def __init__(
        self,
        model: SamModel | str = BUNDLED_NAME,
        *,
        cache_root: str | Path | bool | None = None,
        tiling: Tiling | None = None,
    ) -> None:
        self.model = load_model(model) if isinstance(model, str) else model
        self.predictor = Predictor(self.model)
        self.cache_root = cache_root
        self.tiling = tiling or Tiling()
        self.store: EmbeddingStore | None = None
        self._overview: EmbeddingStore | None = None  # the whole plane resized to the model input, for large objects

    def set_image(
        self,
        image: np.ndarray,
        *,
        rgb: bool | None = None,
        channel_axis: int | None = None,
        channel: Channel = "mean",
    ) -> None:
        """Use ``image`` from now on (see ``as_volume`` for the accepted layouts). Encoding happens lazily."""
        volume = as_volume(image, rgb=rgb, channel_axis=channel_axis, channel=channel)
        self.store = EmbeddingStore(self.model, volume, tiling=self.tiling, cache_root=self.cache_root)
        self._overview = None

    @property
    def _store(self) -> EmbeddingStore:
        if self.store is None:
            raise PromptError("no image set: call set_image(image) first")
        return self.store

    @property
    def n_planes(self) -> int:
        return self._store.volume.n_planes

    @property
    def plane_shape(self) -> tuple[int, int]:
        return self._store.volume.plane_shape

    def _check_plane(self, plane: int) -> int:
        n = self.n_planes
        if isinstance(plane, bool) or not isinstance(plane, (int, np.integer)) or not 0 <= plane < n:
            kind = "a 2D image has only plane 0" if n == 1 else f"the stack has planes 0 to {n - 1}"
            raise PromptError(f"plane {plane!r} does not exist: {kind}")
        return int(plane)

    def is_encoded(self, plane: int = 0) -> bool:
        return self._store.is_cached(self._check_plane(plane))

    def encode(
        self, planes: list[int] | None = None, should_stop: Callable[[], bool] = lambda: False
    ) -> Iterator[dict]:
        """Encode (or read from the cache) the given planes; yields a progress dict per plane."""
        planes = None if planes is None else [self._check_plane(p) for p in planes]
        yield from self._store.encode_all(planes, should_stop)

    def segment(self, prompts: list[ObjectPrompt], plane: int = 0, **kwargs) -> Prediction:
        """One mask per prompt on ``plane`` (see ``Predictor.predict`` for the options). On a tiled plane, objects
        larger than a tile are decoded on the whole plane resized to the model input (encoded when first needed)."""
        plane = self._check_plane(plane)
        return self.predictor.predict(
            self._store.plane(plane), prompts, overview=lambda: self._overview_plane(plane), **kwargs
        )

    def _overview_plane(self, plane: int) -> PlaneEmbedding:
        if self._overview is None:
            store = self._store
            self._overview = EmbeddingStore(
                self.model, store.volume, tiling=Tiling(mode="never"), cache_root=self.cache_root
            )
        return self._overview.plane(plane)

    def segment_points(self, points: np.ndarray, labels: np.ndarray | None = None, plane: int = 0) -> Prediction:
        """One object per positive point; every negative point is shared by all objects.

        points: ``(K, 2)`` (row, col); labels: ``(K,)`` 1 positive / 0 negative (default: all positive).
        """
        points = np.asarray(points, dtype=float)
        if points.ndim == 1 and points.shape == (2,):
            points = points[None]
        if points.ndim != 2 or points.shape[1] != 2:
            hint = (
                ": for a point on a stack, pass its (row, col) and plane=INDEX"
                if points.ndim == 2 and points.shape[1] == 3
                else ""
            )
            raise PromptError(f"points must be an array (K, 2) of (row, col); got shape {points.shape}{hint}")
        labels = np.ones(len(points)) if labels is None else np.asarray(labels).ravel()
        if labels.shape != (len(points),) or not np.isin(labels, (0, 1)).all():
            raise PromptError(
                f"give one label per point, 1 (positive) or 0 (negative); got {labels.tolist()} for "
                f"{len(points)} points"
            )
        positive, negative = points[labels == 1], points[labels == 0]
        prompts = [
            ObjectPrompt(
                points=np.concatenate([p[None], negative]),
                labels=np.concatenate([[1], np.zeros(len(negative))]),
            )
            for p in positive
        ]
        return self.segment(prompts, plane)

    def segment_boxes(self, boxes: np.ndarray, plane: int = 0) -> Prediction:
        """One object per box: ``(N, 4)`` as (row0, col0, row1, col1), or ``(N, 4, 2)`` corners (row, col) as napari's
        Shapes layer holds rectangles (their bounding box is used)."""
        boxes = np.asarray(boxes, dtype=float)
        if boxes.ndim == 1 or (boxes.ndim == 2 and boxes.shape[1] == 2):
            boxes = boxes[None]
        if boxes.ndim == 3 and boxes.shape[1:] == (4, 2):
            boxes = np.concatenate([boxes.min(axis=1), boxes.max(axis=1)], axis=1)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            hint = ": drop the corners' plane coordinate and pass plane=INDEX" if boxes.shape[-1] == 3 else ""
            raise PromptError(
                f"boxes must be (N, 4) as (row0, col0, row1, col1) or (N, 4, 2) corners (row, col); got shape "
                f"{boxes.shape}{hint}"
            )
        return self.segment([ObjectPrompt(box=b) for b in boxes], plane)


def masks_to_labels(masks: np.ndarray, labels: np.ndarray | None = None, start: int | None = None) -> np.ndarray:
    """Paint ``(N, H, W)`` masks into a label image as new ids (after the largest existing id), later on top.

    Returns a new array; ``labels`` is not modified.
    """
    out = np.zeros(masks.shape[1:], np.int32) if labels is None else labels.copy()
    next_id = int(out.max()) + 1 if start is None else start
    for i, mask in enumerate(masks):
        out[mask] = next_id + i
    return out
