"""Segmentation quality metrics for binary masks, semantic label images and instance label images.

Binary metrics (:func:`iou`, :func:`dice`, :func:`boundary_iou`) take two masks of equal shape; any
non-zero value counts as foreground.  Semantic metrics (:func:`per_class_iou`, :func:`per_class_dice`,
:func:`per_class_boundary_iou`, :func:`mean_iou`) take two images of non-negative integer class ids.
:func:`match_instances` takes two instance label images (0 = background, every other id one object).

Empty-input convention: when prediction and target are both empty there is nothing to get wrong, so
the score is 1.0.  When only one of them is empty the score is 0.0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

__all__ = [
    "InstanceScores",
    "boundary_iou",
    "dice",
    "iou",
    "match_instances",
    "mean_iou",
    "per_class_boundary_iou",
    "per_class_dice",
    "per_class_iou",
]


# --------------------------------------------------------------------------- validation helpers


def _check_shapes(pred: np.ndarray, target: np.ndarray) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"prediction has shape {pred.shape} but target has {target.shape}")


def _as_mask(arr: np.ndarray, name: str) -> np.ndarray:
    """Return ``arr != 0`` as a bool array; reject NaN, which is neither foreground nor background."""
    arr = np.asarray(arr)
    if arr.dtype.kind == "f" and np.isnan(arr).any():
        raise ValueError(f"{name} mask contains NaN; pass a bool mask or an array of 0 / non-0 values")
    return arr != 0


def _as_labels(arr: np.ndarray, name: str) -> np.ndarray:
    """Return a label image as a non-negative int64 array.

    Integer and bool arrays pass; float arrays pass only if every value is a whole number.  NaN, inf,
    fractional or negative values raise ``ValueError``.
    """
    arr = np.asarray(arr)
    hint = "pass an integer label image (e.g. arr.astype(np.int32)), not probabilities or logits"
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} label image contains NaN or inf; {hint}")
        if not np.array_equal(arr, np.round(arr)):
            raise ValueError(f"{name} label image has non-integer float values; {hint}")
    elif arr.dtype.kind not in "biu":
        raise ValueError(f"{name} label image has dtype {arr.dtype}; {hint}")
    labels = arr.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise ValueError(f"{name} label image has negative values; labels must be >= 0 (0 = background)")
    return labels


def _ratio(num: float, den: float, both_empty: bool) -> float:
    """``num / den``, or 1.0 / 0.0 when ``den == 0`` depending on whether both inputs were empty."""
    if den == 0:
        return 1.0 if both_empty else 0.0
    return float(num / den)


# --------------------------------------------------------------------------- binary metrics


def iou(pred: np.ndarray, target: np.ndarray) -> float:
    """Intersection over union of two binary masks of equal shape (non-zero = foreground).

    Returns a float in [0, 1]; 1.0 when both masks are empty.
    """
    p, t = _as_mask(pred, "prediction"), _as_mask(target, "target")
    _check_shapes(p, t)
    inter = np.count_nonzero(p & t)
    union = np.count_nonzero(p | t)
    return _ratio(inter, union, both_empty=union == 0)


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice coefficient ``2|P∩T| / (|P| + |T|)`` of two binary masks of equal shape.

    Returns a float in [0, 1]; 1.0 when both masks are empty.
    """
    p, t = _as_mask(pred, "prediction"), _as_mask(target, "target")
    _check_shapes(p, t)
    total = np.count_nonzero(p) + np.count_nonzero(t)
    return _ratio(2 * np.count_nonzero(p & t), total, both_empty=total == 0)


def _boundary_width(shape: tuple[int, ...], dilation_ratio: float) -> int:
    """Band width ``d = max(1, round(dilation_ratio * image diagonal))`` in pixels."""
    if dilation_ratio < 0:
        raise ValueError(f"dilation_ratio must be >= 0, got {dilation_ratio}")
    return max(1, round(dilation_ratio * math.hypot(*shape)))


def _inner_band(mask: np.ndarray, width: int) -> np.ndarray:
    """Foreground pixels within chessboard distance ``width`` of the background.

    Equivalent to ``mask & ~erode(mask, 3x3 square, iterations=width)`` with the image border counted
    as background, as in the reference implementation of Cheng et al. (2021).
    """
    padded = np.pad(mask, 1, constant_values=False)
    dist = ndimage.distance_transform_cdt(padded, metric="chessboard")
    inner = tuple(slice(1, -1) for _ in range(mask.ndim))
    return mask & (dist[inner] <= width)


