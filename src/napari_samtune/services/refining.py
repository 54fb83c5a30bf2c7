"""Start from an existing Labels layer: each of its objects becomes a mask prompt, so SAM refines a segmentation
made elsewhere (a threshold, another tool, a rough hand drawing) instead of starting from clicks."""

from __future__ import annotations

import numpy as np
from napari.layers import Image, Labels, Layer

from ..core.predictor import ObjectPrompt
from .layers import LayerError, spatial_shape
from .session import PREVIEW


def labels_to_refine(layer: Layer | None, image: Image) -> Labels:
    """The Labels layer whose objects to refine: ``layer`` (the one selected in the layer list), checked against
    ``image``. Raises ``LayerError`` saying what to select when it is not a fitting Labels layer."""
    if not isinstance(layer, Labels) or layer.name == PREVIEW:
        chosen = "nothing" if layer is None else f"{layer.name!r}"
        raise LayerError(
            f"select the Labels layer whose objects to refine in the layer list (selected: {chosen}), then click "
            "'Refine labels' again"
        )
    shape = layer.data[0].shape if layer.multiscale else layer.data.shape
    if shape != spatial_shape(image):
        raise LayerError(
            f"labels layer {layer.name!r} has shape {shape} but image {image.name!r} has {spatial_shape(image)}: "
            "choose the labels made for this image"
        )
    return layer


def mask_prompts(labels: Labels, plane: int | None) -> list[ObjectPrompt]:
    """One ``ObjectPrompt(mask=...)`` per object (label id > 0) of ``labels`` on ``plane`` (None: a 2D layer), in
    increasing id order; the mask is the object's float32 0/1 image at plane size."""
    data = labels.data[0] if labels.multiscale else labels.data
    data = np.asarray(data if plane is None else data[plane])
    return [ObjectPrompt(mask=(data == i).astype(np.float32)) for i in np.unique(data) if i > 0]
