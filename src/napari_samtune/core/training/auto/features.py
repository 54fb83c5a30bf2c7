"""What the predictors see: dataset meta-features, the curve prefix of a configuration, and their combination.

Dataset meta-features are cheap statistics of ``TrainingData`` (counts, object sizes, image size, channels, task).
A learning curve is the validation score at rungs ``0..RUNGS`` (rung 0: before any training); a *prefix* is its first
``k`` values (``k = 0``: not started). One predictor input describes (configuration, data set, schedule length,
prefix, target rung).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..data import TrainingData, instances_of
from .space import RUNGS, encode, encoding_width

DATASET_FEATURES = (
    "log_train_items",
    "log_validation_items",
    "log_objects_per_item",
    "log_object_area",
    "object_area_cv",
    "foreground",
    "log_plane_pixels",
    "rgb",
    "stack",
    "semantic",
    "log_classes",
    "log_unlabeled",
)
_MAX_ITEMS = 64  # items looked at for object statistics (enough for the statistics, fast on big data sets)


def dataset_features(data: TrainingData) -> dict[str, float]:
    """The meta-features of ``data`` (names in ``DATASET_FEATURES``; logs are natural logs, areas relative to the
    plane)."""
    areas, objects, foreground, pixels = [], [], [], []
    for item in data.train[:_MAX_ITEMS]:
        instances, ids = instances_of(item.labels, data.task)
        size = item.labels.size
        if ids:
            counts = np.bincount(instances.ravel())[ids]
            areas.extend((counts / size).tolist())
        objects.append(len(ids))
        foreground.append(np.count_nonzero(item.labels) / size)
        pixels.append(size)
    areas_arr = np.asarray(areas or [1e-4])
    return {
        "log_train_items": math.log1p(len(data.train)),
        "log_validation_items": math.log1p(len(data.validation)),
        "log_objects_per_item": math.log1p(float(np.mean(objects))),
        "log_object_area": math.log(float(np.median(areas_arr))),
        "object_area_cv": float(min(areas_arr.std() / areas_arr.mean(), 5.0)),
        "foreground": float(np.mean(foreground)),
        "log_plane_pixels": math.log(float(np.mean(pixels))),
        "rgb": float(np.mean([v.planes.ndim == 4 for v in data.volumes])),
        "stack": float(np.mean([v.is_stack for v in data.volumes])),
        "semantic": float(data.task == "semantic"),
        "log_classes": math.log(len(data.classes)),
        "log_unlabeled": math.log1p(len(data.unlabeled)),
    }


def dataset_vector(features: dict[str, float]) -> np.ndarray:
    """``features`` as a float32 vector in ``DATASET_FEATURES`` order."""
    missing = set(DATASET_FEATURES) - set(features)
    if missing:
        raise ValueError(f"dataset features miss {sorted(missing)}")
    return np.array([features[name] for name in DATASET_FEATURES], np.float32)


def curve_part(prefix: Sequence[float], target: int) -> np.ndarray:
    """The curve part of a predictor input: values and mask of rungs ``0..RUNGS``, the last and best values, the
    prefix length and the target rung (``target`` ≥ max(1, len(prefix)))."""
    k = len(prefix)
    if k > RUNGS + 1 or not max(1, k) <= target <= RUNGS:
        raise ValueError(f"target rung {target} must be in [max(1, {k}), {RUNGS}] for a prefix of {k} values")
    values = np.zeros(RUNGS + 1, np.float32)
    mask = np.zeros(RUNGS + 1, np.float32)
    values[:k] = prefix
    mask[:k] = 1.0
    last = float(prefix[-1]) if k else 0.0
    best = float(max(prefix)) if k else 0.0
    return np.concatenate([values, mask, [last, best, k / (RUNGS + 1), target / RUNGS, (target - k) / RUNGS]])


def input_width() -> int:
    return encoding_width() + len(DATASET_FEATURES) + 1 + 2 * (RUNGS + 1) + 5


def predictor_input(
    config_vector: np.ndarray, data_vector: np.ndarray, steps: int, prefix: Sequence[float], target: int
) -> np.ndarray:
    """One performance-predictor input ``(input_width(),)``: configuration encoding, dataset meta-features, log2 of
    the schedule length, and the curve part."""
    return np.concatenate(
        [config_vector, data_vector, [math.log2(steps)], curve_part(prefix, target)], dtype=np.float32
    )


def curve_examples(config: dict, data_vector: np.ndarray, curve: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """All (prefix → later rung) training examples of one complete curve (``RUNGS + 1`` values): inputs
    ``(n, input_width())`` and targets ``(n,)``."""
    if len(curve) != RUNGS + 1:
        raise ValueError(f"a curve has {RUNGS + 1} values (rungs 0..{RUNGS}), got {len(curve)}")
    vector = encode(config)
    inputs, targets = [], []
    for k in range(RUNGS + 1):
        for target in range(max(1, k), RUNGS + 1):
            inputs.append(predictor_input(vector, data_vector, config["steps"], curve[:k], target))
            targets.append(curve[target])
    return np.stack(inputs), np.asarray(targets, np.float32)
