"""Uncertainty maps from a ready segmenter into an Image layer over the image, and moving the view to a region.

The map of a stack is computed for one plane at a time; the layer covers the whole stack and keeps what was computed
for the other planes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from napari.components import ViewerModel
from napari.layers import Image

from ..core.automatic import segment_automatic
from ..core.predictor import ObjectPrompt
from ..core.review import prompt_free_uncertainty
from ..core.segmenter import Segmenter
from ..core.uncertainty import SOURCES, prompted_uncertainty
from .layers import LayerError, spatial_shape

UNCERTAINTY = "uncertainty"
PROMPT_FREE = "prompt-free segmentation"
# "refinement" needs a refinement head trained on the user's labels, which nothing here has at hand.
PROMPT_SOURCES = tuple(source for source in SOURCES if source != "refinement")


def uncertainty_map(segmenter: Segmenter, prompts: list[ObjectPrompt], plane: int | None, source: str) -> np.ndarray:
    """``(H, W)`` float32 in [0, 1] of ``plane`` (None: a 2D image), whose embeddings must be ready.

    source: one of ``PROMPT_SOURCES`` (the pixel-wise maximum over the prompted objects) or ``PROMPT_FREE`` (the
    class entropy of the model's prompt-free segmentation; the model needs learned prompts).
    """
    embedding_plane = plane or 0
    if source == PROMPT_FREE:
        result = segment_automatic(segmenter.model, segmenter.store.plane(embedding_plane))
        return prompt_free_uncertainty(result.probabilities)
    if not prompts:
        raise LayerError("no object prompted on this slice: click points or draw a box in 'Segment with prompts'")
    maps = [
        prompted_uncertainty(segmenter.predictor, segmenter.store, prompt, plane=embedding_plane, source=source)
        for prompt in prompts
    ]
    return np.max([m.uncertainty for m in maps], axis=0)


def show_uncertainty(viewer: ViewerModel, image: Image, values: np.ndarray, plane: int | None) -> Image:
    """Write ``(H, W)`` ``values`` into the 'uncertainty' layer of ``image`` (on ``plane`` of a stack), made when
    missing or when it belongs to an image of another shape; returns the layer."""
    shape = spatial_shape(image)
    layer = viewer.layers[UNCERTAINTY] if UNCERTAINTY in viewer.layers else None
    if layer is not None and (not isinstance(layer, Image) or layer.data.shape != shape):
        viewer.layers.remove(layer)
        layer = None
    data = np.zeros(shape, np.float32) if layer is None else np.array(layer.data, np.float32)
    (data if plane is None else data[plane])[...] = values
    if layer is None:
        layer = viewer.add_image(
            data,
            name=UNCERTAINTY,
            colormap="inferno",
            blending="additive",
            opacity=0.6,
            contrast_limits=(0.0, 1.0),
            scale=image.scale,
            translate=image.translate,
        )
    else:
        layer.data = data
    return layer


def go_to(viewer: ViewerModel, image: Image, position: Sequence[float]) -> None:
    """Centre the view on ``position`` (``image`` data coordinates: (row, col) or (plane, row, col)) and show its
    plane."""
    world = np.asarray(image.data_to_world(position), float)
    if len(position) == 3:
        viewer.dims.set_point(viewer.dims.ndim - 3, world[0])
    viewer.camera.center = tuple(world[-2:])
