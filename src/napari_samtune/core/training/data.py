"""Training data from arrays: images with label images (instances, binary or multi-class), unlabeled images and
weak labels (boxes, points), checked and split into training and validation items.

An *item* is one 2D plane of one image (a 3D stack gives one item per plane).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..image import Volume, as_volume


class DataError(ValueError):
    """Training data that cannot be used as given; the message names the image and what to fix."""


@dataclass(frozen=True)
class WeakLabels:
    """Cheap annotations of one image: boxes ``(N, 4)`` (row0, col0, row1, col1) [plane given by ``box_planes``],
    points ``(M, 2)`` (row, col) with labels 1/0 and ``point_objects`` grouping points per object (default: each
    positive point is its own object), coarse masks ``(K, H, W)``."""

    boxes: np.ndarray | None = None
    box_planes: np.ndarray | None = None
    points: np.ndarray | None = None
    point_labels: np.ndarray | None = None
    point_planes: np.ndarray | None = None
    masks: np.ndarray | None = None


@dataclass(frozen=True)
class Item:
    """One labeled plane: ``image`` index into ``TrainingData.volumes``, ``plane`` index, ``labels`` (H, W) int."""

    image: int
    plane: int
    labels: np.ndarray


@dataclass
class TrainingData:
    """Checked training data. ``task`` is "instances" or "semantic"; ``classes`` are the semantic class values
    (excluding background 0) or ``(1,)`` for instances (object vs background)."""

    volumes: list[Volume]
    train: list[Item]
    validation: list[Item]
    task: str
    classes: tuple[int, ...]
    unlabeled: list[Volume] = field(default_factory=list)
    weak: dict[int, WeakLabels] = field(default_factory=dict)

    def summary(self) -> dict:
        return {
            "images": len(self.volumes),
            "train_items": len(self.train),
            "validation_items": len(self.validation),
            "task": self.task,
            "classes": list(self.classes),
            "unlabeled_images": len(self.unlabeled),
            "objects": int(sum(len(instances_of(it.labels, self.task)[1]) for it in self.train)),
        }


def prepare_training_data(
    images: list[np.ndarray],
    labels: list[np.ndarray],
    *,
    task: str = "auto",
    classes: Sequence[int] | None = None,
    rgb: bool | None = None,
    unlabeled: list[np.ndarray] = (),
    weak: dict[int, WeakLabels] | None = None,
    validation_fraction: float = 0.25,
    seed: int = 0,
    names: list[str] | None = None,
) -> TrainingData:
    """Check images and labels and split their planes into training and validation items (deterministic by seed).

    images: 2D ``(H, W)``/RGB or 3D ``(Z, H, W)`` arrays; labels: integer arrays of the same spatial shape (one per
    image). task: "instances" (each id one object), "semantic" (each value a class, 0 background) or "auto".
    classes: the class values to learn from multi-class labels (task "semantic"); other values count as background.
    """
    if len(images) != len(labels):
        raise DataError(f"got {len(images)} images but {len(labels)} label images: give one label image per image")
    if not images:
        raise DataError("no training images given: add at least one image with its labels")
    names = names or [f"image {i}" for i in range(len(images))]
    if classes is not None:
        task, labels = "semantic", _keep_classes(labels, classes)
    volumes, items = [], []
    for i, (image, lab) in enumerate(zip(images, labels)):
        volume = as_volume(image, rgb=rgb)
        lab = _check_labels(lab, volume, names[i], allow_empty=classes is not None)
        volumes.append(volume)
        planes = lab if volume.is_stack else lab[None]
        items += [Item(i, z, planes[z]) for z in range(len(planes)) if planes[z].any()]
    if not items:
        raise DataError("all label images are empty (all 0): paint at least one object before fine-tuning")
    task = _infer_task(items) if task == "auto" else task
    if task not in ("instances", "semantic"):
        raise DataError(f"task must be 'instances', 'semantic' or 'auto', got {task!r}")
    values = np.unique(np.concatenate([np.unique(it.labels) for it in items]))
    classes = (1,) if task == "instances" else tuple(int(c) for c in values if c != 0)
    train, validation = split_items(items, validation_fraction, seed)
    return TrainingData(
        volumes=volumes,
        train=train,
        validation=validation,
        task=task,
        classes=classes,
        unlabeled=[as_volume(u, rgb=rgb) for u in unlabeled],
        weak=dict(weak or {}),
    )


def _keep_classes(labels: list[np.ndarray], classes: Sequence[int]) -> list[np.ndarray]:
    """``labels`` with every value outside ``classes`` set to 0; refuses a class found in no label image."""
    wanted = sorted({int(c) for c in classes})
    if not wanted or min(wanted) <= 0:
        raise DataError(f"classes must be positive label values (0 is background), got {list(classes)}")
    kept = [np.where(np.isin(lab, wanted), lab, 0) for lab in map(np.asarray, labels)]
    present = set().union(*(np.unique(lab).tolist() for lab in kept))
    if missing := [c for c in wanted if c not in present]:
        raise DataError(f"class value(s) {missing} occur in no label image: choose among the values the labels hold")
    return kept


def _check_labels(labels: np.ndarray, volume: Volume, name: str, allow_empty: bool = False) -> np.ndarray:
    lab = np.asarray(labels)
    expected = (volume.n_planes, *volume.plane_shape) if volume.is_stack else volume.plane_shape
    if lab.shape != tuple(expected):
        raise DataError(f"labels of {name} have shape {lab.shape} but the image has {tuple(expected)} (spatial)")
    if lab.dtype == bool:
        return lab.astype(np.int32)
    if np.issubdtype(lab.dtype, np.floating):
        if not np.isfinite(lab).all() or not np.array_equal(lab, np.round(lab)):
            raise DataError(
                f"labels of {name} are {lab.dtype} with non-integer or NaN values: labels must be integer ids "
                "(0 = background); threshold probabilities first"
            )
        lab = lab.astype(np.int64)
    elif not np.issubdtype(lab.dtype, np.integer):
        raise DataError(f"labels of {name} have dtype {lab.dtype}: labels must be integer ids (0 = background)")
    if lab.min() < 0:
        raise DataError(f"labels of {name} contain negative values: use 0 for background and positive ids")
    if not lab.any() and not allow_empty:  # with chosen classes, an image may hold none of them
        raise DataError(f"labels of {name} are all 0: paint at least one object in it or leave it out")
    # 0/255 binary masks (common in public data sets) mean object/background.
    values = np.unique(lab)
    if len(values) == 2 and values[1] == 255:
        lab = (lab > 0).astype(np.int32)
    return lab.astype(np.int32)


def _infer_task(items: list[Item]) -> str:
    """A binary mask is one class; few values that each form several pieces are classes; the rest instances.

    Up to 8 labeled planes are looked at, not only the first: it may hold a single object of an instance data set.
    """
    sample = items[:8]
    ids = np.unique(np.concatenate([np.unique(it.labels[it.labels > 0]) for it in sample]))
    if len(ids) == 1:
        return "semantic"
    if len(ids) > 16:
        return "instances"
    split = sum(any(ndimage.label(it.labels == v)[1] > 1 for it in sample) for v in ids)
    return "semantic" if split > len(ids) / 2 else "instances"


def split_items(items: list[Item], fraction: float, seed: int) -> tuple[list[Item], list[Item]]:
    """Deterministic split; with a single item, it serves for both (and the caller is warned by the loop)."""
    if len(items) == 1:
        return items, items
    order = np.random.default_rng(seed).permutation(len(items))
    n_val = min(len(items) - 1, max(1, round(len(items) * fraction)))
    return [items[i] for i in sorted(order[n_val:])], [items[i] for i in sorted(order[:n_val])]


def instances_of(labels: np.ndarray, task: str, min_area: int = 10) -> tuple[np.ndarray, list[int]]:
    """Instance labels of a plane: ids as given ("instances"), else connected components of every class."""
    if task == "instances":
        ids, areas = np.unique(labels[labels > 0], return_counts=True)
        return labels, [int(i) for i, a in zip(ids, areas) if a >= min_area]
    out = np.zeros(labels.shape, np.int32)
    next_id = 1
    for value in np.unique(labels[labels > 0]):
        comp, n = ndimage.label(labels == value)
        out[comp > 0] = comp[comp > 0] + next_id - 1
        next_id += n
    ids, areas = np.unique(out[out > 0], return_counts=True)
    return out, [int(i) for i, a in zip(ids, areas) if a >= min_area]