def _boundary_iou_masks(p: np.ndarray, t: np.ndarray, width: int) -> float:
    bp, bt = _inner_band(p, width), _inner_band(t, width)
    union = np.count_nonzero(bp | bt)
    return _ratio(np.count_nonzero(bp & bt), union, both_empty=union == 0)


def boundary_iou(pred: np.ndarray, target: np.ndarray, dilation_ratio: float = 0.02) -> float:
    """Boundary IoU (Cheng et al., CVPR 2021) of two binary masks of equal shape (2-D or n-D).

    Each mask is reduced to its inner boundary band: the foreground pixels within
    ``d = max(1, round(dilation_ratio * image diagonal))`` pixels (chessboard distance) of the
    background, the image border counting as background.  The result is the IoU of the two bands,
    a float in [0, 1]; 1.0 when both masks are empty.
    """
    p, t = _as_mask(pred, "prediction"), _as_mask(target, "target")
    _check_shapes(p, t)
    return _boundary_iou_masks(p, t, _boundary_width(p.shape, dilation_ratio))


# --------------------------------------------------------------------------- semantic metrics


def _class_stats(
    pred: np.ndarray, target: np.ndarray, num_classes: int | None, ignore_background: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate two semantic label images and count pixels per class.

    Returns ``(classes, intersection, n_pred, n_true, p, t)``: the class ids present in either image
    (class 0 dropped if ``ignore_background``), the per-class pixel counts aligned with ``classes``,
    and the validated int64 label images.
    """
    p, t = _as_labels(pred, "prediction"), _as_labels(target, "target")
    _check_shapes(p, t)
    max_label = int(max(p.max(initial=0), t.max(initial=0)))
    if num_classes is None:
        num_classes = max_label + 1
    elif max_label >= num_classes:
        raise ValueError(f"label {max_label} found but num_classes={num_classes}; labels must be < num_classes")
    confusion = np.bincount(p.ravel() * num_classes + t.ravel(), minlength=num_classes * num_classes)
    confusion = confusion.reshape(num_classes, num_classes)
    intersection = np.diag(confusion)
    n_pred, n_true = confusion.sum(axis=1), confusion.sum(axis=0)
    classes = np.flatnonzero(n_pred + n_true)
    if ignore_background:
        classes = classes[classes != 0]
    return classes, intersection[classes], n_pred[classes], n_true[classes], p, t


def per_class_iou(
    pred: np.ndarray, target: np.ndarray, num_classes: int | None = None, ignore_background: bool = False
) -> dict[int, float]:
    """IoU per class of two semantic label images (non-negative integer class ids, equal shape).

    ``num_classes`` defaults to ``max label + 1``; labels >= ``num_classes`` raise ``ValueError``.
    Returns ``{class_id: iou}`` for every class present in prediction or target (classes absent from
    both are left out); class 0 is left out if ``ignore_background``.
    """
    classes, inter, n_pred, n_true, _, _ = _class_stats(pred, target, num_classes, ignore_background)
    return {int(c): float(i / (a + b - i)) for c, i, a, b in zip(classes, inter, n_pred, n_true)}


def per_class_dice(
    pred: np.ndarray, target: np.ndarray, num_classes: int | None = None, ignore_background: bool = False
) -> dict[int, float]:
    """Dice per class of two semantic label images; same inputs and conventions as :func:`per_class_iou`."""
    classes, inter, n_pred, n_true, _, _ = _class_stats(pred, target, num_classes, ignore_background)
    return {int(c): float(2 * i / (a + b)) for c, i, a, b in zip(classes, inter, n_pred, n_true)}


def per_class_boundary_iou(
    pred: np.ndarray,
    target: np.ndarray,
    num_classes: int | None = None,
    ignore_background: bool = False,
    dilation_ratio: float = 0.02,
) -> dict[int, float]:
    """Boundary IoU (see :func:`boundary_iou`) per class of two semantic label images.

    Same inputs and conventions as :func:`per_class_iou`; the band width is set by ``dilation_ratio``
    and the image diagonal, identical for all classes.
    """
    classes, _, _, _, p, t = _class_stats(pred, target, num_classes, ignore_background)
    width = _boundary_width(p.shape, dilation_ratio)
    return {int(c): _boundary_iou_masks(p == c, t == c, width) for c in classes}


def mean_iou(
    pred: np.ndarray, target: np.ndarray, num_classes: int | None = None, ignore_background: bool = False
) -> float:
    """Mean of :func:`per_class_iou` over the classes present in prediction or target.

    Returns 1.0 when no class is present at all (e.g. both images all background with
    ``ignore_background=True``).
    """
    scores = per_class_iou(pred, target, num_classes, ignore_background)
    return float(np.mean(list(scores.values()))) if scores else 1.0


# --------------------------------------------------------------------------- instance metrics


@dataclass(frozen=True)
class InstanceScores:
    """Result of :func:`match_instances`.

    Attributes:
        mean_matched_iou: mean IoU over the Hungarian-matched pairs with IoU > 0 (any IoU, not only
            those above ``threshold``).
        mean_true_iou: mean over ground-truth objects of the IoU with their Hungarian-matched
            prediction, 0 for unmatched objects ("per-object mIoU").
        precision: ``n_matched / n_pred``.
        recall: ``n_matched / n_true``.
        f1: ``2 * n_matched / (n_pred + n_true)``.
        n_true: number of ground-truth objects.
        n_pred: number of predicted objects.
        n_matched: number of matched pairs with IoU >= ``threshold`` (true positives).
        threshold: IoU threshold used for ``n_matched``, precision, recall and f1.

    A score whose denominator is zero is 1.0 if both label images are empty, else 0.0.
    """

    mean_matched_iou: float
    mean_true_iou: float
    precision: float
    recall: float
    f1: float
    n_true: int
    n_pred: int
    n_matched: int
    threshold: float


def _compact_labels(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Relabel to consecutive ids: returns (flat array with 0 = background and 1..n objects, n)."""
    ids, inverse = np.unique(labels.ravel(), return_inverse=True)
    if ids.size and ids[0] == 0:
        return inverse.ravel(), ids.size - 1
    return inverse.ravel() + 1, ids.size


def _iou_matrix(pred_labels: np.ndarray, true_labels: np.ndarray) -> np.ndarray:
    """Pairwise IoU, shape (n_pred, n_true), of the objects in two validated label images."""
    p, n_pred = _compact_labels(pred_labels)
    t, n_true = _compact_labels(true_labels)
    joint = np.bincount(p * (n_true + 1) + t, minlength=(n_pred + 1) * (n_true + 1))
    joint = joint.reshape(n_pred + 1, n_true + 1)
    area_pred, area_true = joint.sum(axis=1)[1:], joint.sum(axis=0)[1:]
    inter = joint[1:, 1:]
    return inter / (area_pred[:, None] + area_true[None, :] - inter)


def match_instances(pred_labels: np.ndarray, true_labels: np.ndarray, threshold: float = 0.5) -> InstanceScores:
    """Match predicted to ground-truth objects one-to-one and score the matching.

    Inputs are two instance label images of equal shape (non-negative integers, 0 = background, ids
    need not be consecutive).  Pairs are chosen by Hungarian matching maximising the total IoU; pairs
    with IoU 0 are discarded, and a pair counts as a true positive if its IoU >= ``threshold``.
    Returns an :class:`InstanceScores`; when both images are empty every score is 1.0.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    p, t = _as_labels(pred_labels, "prediction"), _as_labels(true_labels, "target")
    _check_shapes(p, t)
    ious = _iou_matrix(p, t)
    n_pred, n_true = ious.shape
    rows, cols = linear_sum_assignment(ious, maximize=True)
    pair_ious = ious[rows, cols]
    pair_ious = pair_ious[pair_ious > 0]
    n_matched = int(np.count_nonzero(pair_ious >= threshold))
    both_empty = n_pred == 0 and n_true == 0
    return InstanceScores(
        mean_matched_iou=_ratio(pair_ious.sum(), pair_ious.size, both_empty),
        mean_true_iou=_ratio(pair_ious.sum(), n_true, both_empty),
        precision=_ratio(n_matched, n_pred, both_empty),
        recall=_ratio(n_matched, n_true, both_empty),
        f1=_ratio(2 * n_matched, n_pred + n_true, both_empty),
        n_true=n_true,
        n_pred=n_pred,
        n_matched=n_matched,
        threshold=threshold,
    )
