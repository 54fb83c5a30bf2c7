"""Training data: label checks and their messages, 0/255 masks, stacks, the validation split, task detection."""

from __future__ import annotations

import numpy as np
import pytest

from napari_samtune.core.training.data import DataError, Item, instances_of, prepare_training_data, split_items

IMAGE = np.random.default_rng(0).random((32, 40)).astype(np.float32)


def squares(shape=(32, 40), boxes=((2, 2, 10, 10), (15, 20, 25, 30)), values=None) -> np.ndarray:
    labels = np.zeros(shape, np.int32)
    for i, (r0, c0, r1, c1) in enumerate(boxes):
        labels[r0:r1, c0:c1] = values[i] if values is not None else i + 1
    return labels


def test_shape_mismatch_names_both_shapes_and_the_image():
    with pytest.raises(DataError, match=r"labels of 'nuclei' have shape \(40, 32\) but the image has \(32, 40\)"):
        prepare_training_data([IMAGE], [np.ones((40, 32), int)], names=["'nuclei'"])


def test_one_label_image_per_image():
    with pytest.raises(DataError, match="got 2 images but 1 label images"):
        prepare_training_data([IMAGE, IMAGE], [squares()])


def test_all_zero_labels_ask_to_paint_an_object():
    with pytest.raises(DataError, match="paint at least one object"):
        prepare_training_data([IMAGE], [np.zeros((32, 40), np.uint16)])
    stack = np.stack([IMAGE] * 3)
    with pytest.raises(DataError, match="paint at least one object"):
        prepare_training_data([stack], [np.zeros((3, 32, 40), np.int32)])


@pytest.mark.parametrize("bad", [0.5, np.nan, np.inf], ids=["fraction", "nan", "inf"])
def test_float_labels_must_hold_whole_finite_numbers(bad):
    labels = squares().astype(np.float32)
    labels[0, 0] = bad
    with pytest.raises(DataError, match=r"non-integer or NaN values.*threshold probabilities first"):
        prepare_training_data([IMAGE], [labels])


def test_float_labels_with_whole_numbers_become_integer_ids():
    data = prepare_training_data([IMAGE], [squares().astype(np.float64)], validation_fraction=0.5)
    item = data.train[0]
    assert item.labels.dtype == np.int32
    # One image: its objects are shared between training and a held-out block for validation.
    np.testing.assert_array_equal(item.labels + data.validation[0].labels, squares())


def test_negative_labels_are_refused():
    labels = squares()
    labels[0, 0] = -1
    with pytest.raises(DataError, match="negative values"):
        prepare_training_data([IMAGE], [labels])


def test_non_numeric_labels_are_refused():
    with pytest.raises(DataError, match="dtype <U1: labels must be integer ids"):
        prepare_training_data([IMAGE], [np.full((32, 40), "a")])


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.float32])
def test_0_255_masks_become_0_1(dtype):
    mask = (squares() > 0).astype(dtype) * 255
    data = prepare_training_data([IMAGE], [mask])
    (item,), (held_out,) = data.train, data.validation
    np.testing.assert_array_equal(item.labels | held_out.labels, squares() > 0)
    assert set(np.unique(item.labels)) == {0, 1}
    assert data.task == "semantic" and data.classes == (1,)


def test_bool_masks_are_one_class():
    data = prepare_training_data([IMAGE], [squares() > 0])
    assert data.train[0].labels.dtype == np.int32 and data.classes == (1,)


def test_a_stack_gives_one_item_per_labeled_plane():
    stack = np.stack([IMAGE] * 5)
    labels = np.zeros((5, 32, 40), np.int32)
    for z in (0, 2, 3):
        labels[z] = squares()
    data = prepare_training_data([stack], [labels], validation_fraction=0.34, seed=1)
    items = data.train + data.validation
    assert sorted(it.plane for it in items) == [0, 2, 3]
    assert all(it.image == 0 for it in items)
    assert len(data.validation) == 1 and len(data.train) == 2
    for it in items:
        np.testing.assert_array_equal(it.labels, labels[it.plane])
    with pytest.raises(DataError, match=r"have shape \(4, 32, 40\) but the image has \(5, 32, 40\)"):
        prepare_training_data([stack], [labels[:4]])


def _split_ids(data) -> tuple[list, list]:
    return [(it.image, it.plane) for it in data.train], [(it.image, it.plane) for it in data.validation]


def test_validation_split_is_deterministic_by_seed_and_disjoint():
    images = [IMAGE] * 8
    labels = [squares()] * 8
    a = _split_ids(prepare_training_data(images, labels, validation_fraction=0.25, seed=3))
    b = _split_ids(prepare_training_data(images, labels, validation_fraction=0.25, seed=3))
    assert a == b
    train, val = a
    assert len(val) == 2 and len(train) == 6
    assert not set(train) & set(val)
    assert sorted(train + val) == [(i, 0) for i in range(8)]
    others = {tuple(_split_ids(prepare_training_data(images, labels, seed=s))[1]) for s in range(6)}
    assert len(others) > 1  # the seed matters


