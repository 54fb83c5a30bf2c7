"""Tests for napari_samtune.core.metrics; every expected value is worked out by hand in the comments."""

from __future__ import annotations

import numpy as np
import pytest

from napari_samtune.core.metrics import (
    InstanceScores,
    boundary_iou,
    dice,
    iou,
    match_instances,
    mean_iou,
    per_class_boundary_iou,
    per_class_dice,
    per_class_iou,
)


def _box(shape: tuple[int, int], rows: slice, cols: slice, value: int = 1) -> np.ndarray:
    out = np.zeros(shape, dtype=np.int32)
    out[rows, cols] = value
    return out


# --------------------------------------------------------------------------- binary iou / dice


def test_half_overlapping_squares() -> None:
    # two 4x4 squares, the second shifted right by 2: intersection 8, union 24, sizes 16 + 16
    a = _box((8, 8), slice(0, 4), slice(0, 4))
    b = _box((8, 8), slice(0, 4), slice(2, 6))
    assert iou(a, b) == pytest.approx(8 / 24)
    assert dice(a, b) == pytest.approx(16 / 32)


def test_identical_disjoint_and_empty_masks() -> None:
    a = _box((8, 8), slice(0, 4), slice(0, 4)).astype(bool)
    far = _box((8, 8), slice(5, 8), slice(5, 8), value=255)  # any non-zero value is foreground
    empty = np.zeros((8, 8), dtype=bool)
    assert iou(a, a) == 1.0 and dice(a, a) == 1.0
    assert iou(a, far) == 0.0 and dice(a, far) == 0.0
    assert iou(empty, empty) == 1.0 and dice(empty, empty) == 1.0
    assert iou(a, empty) == 0.0 and dice(empty, a) == 0.0


# --------------------------------------------------------------------------- boundary iou


def test_boundary_iou_shifted_square_exact() -> None:
    # 100x100 image: diagonal 141.42, d = round(0.02 * 141.42) = 3.
    # A = rows/cols [20, 60) (40x40), B = A shifted right by one column.
    # Band = square minus its 34x34 interior: 1600 - 1156 = 444 pixels each.
    # Band intersection = (A & B: 40x39 = 1560) minus (interiors' union: 34 rows x 35 cols = 1190) = 370.
    # Boundary IoU = 370 / (444 + 444 - 370) = 370 / 518 = 5/7; plain IoU = 1560 / 1640 = 39/41.
    a = _box((100, 100), slice(20, 60), slice(20, 60))
    b = _box((100, 100), slice(20, 60), slice(21, 61))
    assert iou(a, b) == pytest.approx(39 / 41)
    assert boundary_iou(a, b) == pytest.approx(5 / 7)
    assert 0 < boundary_iou(a, b) < iou(a, b)
    # with d = 1 (dilation_ratio 0 -> max(1, 0)): bands of 156 pixels, interiors' union 38 x 39 = 1482,
    # intersection 1560 - 1482 = 78, boundary IoU = 78 / (312 - 78) = 1/3
    assert boundary_iou(a, b, dilation_ratio=0.0) == pytest.approx(1 / 3)


def test_boundary_iou_ignores_interior() -> None:
    # 10x10 image, d = max(1, round(0.28)) = 1. A 6x6 square and the 4x4 square nested inside it
    # have disjoint one-pixel rings, so boundary IoU is 0 although plain IoU is 16/36.
    outer = _box((10, 10), slice(2, 8), slice(2, 8))
    inner = _box((10, 10), slice(3, 7), slice(3, 7))
    assert iou(outer, inner) == pytest.approx(16 / 36)
    assert boundary_iou(outer, inner) == 0.0
    assert boundary_iou(outer, outer) == 1.0
    empty = np.zeros((10, 10), dtype=bool)
    assert boundary_iou(empty, empty) == 1.0
    assert boundary_iou(outer, empty) == 0.0


def test_boundary_iou_counts_image_border_as_background() -> None:
    # 10x10, d = 1. Full image: band = outer ring, 36 pixels. Left half (cols 0-4): band = rows 0 and 9
    # (5 + 5) plus cols 0 and 4 on rows 1-8 (8 + 8) = 26. Shared: row 0 and row 9 of the half (10) plus
    # col 0 on rows 1-8 (8) = 18. Boundary IoU = 18 / (36 + 26 - 18) = 18/44.
    full = np.ones((10, 10), dtype=bool)
    half = _box((10, 10), slice(0, 10), slice(0, 5))
    assert boundary_iou(full, half) == pytest.approx(18 / 44)


# --------------------------------------------------------------------------- semantic metrics

