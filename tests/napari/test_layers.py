"""services.layers: prompts read from layers, masks written to Labels, without a viewer."""

from __future__ import annotations

import numpy as np
from napari.layers import Image, Labels

from napari_samtune.services import layers


def test_boxes_take_the_points_inside_and_each_free_positive_point_is_an_object():
    points = np.array([[10.0, 10.0], [12.0, 14.0], [50.0, 50.0], [52.0, 52.0], [90.0, 90.0], [95, 95], [80, 80]])
    positive = np.array([True, False, True, True, True, True, False])
    small, large = np.array([0.0, 0.0, 20.0, 20.0]), np.array([0.0, 0.0, 60.0, 60.0])
    prompts = layers.object_prompts(points, positive, [large, small])
    assert len(prompts) == 4
    np.testing.assert_array_equal(prompts[1].points, points[:2])  # the smallest box that holds them
    np.testing.assert_array_equal(prompts[1].labels, [1.0, 0.0])
    np.testing.assert_array_equal(prompts[0].points, points[2:4])
    for prompt, point in zip(prompts[2:], points[4:6]):  # one object per free positive point, with free negatives
        np.testing.assert_array_equal(prompt.points, [point, points[6]])
        np.testing.assert_array_equal(prompt.labels, [1.0, 0.0])
        assert prompt.box is None


def test_negative_points_alone_make_no_object():
    assert layers.object_prompts(np.array([[5.0, 5.0]]), np.array([False]), []) == []


def test_prompts_are_read_from_the_current_plane_only():
    image = Image(np.zeros((4, 32, 32), np.uint8))
    points, boxes = layers.prompt_points(image), layers.prompt_boxes(image)
    points.add([[1.0, 5.0, 6.0], [2.0, 7.0, 8.0]])
    boxes.add_rectangles(np.array([[2.0, 1.0, 1.0], [2.0, 1.0, 9.0], [2.0, 9.0, 9.0], [2.0, 9.0, 1.0]]))
    (on_one,) = layers.read_prompts(points, boxes, plane=1)
    np.testing.assert_array_equal(on_one.points, [[5.0, 6.0]])
    (on_two,) = layers.read_prompts(points, boxes, plane=2)
    np.testing.assert_array_equal(on_two.box, [1.0, 1.0, 9.0, 9.0])
    np.testing.assert_array_equal(on_two.points, [[7.0, 8.0]])
    assert layers.read_prompts(points, boxes, plane=3) == []


def test_toggle_polarity_flips_the_next_point_or_the_selection():
    points = layers.prompt_points(Image(np.zeros((32, 32), np.uint8)))
    points.add([[1.0, 1.0], [2.0, 2.0]])
    points.selected_data = set()
    layers.toggle_polarity(points)  # nothing selected: the next point
    points.add([[3.0, 3.0]])
    assert list(points.features["label"]) == ["positive", "positive", "negative"]
    points.selected_data = {0, 2}
    layers.toggle_polarity(points)
    assert list(points.features["label"]) == ["negative", "positive", "positive"]
    np.testing.assert_array_equal(points.face_color[:, :3], [[1, 0, 0], [0, 1, 0], [0, 1, 0]])


def test_paint_objects_uses_new_ids_one_undo_step_and_preserve_labels():
    labels = Labels(np.zeros((2, 8, 8), np.int32))
    labels.data[0, 0, 0] = 7
    masks = np.zeros((2, 8, 8), bool)
    masks[0, :2, :2] = True
    masks[1, 4:, 4:] = True
    assert layers.paint_objects(labels, masks, plane=1) == [8, 9]
    assert (labels.data[1, :2, :2] == 8).all() and (labels.data[1, 4:, 4:] == 9).all()
    labels.undo()
    assert labels.data.sum() == 7

    labels.preserve_labels = True
    layers.paint_objects(labels, masks, plane=0)
    assert labels.data[0, 0, 0] == 7 and labels.data[0, 1, 1] == 8