def test_split_keeps_at_least_one_item_on_each_side():
    items = [Item(i, 0, squares()) for i in range(3)]
    train, val = split_items(items, 0.01, 0)
    assert len(val) == 1 and len(train) == 2
    train, val = split_items(items, 0.99, 0)
    assert len(val) == 2 and len(train) == 1
    single = [Item(0, 0, squares(boxes=((2, 2, 10, 10),)))]  # one object cannot be split in space
    assert split_items(single, 0.25, 0) == (single, single)


def test_task_detection():
    # Distinct ids, each one object: instances.
    data = prepare_training_data([IMAGE], [squares()])
    assert data.task == "instances" and data.classes == (1,)
    # One value (a binary mask): one semantic class.
    data = prepare_training_data([IMAGE], [(squares() > 0).astype(np.uint8)])
    assert data.task == "semantic" and data.classes == (1,)
    # Few values that each come in several pieces: classes.
    classes = squares(boxes=((1, 1, 5, 5), (1, 10, 5, 15), (10, 1, 15, 5), (10, 10, 15, 15)), values=(1, 1, 2, 2))
    data = prepare_training_data([IMAGE], [classes])
    assert data.task == "semantic" and data.classes == (1, 2)
    # More than 16 ids: instances even if some are split.
    many = np.zeros((32, 40), np.int32)
    for i in range(20):
        many[(i // 8) * 8 : (i // 8) * 8 + 3, (i % 8) * 5 : (i % 8) * 5 + 3] = i + 1
    assert prepare_training_data([IMAGE], [many]).task == "instances"
    # Every labeled plane counts: a first image with a single object does not make an instance data set semantic.
    one = squares(boxes=((2, 2, 10, 10),))
    data = prepare_training_data([IMAGE, IMAGE], [one, squares(boxes=((0, 0, 4, 4), (6, 6, 9, 9), (20, 20, 30, 30)))])
    assert data.task == "instances" and data.classes == (1,)
    # An explicit task wins, and an unknown one is refused.
    assert prepare_training_data([IMAGE], [squares()], task="semantic").classes == (1, 2)
    with pytest.raises(DataError, match="task must be 'instances', 'semantic' or 'auto'"):
        prepare_training_data([IMAGE], [squares()], task="panoptic")


def test_instances_of_semantic_labels_are_connected_components_per_class():
    # Class 1 in two separate squares, class 2 in one square touching a class-1 square, and a 4-pixel speck.
    labels = squares(boxes=((0, 0, 5, 5), (10, 10, 15, 15), (0, 5, 5, 10), (20, 20, 22, 22)), values=(1, 1, 2, 2))
    instances, ids = instances_of(labels, "semantic")
    assert instances.max() == 4 and len(ids) == 3  # the speck is below min_area
    pieces = [instances[0, 0], instances[10, 10], instances[0, 5]]
    assert len(set(pieces)) == 3 and sorted(ids) == sorted(int(p) for p in pieces)
    for piece, (r0, c0, r1, c1) in zip(pieces, ((0, 0, 5, 5), (10, 10, 15, 15), (0, 5, 5, 10))):
        expected = np.zeros_like(labels, bool)
        expected[r0:r1, c0:c1] = True
        np.testing.assert_array_equal(instances == piece, expected)
    _, all_ids = instances_of(labels, "semantic", min_area=1)
    assert len(all_ids) == 4


def test_instances_of_instance_labels_keeps_the_ids():
    labels = squares(boxes=((0, 0, 5, 5), (10, 10, 12, 12), (20, 20, 30, 30)), values=(7, 3, 9))
    instances, ids = instances_of(labels, "instances")
    assert instances is labels
    assert ids == [7, 9]  # id 3 has 4 pixels < min_area 10


def test_summary_counts_objects_of_the_training_items():
    data = prepare_training_data([IMAGE] * 4, [squares()] * 4, validation_fraction=0.25)
    assert data.summary() == {
        "images": 4,
        "train_items": 3,
        "validation_items": 1,
        "task": "instances",
        "classes": [1],
        "unlabeled_images": 0,
        "objects": 6,
    }


def test_chosen_classes_are_learned_as_semantic_classes_and_the_rest_is_background():
    labels = squares(boxes=((2, 2, 10, 10), (15, 20, 25, 30), (26, 0, 30, 8)), values=(1, 4, 7))
    only_one = squares(boxes=((2, 2, 10, 10),), values=(7,))  # holds none of the chosen classes: kept, not refused
    data = prepare_training_data([IMAGE, IMAGE], [labels, only_one], classes=[4, 1], validation_fraction=0.5)
    assert data.task == "semantic" and data.classes == (1, 4)
    # The second image has no chosen class left, so no item; the single item is split in space.
    assert [it.image for it in data.train] == [it.image for it in data.validation] == [0]
    np.testing.assert_array_equal(data.train[0].labels + data.validation[0].labels, np.where(labels == 7, 0, labels))


@pytest.mark.parametrize(
    ("classes", "message"),
    [([1, 9], r"class value\(s\) \[9\] occur in no label image"), ([0, 1], "classes must be positive label values")],
)
def test_chosen_classes_must_be_positive_and_present(classes, message):
    with pytest.raises(DataError, match=message):
        prepare_training_data([IMAGE], [squares()], classes=classes)
