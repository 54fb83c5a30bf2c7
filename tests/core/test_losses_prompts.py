"""Segmentation losses with hand-checked values, and the simulated user: clicks, boxes, corrective clicks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_samtune.core.training.losses import dice_loss, focal_loss, mask_losses, soft_iou
from napari_samtune.core.training.prompts import (
    corrective_click,
    interior_point,
    jittered_box,
    mask_box,
    random_click,
)

BIG = 30.0  # a logit this large is a certain prediction


def square_target(size=8, r0=2, r1=6) -> torch.Tensor:
    t = torch.zeros(1, 1, size, size)
    t[..., r0:r1, r0:r1] = 1
    return t


def test_focal_loss_hand_values():
    ln2 = math.log(2)
    zero = torch.zeros(1, 2, 1, 1)
    target = torch.tensor([1.0, 0.0]).reshape(1, 2, 1, 1)
    # p = 0.5: ce = ln 2, (1 - p_t)² = 1/4, alpha 0.25 for objects and 0.75 for background.
    np.testing.assert_allclose(focal_loss(zero, target).numpy(), [[0.25 * 0.25 * ln2, 0.75 * 0.25 * ln2]], rtol=1e-6)
    np.testing.assert_allclose(focal_loss(zero, target, alpha=-1).numpy(), [[0.25 * ln2, 0.25 * ln2]], rtol=1e-6)
    np.testing.assert_allclose(focal_loss(zero, target, gamma=0, alpha=-1).numpy(), [[ln2, ln2]], rtol=1e-6)
    target = square_target()
    perfect = (target * 2 - 1) * BIG
    assert focal_loss(perfect, target).item() < 1e-10
    assert focal_loss(-perfect, target).item() > 1.0


def test_focal_loss_averages_over_pixels_per_mask_and_weights_count():
    target = square_target()
    logits = (target * 2 - 1) * BIG
    logits[..., 0, :] = BIG  # a wrong first row
    assert focal_loss(logits, target).shape == (1, 1)
    wrong_row = focal_loss(logits[..., :1, :], target[..., :1, :]).item()
    np.testing.assert_allclose(focal_loss(logits, target).item(), wrong_row / 8, rtol=1e-5)
    weight = torch.ones_like(target)
    weight[..., 0, :] = 0
    assert focal_loss(logits, target, weight).item() < 1e-10
    only_row = 1 - weight  # only the wrong row counts: the mean is over the weighted pixels
    np.testing.assert_allclose(focal_loss(logits, target, only_row).item(), wrong_row, rtol=1e-5)


def test_dice_loss_hand_values():
    target = square_target()  # 16 object pixels
    perfect = (target * 2 - 1) * BIG
    assert dice_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    # A prediction of 16 other pixels: no overlap, 1 − (0 + 1) / (16 + 16 + 1).
    shifted = torch.roll(perfect, shifts=4, dims=-1)
    assert dice_loss(shifted, target).item() == pytest.approx(1 - 1 / 33, abs=1e-6)
    # Logits 0 everywhere: p = 1/2 on 64 pixels, 1 − (2 · 8 + 1) / (32 + 16 + 1).
    assert dice_loss(torch.zeros_like(target), target).item() == pytest.approx(1 - 17 / 49, abs=1e-6)
    # Weight zero where the prediction is wrong: that region does not count.
    extra = perfect.clone()
    extra[..., 0, :] = BIG
    assert dice_loss(extra, target).item() > 0.1
    weight = torch.ones_like(target)
    weight[..., 0, :] = 0
    assert dice_loss(extra, target, weight).item() == pytest.approx(0.0, abs=1e-6)


def test_soft_iou():
    target = square_target()
    logits = torch.stack([(target * 2 - 1) * BIG, torch.full_like(target, BIG), torch.full_like(target, -BIG)], 1)
    np.testing.assert_allclose(soft_iou(logits[:, :, 0], target).numpy(), [[1.0, 16 / 64, 0.0]])
    empty = torch.zeros(1, 1, 4, 4)
    assert soft_iou(-torch.ones_like(empty), empty).item() == 1.0  # nothing to find, nothing found


def test_mask_losses_trains_the_best_of_the_candidates_and_the_iou_head_on_all():
    target = square_target()
    perfect = (target * 2 - 1) * BIG
    candidates = torch.cat([torch.full_like(target, -BIG), torch.full_like(target, BIG), perfect], 1)
    iou_pred = torch.zeros(1, 3)
    out = mask_losses(candidates, iou_pred, target)
    assert out["best"].tolist() == [2]
    assert out["focal"].item() < 1e-10 and out["dice"].item() == pytest.approx(0.0, abs=1e-6)
    expected_mse = (0.0**2 + 0.25**2 + 1.0**2) / 3  # soft IoUs 0, 16/64, 1 against predictions 0
    assert out["iou_mse"].item() == pytest.approx(expected_mse, rel=1e-6)
    assert out["total"].item() == pytest.approx(expected_mse, abs=1e-5)
    # The best candidate moves; the choice follows it.
    out = mask_losses(candidates[:, [2, 0, 1]], iou_pred, target)
    assert out["best"].tolist() == [0]


def test_mask_losses_upsamples_low_resolution_logits_and_gives_gradients():
    target = torch.zeros(2, 1, 16, 16)
    target[:, :, 4:12, 4:12] = 1
    logits = torch.zeros(2, 3, 4, 4, requires_grad=True)
    iou = torch.full((2, 3), 0.5, requires_grad=True)
    out = mask_losses(logits, iou, target)
    assert out["best"].shape == (2,)
    out["total"].backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0 and iou.grad.abs().sum() > 0


def ring_mask(size=40) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    return (r > 8) & (r < 16)


def test_random_click_is_always_inside_and_tends_to_the_middle():
    rng = np.random.default_rng(0)
    ring = ring_mask()
    for _ in range(300):
        x, y = random_click(ring, rng)
        assert ring[int(y), int(x)] and x == int(x) and y == int(y)
    # A 21 x 41 rectangle (rows 10–30, cols 5–45): clicks sit nearer its centre than its pixels do on average.
    mask = np.zeros((40, 60), bool)
    mask[10:31, 5:46] = True
    clicks = np.array([random_click(mask, rng) for _ in range(500)])  # (x, y)
    assert mask[clicks[:, 1].astype(int), clicks[:, 0].astype(int)].all()
    ys, xs = np.nonzero(mask)
    pixel_spread = np.hypot(xs - 25, ys - 20).mean()
    click_spread = np.hypot(clicks[:, 0] - 25, clicks[:, 1] - 20).mean()
    assert click_spread < 0.8 * pixel_spread
    assert abs(clicks[:, 0].mean() - 25) < 1.5 and abs(clicks[:, 1].mean() - 20) < 1.5
    assert random_click(mask, np.random.default_rng(5)) == random_click(mask, np.random.default_rng(5))


def test_mask_box_is_x_y_and_inclusive():
    mask = np.zeros((30, 50), bool)
    mask[5:11, 20:41] = True
    np.testing.assert_array_equal(mask_box(mask), [20, 5, 40, 10])


def test_jittered_box_stays_within_the_jitter_and_the_image():
    mask = np.zeros((60, 80), bool)
    mask[10:31, 20:61] = True  # box (20, 10, 60, 30): 41 wide, 21 tall
    rng = np.random.default_rng(1)
    boxes = np.array([jittered_box(mask, rng, 0.1) for _ in range(200)])
    delta = np.abs(boxes - [20, 10, 60, 30])
    assert (delta <= np.array([41, 21, 41, 21]) * 0.1 + 1e-4).all()
    assert delta.max() > 0.5 * 4.1  # it does move
    assert boxes.dtype == np.float32
    np.testing.assert_array_equal(jittered_box(mask, rng, 0.0), [20, 10, 60, 30])
    corner = np.zeros((60, 80), bool)
    corner[:20, 60:] = True  # touches the top and right borders
    boxes = np.array([jittered_box(corner, rng, 0.3) for _ in range(100)])
    assert boxes.min() >= 0 and boxes[:, [0, 2]].max() <= 79 and boxes[:, [1, 3]].max() <= 59


def test_corrective_click_positive_in_a_miss_negative_in_an_extra():
    target = np.zeros((40, 40), bool)
    target[5:25, 5:25] = True
    assert corrective_click(target.copy(), target) is None
    # Missed the lower right quarter: a positive click inside the missed region.
    pred = target.copy()
    pred[15:25, 15:25] = False
    (x, y), label = corrective_click(pred, target)
    assert label == 1 and target[int(y), int(x)] and not pred[int(y), int(x)]
    assert (x, y) == interior_point(target & ~pred)
    # An extra blob outside the object: a negative click in it.
    pred = target.copy()
    pred[28:38, 10:30] = True
    (x, y), label = corrective_click(pred, target)
    assert label == 0 and pred[int(y), int(x)] and not target[int(y), int(x)]
    assert 28 <= y < 38 and 10 <= x < 30
    # Both: the larger error region wins (a 2-pixel-wide miss against a 10-pixel-wide extra).
    pred[5:25, 5:7] = False
    assert corrective_click(pred, target)[1] == 0
    # Nothing predicted at all: a positive click at the object's interior point.
    assert corrective_click(np.zeros_like(target), target) == (interior_point(target), 1)


def test_interior_point_is_the_distance_transform_maximum():
    mask = np.zeros((30, 40), bool)
    mask[2:11, 20:29] = True  # a 9 x 9 square centred at row 6, col 24
    assert interior_point(mask) == (24.0, 6.0)
    # A 9 x 9 square with a long thin tail: the point is in the square, not the tail's middle.
    mask = np.zeros((20, 60), bool)
    mask[5:14, 2:11] = True
    mask[9, 11:58] = True
    assert interior_point(mask) == (6.0, 9.0)
    # The image border counts as outside: a 7 x 7 mask in the corner gives its centre, not the corner.
    mask = np.zeros((9, 12), bool)
    mask[:7, :7] = True
    assert interior_point(mask) == (3.0, 3.0)


def test_clicks_on_the_bounding_box_are_exactly_those_of_the_whole_image_distance_transform():
    def deepest(mask):  # reference: the transform of the whole (padded) image
        dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        y, x = np.unravel_index(np.argmax(dist), dist.shape)
        return dist.max(), (float(x), float(y))

    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(4, 48))
        a, b = (
            ndimage.binary_dilation(rng.random((n, n)) < rng.uniform(0.002, 0.1), iterations=int(rng.integers(0, 3)))
            for _ in range(2)
        )
        assert interior_point(a) == deepest(a)[1]
        (d_missed, at_missed), (d_extra, at_extra) = deepest(b & ~a), deepest(a & ~b)
        expected = None if d_missed == d_extra == 0 else (at_missed, 1) if d_missed >= d_extra else (at_extra, 0)
        assert corrective_click(a, b) == expected
