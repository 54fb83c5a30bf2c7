"""Prompt layers in, core prompts out; core masks in, Labels edits out.

Coordinates are the image layer's data coordinates: (row, col) for a 2D image, (plane, row, col) for a stack. The
prompt, preview and segmentation layers are made with the image's scale and translate, so they share that frame. A
multiscale image is read at its full resolution (``image_data``), the level its data coordinates refer to.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from napari.layers import Image, Labels, Layer, Points, Shapes

from ..core.errors import SamtuneError
from ..core.predictor import ObjectPrompt
from ..core.segmenter import Segmenter, masks_to_labels

POSITIVE, NEGATIVE = "positive", "negative"
POLARITY_COLORS = {POSITIVE: "lime", NEGATIVE: "red"}


class LayerError(SamtuneError, ValueError):
    """Layers that do not fit together or cannot be used; the message names them and says what to do."""


def image_data(image: Image) -> Any:
    """The array SAM tune segments (numpy, dask, zarr…): the layer's data, or its full-resolution level (``data[0]``)
    when it is multiscale.

    napari's data coordinates of a multiscale layer are those of level 0, so prompts need no rescaling.
    """
    return image.data[0] if image.multiscale else image.data


def spatial_shape(image: Image) -> tuple[int, ...]:
    """The ``(H, W)`` or ``(Z, H, W)`` shape of ``image_data(image)``, without the RGB axis."""
    data = image_data(image)
    shape = tuple(data.shape[:-1] if image.rgb else data.shape)
    if len(shape) not in (2, 3):
        raise LayerError(
            f"image {image.name!r} has shape {shape}; SAM tune segments 2D images (H, W) and stacks (Z, H, W): "
            "split other axes (time, channels) into separate layers"
        )
    return shape


def current_plane(image: Image, world_point: Sequence[float]) -> int | None:
    """The stack plane of ``image`` shown at ``world_point`` (the viewer's ``dims.point``); None for a 2D image."""
    shape = spatial_shape(image)
    if len(shape) == 2:
        return None
    plane = round(float(image.world_to_data(world_point)[0]))
    if not 0 <= plane < shape[0]:
        raise LayerError(
            f"the current slice is outside image {image.name!r} (planes 0 to {shape[0] - 1}); move the slider onto it"
        )
    return plane


def embedding_state(image: Image | None, segmenter: Segmenter | None, world_point: Sequence[float]) -> str:
    """What the prompt widget's state line says: whether the current slice's embeddings are ready."""
    if image is None:
        return "no image"
    if segmenter is None:
        return "not computed yet"
    try:
        plane = current_plane(image, world_point)
    except LayerError:
        return "slice outside the image"
    where = "" if plane is None else f"slice {plane}: "
    return where + ("cached" if segmenter.is_encoded(plane or 0) else "not computed yet")


def prompt_points(image: Image, name: str = "prompts") -> Points:
    """An empty Points layer for prompts on ``image``; its ``label`` feature (positive/negative) sets the colour."""
    shape = spatial_shape(image)
    return Points(
        ndim=len(shape),
        name=name,
        features={"label": pd.Categorical([], categories=[POSITIVE, NEGATIVE])},
        feature_defaults={"label": POSITIVE},
        face_color="label",
        face_color_cycle=POLARITY_COLORS,
        size=max(5, max(shape[-2:]) // 64),
        scale=image.scale,
        translate=image.translate,
    )


def prompt_boxes(image: Image, name: str = "boxes") -> Shapes:
    """An empty Shapes layer for box prompts on ``image`` (any shape counts as its bounding box)."""
    shape = spatial_shape(image)
    return Shapes(
        ndim=len(shape),
        name=name,
        edge_color="yellow",
        face_color="transparent",
        edge_width=max(1, max(shape[-2:]) // 256),
        scale=image.scale,
        translate=image.translate,
    )


def labels_like(image: Image, name: str, dtype: type = np.int32, **kwargs) -> Labels:
    """An empty Labels layer covering ``image`` (same spatial shape, scale and translate)."""
    data = np.zeros(spatial_shape(image), dtype)
    return Labels(data, name=name, scale=image.scale, translate=image.translate, **kwargs)


def fits(layer: Layer, kind: type[Layer], image: Image) -> bool:
    """Whether ``layer`` is a ``kind`` layer for ``image``: same dimensions and, for Labels, the same shape."""
    if not isinstance(layer, kind):
        return False
    shape = spatial_shape(image)
    return layer.data.shape == shape if isinstance(layer, Labels) else layer.ndim == len(shape)


def check_fits(layer: Layer, kind: type[Layer], image: Image) -> None:
    """Raise ``LayerError`` naming the mismatch when ``layer`` is not a ``kind`` layer for ``image``."""
    if fits(layer, kind, image):
        return
    if not isinstance(layer, kind):
        found = f"is a {layer.__class__.__name__} layer, not {kind.__name__},"
    elif isinstance(layer, Labels):
        found = f"has shape {layer.data.shape} but image {image.name!r} has {spatial_shape(image)}:"
    else:
        found = f"has {layer.ndim} dimensions but image {image.name!r} has {len(spatial_shape(image))}:"
    raise LayerError(f"layer {layer.name!r} {found} rename or delete {layer.name!r} and a new one is made")


def toggle_polarity(points: Points) -> None:
    """Flip positive/negative for the selected points, or for the next point added when none is selected.

    (napari makes the next point copy the selection's features, so after flipping a selection it follows suit.)
    """
    flip = {POSITIVE: NEGATIVE, NEGATIVE: POSITIVE}
    selected = sorted(points.selected_data)
    if selected:
        features = points.features.copy()
        column = features.columns.get_loc("label")
        features.iloc[selected, column] = [flip[v] for v in features["label"].iloc[selected]]
        points.features = features
        points.refresh_colors(update_color_mapping=False)
    else:
        points.feature_defaults = {"label": flip[points.feature_defaults["label"].iloc[0]]}


def object_prompts(points: np.ndarray, positive: np.ndarray, boxes: Sequence[np.ndarray]) -> list[ObjectPrompt]:
    """Group the prompts of one plane into objects.

    points: ``(K, 2)`` (row, col); positive: ``(K,)`` bool; boxes: ``(4,)`` arrays (row0, col0, row1, col1).
    Each box is one object, refined by the points inside it (the smallest box when boxes overlap); each positive
    point in no box is one more object, with every negative point in no box (they keep all such objects out).
    """
    owner = np.full(len(points), -1)
    if len(boxes) and len(points):
        b = np.asarray(boxes, dtype=float)
        r, c = points[:, 0:1], points[:, 1:2]
        inside = (r >= b[:, 0]) & (r <= b[:, 2]) & (c >= b[:, 1]) & (c <= b[:, 3])  # (K, B)
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        owner = np.where(inside.any(1), np.where(inside, area, np.inf).argmin(1), -1)
    labels = positive.astype(np.float64)
    prompts = []
    for i, box in enumerate(boxes):
        mine = owner == i
        prompts.append(ObjectPrompt(points[mine] if mine.any() else None, labels[mine] if mine.any() else None, box))
    free = owner == -1
    negative = points[free & ~positive]
    for point in points[free & positive]:
        prompts.append(
            ObjectPrompt(points=np.concatenate([point[None], negative]), labels=np.r_[1.0, np.zeros(len(negative))])
        )
    return prompts


def read_prompts(points: Points, boxes: Shapes, plane: int | None) -> list[ObjectPrompt]:
    """The objects prompted on ``plane`` (None for a 2D image) by ``points`` and ``boxes`` (see ``object_prompts``).

    Points without a ``label`` feature count as positive.
    """
    coords = np.asarray(points.data, dtype=float).reshape(-1, points.ndim)
    features = points.features
    positive = (features["label"] == POSITIVE).to_numpy(bool) if "label" in features else np.ones(len(coords), bool)
    rects = [np.concatenate([v[:, -2:].min(0), v[:, -2:].max(0)]) for v in boxes.data if _on_plane(v, plane)]
    if plane is not None:
        on = np.round(coords[:, 0]) == plane
        coords, positive = coords[on], positive[on]
    return object_prompts(coords[:, -2:], positive, rects)


def _on_plane(vertices: np.ndarray, plane: int | None) -> bool:
    return plane is None or round(float(vertices[:, 0].mean())) == plane


def paint_objects(labels: Labels, masks: np.ndarray, plane: int | None) -> list[int]:
    """Write ``(N, H, W)`` bool masks into ``labels`` (into ``plane`` of a stack) as new ids after its largest one.

    One ``data_setitem`` call, so a single napari undo removes them all; with ``preserve_labels`` on, existing labels
    are kept. Returns the ids written (a mask that ends up empty gets none).
    """
    return _write_new_labels(labels, masks_to_labels(masks, start=int(labels.data.max()) + 1), plane)


def paint_stack_objects(labels: Labels, objects: Sequence[dict[int, np.ndarray]]) -> list[int]:
    """Write objects followed through a stack (each ``{plane: (H, W) bool mask}``) into the ``(Z, H, W)`` ``labels``
    as new ids after its largest one, one id per object on all its planes; one undo step, as ``paint_objects``."""
    start = int(labels.data.max()) + 1
    painted = np.zeros(labels.data.shape, np.int32 if start + len(objects) < 2**31 else np.int64)
    for i, planes in enumerate(objects):
        for plane, mask in planes.items():
            painted[plane][mask] = start + i
    return _write_new_labels(labels, painted, None)


def commit_objects(
    labels: Labels,
    found: tuple[np.ndarray, int | None] | Sequence[dict[int, np.ndarray]],
    points: Points,
    boxes: Shapes,
    preview: Labels,
) -> str:
    """Add the objects to ``labels`` as new ids (one undo step), clear the prompts and the preview; returns what to
    tell the user. found: ``(masks (N, H, W), plane)`` of one slice, or objects followed through a stack (each
    ``{plane: mask}``)."""
    if isinstance(found, tuple):
        ids, where = paint_objects(labels, *found), ""
    else:
        ids = paint_stack_objects(labels, found)
        planes = sorted({plane for planes in found for plane in planes})
        where = f" on slices {planes[0]} to {planes[-1]}" if planes else ""
    clear_prompts(points, boxes)
    show_preview(preview, None, None)
    return f"added {len(ids)} object(s) to '{labels.name}'{where} as label(s) {ids}"


def _write_new_labels(labels: Labels, painted: np.ndarray, plane: int | None) -> list[int]:
    """Write the non-zero ids of ``painted`` (the whole layer's shape, or one ``plane`` of a stack) with a single
    ``data_setitem``; returns the ids written."""
    dtype = labels.data.dtype
    if np.issubdtype(dtype, np.integer) and painted.max(initial=0) > np.iinfo(dtype).max:
        raise LayerError(
            f"labels layer {labels.name!r} is {dtype} and cannot hold label {painted.max()}; "
            "convert it to int32 (or rename it and a new one is made)"
        )
    keep = painted > 0
    if labels.preserve_labels:
        keep &= (labels.data if plane is None else labels.data[plane]) == 0
    where = np.nonzero(keep)
    index = where if plane is None else (np.full_like(where[0], plane), *where)
    values = painted[where]
    labels.data_setitem(index, values)
    return np.unique(values).tolist()


def show_preview(preview: Labels, masks: np.ndarray | None, plane: int | None) -> None:
    """Show ``(N, H, W)`` bool masks as ids 1..N in ``preview`` (on ``plane`` of a stack); None empties it.

    The preview is replaced, not edited, so it leaves nothing in napari's undo history.
    """
    data = np.zeros(preview.data.shape, preview.data.dtype)  # calloc: cheap even for a large stack
    if masks is not None:
        (data if plane is None else data[plane])[...] = masks_to_labels(masks)
    preview.data = data


def clear_prompts(points: Points, boxes: Shapes) -> None:
    """Remove every point and box; the next point is positive again."""
    points.data = np.empty((0, points.ndim))
    points.feature_defaults = {"label": POSITIVE}
    boxes.data = []
