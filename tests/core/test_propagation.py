"""core.propagation: following an object through a stack stops where it vanishes or jumps, without a real model."""

from __future__ import annotations

import numpy as np
import pytest

from napari_samtune.core.jobs import drive
from napari_samtune.core.propagation import PropagationSettings, prompt_from_mask, propagate


def ellipsoids(shape=(9, 64, 64)) -> np.ndarray:
    """Two objects: id 1 on planes 2-6 (largest on 4), id 2 on every plane, far from id 1."""
    z, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    labels = np.zeros(shape, np.int32)
    labels[((z - 4) / 2.6) ** 2 + ((yy - 20) / 12) ** 2 + ((xx - 20) / 12) ** 2 < 1] = 1
    labels[(yy - 48) ** 2 + (xx - 48) ** 2 < 36] = 2
    return labels


class OracleSegmenter:
    """Stands in for ``Segmenter``: the true object under the prompt's click (empty when the click is background),
    so what is tested is the walk, not a model. Records the planes it encoded and segmented."""

    def __init__(self, labels: np.ndarray) -> None:
        self.labels = labels
        self.n_planes, self.plane_shape = labels.shape[0], labels.shape[1:]
        self.encoded: list[int] = []
        self.segmented: list[int] = []

    def encode(self, planes, should_stop=lambda: False):
        self.encoded += planes
        yield {"done": 1, "total": 1}

    def segment(self, prompts, plane):
        self.segmented.append(plane)
        row, col = np.round(prompts[0].points[0]).astype(int)
        value = self.labels[plane, row, col]
        masks = (self.labels[plane] == value) & (value > 0)
        return type("Prediction", (), {"masks": masks[None]})()


def run(generator):
    events = []
    return events, drive(generator, events.append)


def test_the_walk_covers_the_object_and_stops_where_it_vanishes():
    labels = ellipsoids()
    segmenter = OracleSegmenter(labels)
    events, found = run(propagate(segmenter, labels[4] == 1, 4))
    assert sorted(found) == [2, 3, 4, 5, 6]
    for plane, mask in found.items():
        np.testing.assert_array_equal(mask, labels[plane] == 1)
    assert segmenter.segmented == [5, 6, 7, 3, 2, 1]  # one plane past each end, then it stops
    assert [e["done"] for e in events][-1] == events[-1]["total"] == 8


def test_a_mask_that_changes_too_much_ends_the_walk():
    labels = ellipsoids()
    labels[6][labels[6] == 1] = 0
    labels[6, 18:23, 5:38] = 1  # plane 6: a thin sliver through where the object was: a jump to something else
    _, found = run(propagate(OracleSegmenter(labels), labels[4] == 1, 4, PropagationSettings(min_iou=0.3)))
    assert sorted(found) == [2, 3, 4, 5]
    _, found = run(propagate(OracleSegmenter(labels), labels[4] == 1, 4, PropagationSettings(min_iou=0.0)))
    assert 6 in found  # with no limit on the change, the sliver is taken


def test_cancel_returns_none_and_stops_encoding():
    labels = ellipsoids()
    segmenter = OracleSegmenter(labels)
    asked = []

    def stop_after_two() -> bool:
        asked.append(1)
        return len(segmenter.segmented) >= 2

    _, found = run(propagate(segmenter, labels[4] == 2, 4, should_stop=stop_after_two))
    assert found is None and segmenter.segmented == [5, 6]


def test_prompt_from_mask_box_grows_and_click_is_inside():
    mask = np.zeros((40, 40), bool)
    mask[10:20, 5:35] = True
    prompt = prompt_from_mask(mask, margin=0.1)
    np.testing.assert_allclose(prompt.box, [8, 2, 21, 37])  # rows grow by 2 px (the minimum), cols by 3
    row, col = prompt.points[0].astype(int)
    assert mask[row, col] and prompt.labels.tolist() == [1.0]


def test_bad_inputs_name_the_problem():
    segmenter = OracleSegmenter(ellipsoids())
    with pytest.raises(ValueError, match="outside the stack"):
        run(propagate(segmenter, np.ones((64, 64), bool), 9))
    with pytest.raises(ValueError, match="shape"):
        run(propagate(segmenter, np.ones((10, 10), bool), 0))
    with pytest.raises(ValueError, match="fewer than min_area"):
        run(propagate(segmenter, np.zeros((64, 64), bool), 0))
    with pytest.raises(ValueError, match="min_iou"):
        PropagationSettings(min_iou=2.0)
