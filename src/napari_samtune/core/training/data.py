"""Training data from arrays: images with label images (instances, binary or multi-class), unlabeled images and
weak labels (boxes, points), checked and split into training and validation items.

An *item* is one 2D plane of one image (a 3D stack gives one item per plane), with the pixels whose label is known.

Partial annotations: users label some objects of an image, not all. Unless told that every object is labeled
(``all_objects_labeled``), only the painted objects are known; an unpainted pixel is known background only inside
an ``annotated_regions`` mask or within ``background_margin`` pixels of a painted object (the user traced that
object's edge). Unknown pixels weigh nothing in the losses, so the unlabeled objects are not learned as background.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..errors import SamtuneError
from ..image import Volume, as_volume


class DataError(SamtuneError, ValueError):
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
    """One labeled plane: ``image`` index into ``TrainingData.volumes``, ``plane`` index, ``labels`` (H, W) int;
    ``known`` (H, W) bool: the pixels whose label is known (None: all of them)."""

    image: int
    plane: int
    labels: np.ndarray
    known: np.ndarray | None = None


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
    all_objects_labeled: bool | Sequence[bool] = False,
    annotated_regions: Sequence[np.ndarray | None] | None = None,
    background_margin: int = 4,
) -> TrainingData:
    """Check images and labels and split their planes into training and validation items (deterministic by seed).

    images: 2D ``(H, W)``/RGB or 3D ``(Z, H, W)`` arrays; labels: integer arrays of the same spatial shape (one per
    image). task: "instances" (each id one object), "semantic" (each value a class, 0 background) or "auto".
    classes: the class values to learn from multi-class labels (task "semantic"); other values count as background.

    Which unpainted pixels are background (one value for all images, or one per image):
    ``all_objects_labeled=False`` (default): the labels may be partial, some objects painted and others not. An
    unpainted pixel is background only inside ``annotated_regions[i]`` (a bool mask of the image's spatial shape:
    "inside it I painted every object"; None for none) or within ``background_margin`` pixels of a painted object;
    elsewhere it is unknown and never taught as background. ``all_objects_labeled=True``: every object of the image
    is painted, so every unpainted pixel is background.

    Validation: with several labeled planes, a ``validation_fraction`` of them; with a single one, a block at one
    edge of it (about that fraction of its objects, whole objects only), masked out of training.
    """
    if len(images) != len(labels):
        raise DataError(f"got {len(images)} images but {len(labels)} label images: give one label image per image")
    if not images:
        raise DataError("no training images given: add at least one image with its labels")
    names = names or [f"image {i}" for i in range(len(images))]
    if classes is not None:
        task, labels = "semantic", _keep_classes(labels, classes)
    complete = _per_image(all_objects_labeled, len(images), "all_objects_labeled")
    regions = _per_image(annotated_regions, len(images), "annotated_regions") if annotated_regions is not None else None
    if background_margin < 0:
        raise DataError(f"background_margin must be ≥ 0 pixels, got {background_margin}")
    volumes, items = [], []
    for i, (image, lab) in enumerate(zip(images, labels)):
        volume = as_volume(image, rgb=rgb)
        lab = _check_labels(lab, volume, names[i], allow_empty=classes is not None)
        volumes.append(volume)
        planes = lab if volume.is_stack else lab[None]
        region = _check_region(regions[i], lab.shape, names[i]) if regions is not None else None
        region_planes = None if region is None else (region if volume.is_stack else region[None])
        for z in range(len(planes)):
            if not planes[z].any():
                continue
            known = None
            if not complete[i]:
                known = known_pixels(planes[z], None if region_planes is None else region_planes[z], background_margin)
            items.append(Item(i, z, planes[z], known))
    if not items:
        raise DataError("all label images are empty (all 0): paint at least one object before fine-tuning")
    task = _infer_task(items) if task == "auto" else task
    if task not in ("instances", "semantic"):
        raise DataError(f"task must be 'instances', 'semantic' or 'auto', got {task!r}")
    values = np.unique(np.concatenate([np.unique(it.labels) for it in items]))
    classes = (1,) if task == "instances" else tuple(int(c) for c in values if c != 0)
    train, validation = split_items(items, validation_fraction, seed, task)
    return TrainingData(
        volumes=volumes,
        train=train,
        validation=validation,
        task=task,
        classes=classes,
        unlabeled=[as_volume(u, rgb=rgb) for u in unlabeled],
        weak=dict(weak or {}),
    )


def _per_image(value, n: int, name: str) -> list:
    """One value per image: a single value is repeated; a sequence must have one entry per image."""
    if isinstance(value, (bool, np.bool_)) or value is None:
        return [value] * n
    value = list(value)
    if len(value) != n:
        raise DataError(f"{name} has {len(value)} entries for {n} images: give one per image (or a single value)")
    return value


def _check_region(region: np.ndarray | None, shape: tuple[int, ...], name: str) -> np.ndarray | None:
    if region is None:
        return None
    region = np.asarray(region)
    if region.shape != tuple(shape):
        raise DataError(f"annotated region of {name} has shape {region.shape} but its labels have {tuple(shape)}")
    return region.astype(bool)


def known_pixels(labels: np.ndarray, region: np.ndarray | None, margin: int) -> np.ndarray:
    """``(H, W)`` bool: the painted pixels, the ``region`` (where every object is painted) and the unpainted pixels
    within ``margin`` pixels of a painted object (background the user saw when tracing that object's edge)."""
    painted = labels > 0
    known = ndimage.binary_dilation(painted, iterations=margin) if margin > 0 else painted.copy()
    if region is not None:
        known |= region
    return known


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


def split_items(
    items: list[Item], fraction: float, seed: int, task: str = "instances"
) -> tuple[list[Item], list[Item]]:
    """Deterministic split of the items. A single item is split in space (``hold_out_block``); when it cannot be
    (fewer than two objects), it serves for both."""
    if len(items) == 1:
        held = hold_out_block(items[0], fraction, seed, task)
        return ([held[0]], [held[1]]) if held is not None else (items, items)
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


def hold_out_block(item: Item, fraction: float, seed: int, task: str) -> tuple[Item, Item] | None:
    """Split one labeled plane in space: a strip along one edge (``fraction`` of the height or width) for validation,
    the rest for training, so validation measures the model on objects it was not trained on.

    Whole objects are assigned (to validation when most of their pixels lie in the strip); each side's ``known``
    excludes the other side's objects and block. Among the four edges, the one whose share of the objects is closest
    to ``fraction`` (ties broken by ``seed``). Returns (training, validation) items, or None when no edge leaves at
    least one object on each side.
    """
    objects, ids = instances_of(item.labels, task, min_area=1)
    if len(ids) < 2:
        return None
    h, w = item.labels.shape
    rows, cols = max(1, round(h * fraction)), max(1, round(w * fraction))
    strips = []
    for edge in range(4):
        strip = np.zeros((h, w), bool)
        if edge == 0:
            strip[:, w - cols :] = True
        elif edge == 1:
            strip[:, :cols] = True
        elif edge == 2:
            strip[h - rows :] = True
        else:
            strip[:rows] = True
        strips.append(strip)
    inside = [ndimage.mean(s, objects, ids) for s in strips]  # share of each object's pixels in each strip
    best, best_score = None, np.inf
    for edge in np.random.default_rng(seed).permutation(4):
        held = np.asarray(inside[edge]) > 0.5
        if held.all() or not held.any():
            continue
        score = abs(held.mean() - fraction)
        if score < best_score:
            best, best_score = edge, score
    if best is None:
        return None
    held = np.asarray(inside[best]) > 0.5
    val_objects = np.isin(objects, np.asarray(ids)[held])
    train_objects = (objects > 0) & ~val_objects
    block = strips[best]
    known = item.known if item.known is not None else np.ones((h, w), bool)
    train = Item(
        item.image, item.plane, np.where(train_objects, item.labels, 0), known & (~block | train_objects) & ~val_objects
    )
    validation = Item(
        item.image, item.plane, np.where(val_objects, item.labels, 0), known & (block | val_objects) & ~train_objects
    )
    return train, validation
