"""The demo's measurements (the session itself runs with `make demo`)."""

from __future__ import annotations

import numpy as np

from napari_samtune.demo import SPLIT, clicks_on_objects, foreground_iou


def test_clicks_land_inside_the_largest_objects():
    truth = np.zeros((40, 40), np.int32)
    truth[2:6, 2:6] = 1  # 16 px
    truth[10:30, 10:20] = 2  # 200 px
    truth[32:38, 30:39] = 3  # 54 px
    ids, points = clicks_on_objects(truth, 2)
    assert ids == [2, 3]
    assert [truth[int(r), int(c)] for r, c in points] == [2, 3]


def test_foreground_iou_is_measured_on_each_half_separately():
    truth = np.zeros((8, 2 * SPLIT), np.int32)
    truth[:, SPLIT - 4 : SPLIT + 4] = 1
    prediction = np.zeros_like(truth)
    prediction[:, SPLIT - 4 : SPLIT] = 5  # the left half exactly, nothing on the right
    assert foreground_iou(prediction, truth) == {"unseen_right_half": 0.0, "trained_left_half": 1.0}