# class 0: pred {(0,0),(1,2)}, target {(0,0),(0,1)}        -> inter 1, union 3, sizes 2+2
# class 1: pred {(0,1),(0,2),(1,0)}, target {(0,2),(1,0)}  -> inter 2, union 3, sizes 3+2
# class 2: pred {(1,1)}, target {(1,1),(1,2)}              -> inter 1, union 2, sizes 1+2
SEM_TARGET = np.array([[0, 0, 1], [1, 2, 2]])
SEM_PRED = np.array([[0, 1, 1], [1, 2, 0]])
SEM_IOU = {0: 1 / 3, 1: 2 / 3, 2: 1 / 2}
SEM_DICE = {0: 2 / 4, 1: 4 / 5, 2: 2 / 3}


def test_per_class_iou_and_dice() -> None:
    assert per_class_iou(SEM_PRED, SEM_TARGET) == pytest.approx(SEM_IOU)
    assert per_class_dice(SEM_PRED, SEM_TARGET) == pytest.approx(SEM_DICE)
    assert mean_iou(SEM_PRED, SEM_TARGET) == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert mean_iou(SEM_PRED, SEM_TARGET, ignore_background=True) == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert per_class_iou(SEM_PRED, SEM_TARGET, ignore_background=True) == pytest.approx({1: 2 / 3, 2: 1 / 2})


def test_absent_classes_are_left_out() -> None:
    # classes 3 and 4 appear in neither image: not reported, not counted as 1.0 in the mean
    assert per_class_iou(SEM_PRED, SEM_TARGET, num_classes=5) == pytest.approx(SEM_IOU)
    assert mean_iou(SEM_PRED, SEM_TARGET, num_classes=5) == pytest.approx(1 / 2)
    # class 3 only in the prediction: IoU 0 and it does count
    pred = SEM_PRED.copy()
    pred[0, 0] = 3  # class 0 now: pred {(1,2)}, target {(0,0),(0,1)} -> 0
    assert per_class_iou(pred, SEM_TARGET) == pytest.approx({0: 0.0, 1: 2 / 3, 2: 1 / 2, 3: 0.0})
    background = np.zeros((2, 2), dtype=np.uint8)
    assert per_class_iou(background, background, ignore_background=True) == {}
    assert mean_iou(background, background, ignore_background=True) == 1.0


def test_per_class_boundary_iou_tiny_image_equals_iou() -> None:
    # in a 2x3 image every pixel touches the image border, so each band is the whole class mask
    assert per_class_boundary_iou(SEM_PRED, SEM_TARGET) == pytest.approx(SEM_IOU)


def test_per_class_boundary_iou_large_image() -> None:
    # class 1 = the shifted 40x40 squares from test_boundary_iou_shifted_square_exact (-> 5/7)
    pred = _box((100, 100), slice(20, 60), slice(20, 60))
    target = _box((100, 100), slice(20, 60), slice(21, 61))
    assert per_class_boundary_iou(pred, target, ignore_background=True) == pytest.approx({1: 5 / 7})


def test_label_out_of_range_for_num_classes() -> None:
    with pytest.raises(ValueError, match="num_classes=2"):
        per_class_iou(SEM_PRED, SEM_TARGET, num_classes=2)


# --------------------------------------------------------------------------- instance matching


def _three_objects() -> tuple[np.ndarray, np.ndarray]:
    # truth: T1 2x2 (4 px), T2 2x4 (8 px), T3 2x2 (4 px), ids deliberately not consecutive
    true = np.zeros((10, 10), dtype=np.uint16)
    true[0:2, 0:2] = 1
    true[0:2, 4:8] = 7
    true[6:8, 6:8] = 3
    # prediction: P1 == T1 (IoU 1), P2 covers half of T2 plus 4 px outside (IoU 4 / 12 = 1/3); T3 missed
    pred = np.zeros((10, 10), dtype=np.int64)
    pred[0:2, 0:2] = 40
    pred[0:2, 6:10] = 2
    return pred, true


def test_match_instances_hand_computed() -> None:
    pred, true = _three_objects()
    scores = match_instances(pred, true, threshold=0.5)
    # at 0.5 only the perfect pair counts: precision 1/2, recall 1/3, f1 = 2 * 1 / (2 + 3) = 2/5
    assert (scores.n_true, scores.n_pred, scores.n_matched) == (3, 2, 1)
    assert scores.precision == pytest.approx(1 / 2)
    assert scores.recall == pytest.approx(1 / 3)
    assert scores.f1 == pytest.approx(2 / 5)
    assert scores.mean_matched_iou == pytest.approx((1 + 1 / 3) / 2)
    assert scores.mean_true_iou == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert scores.threshold == 0.5

    # at 0.3 the half-overlap pair counts too: precision 1, recall 2/3, f1 = 4/5; mean IoUs unchanged
    low = match_instances(pred, true, threshold=0.3)
    assert low.n_matched == 2
    assert (low.precision, low.recall, low.f1) == pytest.approx((1.0, 2 / 3, 4 / 5))
    assert low.mean_true_iou == pytest.approx(4 / 9)


