"""Layers in, training data out; and the fine-tuning job the widget and scripts run.

Reading layers happens on the main thread (``read_training_layers``: checks and copies what training needs);
everything slow, from preparing the data to the last training step, runs in the job (``fine_tune_job``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from napari.layers import Image, Labels, Layer, Points, Shapes

from ..core.jobs import relay
from ..core.models.registry import SamModel
from ..core.training.data import WeakLabels, prepare_training_data
from ..core.training.fine_tune import AUTO, METHODS, fine_tune
from ..core.training.loop import TrainConfig, TrainEvent, headline_loss
from ..core.training.methods import FineTuneResult
from .layers import POSITIVE, LayerError, image_data, spatial_shape

METHOD_NAMES = {
    "interactive": "interactive fine-tuning",
    "blo": "BLO prompt learning (prompt-free)",
    "sum": "uncertainty-aware (SUM, + unlabeled images)",
    "wesam": "weak self-training (WeSAM, + points/boxes)",
    AUTO: "automatic (best method in the time budget)",
}


def method_choices() -> list[tuple[str, str]]:
    """(readable name, method key) for every method ``fine_tune`` knows, the automatic search last."""
    return [(METHOD_NAMES.get(key, key), key) for key in [*METHODS, AUTO]]


@dataclass
class TrainingPair:
    """A labeled image for training, with optional weak labels (Points: positive/negative clicks; Shapes: boxes)."""

    image: Image
    labels: Labels
    weak: list[Points | Shapes] = field(default_factory=list)


@dataclass
class TrainingInputs:
    """What ``prepare_training_data`` takes, read from the layers (labels copied: the user may paint on)."""

    images: list[np.ndarray]
    labels: list[np.ndarray]
    names: list[str]
    rgb: bool | None
    unlabeled: list[np.ndarray]
    weak: dict[int, WeakLabels]
    all_objects_labeled: bool = False  # see prepare_training_data: else only painted objects (and near them) known


def read_training_layers(
    pairs: Sequence[TrainingPair], unlabeled: Sequence[Image] = (), all_objects_labeled: bool = False
) -> TrainingInputs:
    """Check the layers and read them for training. Raises ``LayerError`` naming the layer when they do not fit.

    all_objects_labeled: every object of these images is painted (unpainted pixels are background); False: only the
    painted objects and their immediate surroundings are known (``prepare_training_data``)."""
    if not pairs:
        raise LayerError(
            "no labeled image to learn from: choose an image and its labels layer (paint a few objects, or commit "
            "some with 'Segment with prompts')"
        )
    images, labels, weak = [], [], {}
    for i, pair in enumerate(pairs):
        shape = spatial_shape(pair.image)
        if pair.labels.data.shape != shape:
            raise LayerError(
                f"labels layer {pair.labels.name!r} has shape {pair.labels.data.shape} but image "
                f"{pair.image.name!r} has {shape}: choose the labels drawn on this image"
            )
        images.append(image_data(pair.image))
        labels.append(np.array(pair.labels.data))
        if pair.weak:
            weak[i] = weak_labels(pair.weak, pair.image)
    for image in unlabeled:
        spatial_shape(image)  # refuses layouts SAM tune cannot segment, with a clear message
    flags = {layer.rgb for layer in [*(p.image for p in pairs), *unlabeled]}
    return TrainingInputs(
        images=images,
        labels=labels,
        names=[f"image {p.image.name!r}" for p in pairs],
        rgb=flags.pop() if len(flags) == 1 else None,
        unlabeled=[image_data(layer) for layer in unlabeled],
        weak=weak,
        all_objects_labeled=all_objects_labeled,
    )


def weak_labels(layers: Sequence[Points | Shapes], image: Image) -> WeakLabels:
    """Points (``label`` feature positive/negative; none: positive) and Shapes (each one's bounding box) as weak
    labels of ``image``, in its data coordinates (row, col) with planes for a stack."""
    ndim = len(spatial_shape(image))
    points, polarity, boxes = [], [], []
    for layer in layers:
        if isinstance(layer, Points):
            coords = _to_image(layer, np.asarray(layer.data, float), image)
            points.append(coords)
            labels = layer.features.get("label")
            polarity.append(np.ones(len(coords)) if labels is None else (labels == POSITIVE).to_numpy(float))
        elif isinstance(layer, Shapes):
            for vertices in layer.data:
                corners = _to_image(layer, np.asarray(vertices, float), image)
                boxes.append(np.concatenate([corners[0, :-2], corners[:, -2:].min(0), corners[:, -2:].max(0)]))
        else:
            kind = type(layer).__name__
            raise LayerError(f"layer {layer.name!r} is a {kind} layer: weak labels are Points or Shapes layers")
    point_array = np.concatenate(points) if points else np.empty((0, ndim))
    box_array = np.asarray(boxes, float).reshape(-1, ndim + 2)
    return WeakLabels(
        boxes=box_array[:, -4:] if len(box_array) else None,
        box_planes=np.round(box_array[:, 0]).astype(int) if ndim == 3 and len(box_array) else None,
        points=point_array[:, -2:] if len(point_array) else None,
        point_labels=np.concatenate(polarity) if len(point_array) else None,
        point_planes=np.round(point_array[:, 0]).astype(int) if ndim == 3 and len(point_array) else None,
    )


def _to_image(layer: Layer, coords: np.ndarray, image: Image) -> np.ndarray:
    """``(N, D)`` data coordinates of ``layer`` → ``image``'s data coordinates, through the world frame."""
    ndim = len(spatial_shape(image))
    if coords.shape[1] != ndim:
        raise LayerError(
            f"layer {layer.name!r} has {coords.shape[1]} dimensions but image {image.name!r} has {ndim}: "
            "draw the weak labels on a layer made for this image"
        )
    return np.array([image.world_to_data(layer.data_to_world(c)) for c in coords]).reshape(-1, ndim)


def model_on(model: SamModel, device: str) -> SamModel:
    """``model`` itself when it already lives on ``device``, else a copy moved there (the original is kept)."""
    target = torch.device(device)
    if model.device == target:
        return model
    moved = copy.copy(model)
    moved.sam, moved.device = copy.deepcopy(model.sam).to(target), target
    moved.metadata = dict(model.metadata)
    return moved


def fine_tune_job(
    load_base: Callable[[], SamModel],
    inputs: TrainingInputs,
    method: str,
    config: TrainConfig,
    device: str,
    should_stop: Callable[[], bool],
) -> Generator[dict, None, tuple[SamModel, FineTuneResult]]:
    """Prepare the data, get the base model (``load_base``, on ``device``) and fine-tune a copy of it.

    Yields progress dicts for ``workers.run_job`` (``stage``; ``done``/``total`` steps with the ``TrainEvent`` under
    ``"event"``); returns the base model (on ``device``) and the ``FineTuneResult`` (``.cancelled`` when
    ``should_stop`` ended it).
    """
    yield {"stage": "preparing the training data"}
    data = prepare_training_data(
        inputs.images,
        inputs.labels,
        rgb=inputs.rgb,
        unlabeled=inputs.unlabeled,
        weak=inputs.weak,
        names=inputs.names,
        all_objects_labeled=inputs.all_objects_labeled,
    )
    yield {"stage": "loading the model"}
    base = model_on(load_base(), device)
    yield {"stage": f"fine-tuning ({METHOD_NAMES.get(method, method)}): encoding the images"}
    training = fine_tune(base, data, method, config=config, should_stop=should_stop)
    progress = relay(
        training, lambda event: {"stage": describe(event), "done": event.step, "total": event.total, "event": event}
    )
    return base, (yield from progress)


def describe(event: TrainEvent) -> str:
    """One line for the progress bar: step, loss, validation (best) and time left."""
    parts = [f"step {event.step}/{event.total}"]
    if (loss := headline_loss(event.losses)) is not None:
        parts.append(f"loss {loss:.3g}")
    if event.best is not None:
        parts.append(f"validation best {event.best:.3f}")
    if math.isfinite(event.eta_s):
        parts.append(f"{event.eta_s:.0f} s left")
    return "fine-tuning: " + ", ".join(parts)