def test_match_instances_is_one_to_one() -> None:
    # one prediction spanning two touching true objects (4 px and 8 px): IoUs 4/12 and 8/12;
    # it may be matched to only one of them, the larger.
    true = np.zeros((4, 8), dtype=np.int32)
    true[0:2, 0:2] = 1
    true[0:2, 2:6] = 2
    pred = (true > 0).astype(np.int32)
    scores = match_instances(pred, true)
    assert scores.n_matched == 1
    assert scores.mean_matched_iou == pytest.approx(2 / 3)
    assert scores.mean_true_iou == pytest.approx((0 + 2 / 3) / 2)
    assert (scores.precision, scores.recall) == pytest.approx((1.0, 1 / 2))


def test_match_instances_ignores_zero_iou_pairs() -> None:
    # one perfect pair plus a false positive and a false negative that do not touch: the assignment
    # pairs them up with IoU 0, which must not count as a match nor pull mean_matched_iou down to 1/2.
    true = np.zeros((6, 6), dtype=np.int32)
    true[0:2, 0:2] = 1
    true[4:6, 4:6] = 2
    pred = np.zeros((6, 6), dtype=np.int32)
    pred[0:2, 0:2] = 1
    pred[0:2, 4:6] = 2
    scores = match_instances(pred, true)
    assert scores.n_matched == 1
    assert scores.mean_matched_iou == pytest.approx(1.0)
    assert scores.mean_true_iou == pytest.approx(1 / 2)
    assert (scores.precision, scores.recall, scores.f1) == pytest.approx((1 / 2, 1 / 2, 1 / 2))


def test_match_instances_without_background() -> None:
    # every pixel belongs to an object, with different ids in the two images
    scores = match_instances(np.full((3, 3), 9), np.full((3, 3), 4))
    assert scores == InstanceScores(1.0, 1.0, 1.0, 1.0, 1.0, 1, 1, 1, 0.5)


def test_match_instances_empty_inputs() -> None:
    empty = np.zeros((5, 5), dtype=np.int32)
    objects = _three_objects()[1][:5, :5]  # T1 and T2 only
    assert match_instances(empty, empty) == InstanceScores(1.0, 1.0, 1.0, 1.0, 1.0, 0, 0, 0, 0.5)
    assert match_instances(empty, objects) == InstanceScores(0.0, 0.0, 0.0, 0.0, 0.0, 2, 0, 0, 0.5)
    assert match_instances(objects, empty) == InstanceScores(0.0, 0.0, 0.0, 0.0, 0.0, 0, 2, 0, 0.5)


# --------------------------------------------------------------------------- input validation


@pytest.mark.parametrize("fn", [iou, dice, boundary_iou, per_class_iou, mean_iou, match_instances])
def test_shape_mismatch_names_both_shapes(fn) -> None:
    with pytest.raises(ValueError, match=r"prediction has shape \(4, 4\) but target has \(4, 5\)"):
        fn(np.zeros((4, 4), dtype=int), np.zeros((4, 5), dtype=int))


@pytest.mark.parametrize("fn", [per_class_iou, match_instances])
def test_label_images_reject_non_integer_floats(fn) -> None:
    labels = np.zeros((3, 3), dtype=int)
    probs = np.full((3, 3), 0.7)
    with pytest.raises(ValueError, match="integer label image"):
        fn(probs, labels)
    with pytest.raises(ValueError, match="NaN"):
        fn(labels, np.full((3, 3), np.nan))
    with pytest.raises(ValueError, match=">= 0"):
        fn(labels - 1, labels)
    # whole-number floats are accepted as labels
    fn(labels.astype(np.float32), labels)


def test_binary_mask_rejects_nan() -> None:
    with pytest.raises(ValueError, match="NaN"):
        iou(np.full((2, 2), np.nan), np.ones((2, 2)))


def test_threshold_out_of_range() -> None:
    with pytest.raises(ValueError, match="threshold"):
        match_instances(np.zeros((2, 2), dtype=int), np.zeros((2, 2), dtype=int), threshold=0.0)
