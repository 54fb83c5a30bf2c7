"""The Segmenter facade (points, boxes, planes of a stack) and painting masks into a label image."""

from __future__ import annotations

import numpy as np
import pytest

from napari_samtune.core.predictor import ObjectPrompt, PromptError
from napari_samtune.core.segmenter import Segmenter, masks_to_labels

STACK = np.random.default_rng(0).random((3, 50, 40)).astype(np.float32)


@pytest.fixture
def segmenter(tiny_model, tmp_path) -> Segmenter:
    segmenter = Segmenter(tiny_model, cache_root=tmp_path)
    segmenter.set_image(STACK[0])
    return segmenter


def assert_same(a, b):
    assert np.array_equal(a.masks, b.masks)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)


def test_one_object_per_positive_point_with_the_negatives_shared(segmenter):
    points = np.array([[10, 10], [30, 20], [40, 30], [5, 35]])
    got = segmenter.segment_points(points, labels=np.array([1, 0, 1, 0]))
    negatives = np.array([[30, 20], [5, 35]])
    expected = segmenter.segment(
        [
            ObjectPrompt(points=np.array([[10, 10], *negatives]), labels=np.array([1, 0, 0])),
            ObjectPrompt(points=np.array([[40, 30], *negatives]), labels=np.array([1, 0, 0])),
        ]
    )
    assert got.masks.shape == (2, 50, 40)
    assert_same(got, expected)
    assert segmenter.segment_points(points).masks.shape == (4, 50, 40)  # all positive by default


def test_only_negative_points_give_no_object(segmenter):
    with pytest.raises(PromptError, match="no prompts given"):
        segmenter.segment_points(np.array([[10, 10]]), labels=np.array([0]))


@pytest.mark.parametrize("labels", [[1, 2], [1, 0, 1], [1]])
def test_point_labels_must_be_one_0_or_1_per_point(segmenter, labels):
    with pytest.raises(PromptError, match=rf"one label per point.*got \[{labels[0]}.* for 2 points"):
        segmenter.segment_points(np.array([[10, 10], [20, 20]]), labels=np.array(labels))


def test_one_object_per_box(segmenter):
    boxes = np.array([[5, 5, 20, 30], [25, 10, 45, 35]])
    got = segmenter.segment_boxes(boxes)
    assert got.masks.shape == (2, 50, 40)
    assert_same(got, segmenter.segment([ObjectPrompt(box=b) for b in boxes]))


def test_prompting_before_an_image_is_set_says_so(tiny_model):
    with pytest.raises(PromptError, match=r"no image set: call set_image\(image\) first"):
        Segmenter(tiny_model, cache_root=False).segment_points(np.array([[1, 1]]))


def test_stack_planes_are_encoded_once_and_prompted_separately(tiny_model, tmp_path):
    segmenter = Segmenter(tiny_model, cache_root=tmp_path)
    segmenter.set_image(STACK)
    assert segmenter.n_planes == 3 and segmenter.plane_shape == (50, 40)
    assert not segmenter.is_encoded(1)
    assert [e["plane"] for e in segmenter.encode()] == [0, 1, 2]
    assert all(segmenter.is_encoded(i) for i in range(3))
    prompt = [ObjectPrompt(points=np.array([[25, 20]]))]
    on_plane_1 = segmenter.segment(prompt, plane=1, return_logits=True)
    alone = Segmenter(tiny_model, cache_root=False)
    alone.set_image(STACK)  # the same stack, so the same global intensity mapping
    assert_same(on_plane_1, alone.segment(prompt, plane=1))
    assert not np.array_equal(on_plane_1.logits, segmenter.segment(prompt, plane=0, return_logits=True).logits)


def test_set_image_passes_the_channel_options_on(tiny_model):
    segmenter = Segmenter(tiny_model, cache_root=False)
    segmenter.set_image(np.moveaxis(STACK, 0, -1), channel_axis=-1, channel=2)
    assert segmenter.n_planes == 1 and np.array_equal(segmenter.store.volume.planes[0], STACK[2])


def test_masks_become_new_labels_after_the_existing_ones():
    labels = np.zeros((6, 6), np.uint16)
    labels[0, 0], labels[5, 5] = 3, 5
    before = labels.copy()
    masks = np.zeros((2, 6, 6), bool)
    masks[0, 1:4, 1:4] = True
    masks[1, 3:5, 3:5] = True
    out = masks_to_labels(masks, labels)
    assert np.array_equal(labels, before)  # the input is not modified
    assert out.dtype == np.uint16 and out[0, 0] == 3 and out[5, 5] == 5
    assert out[1, 1] == 6 and out[3, 3] == 7 and out[4, 4] == 7  # the later mask is painted on top
    assert (out > 0).sum() == 2 + 9 + 4 - 1
    fresh = masks_to_labels(masks)
    assert fresh.dtype == np.int32 and sorted(np.unique(fresh)) == [0, 1, 2]
    assert sorted(np.unique(masks_to_labels(masks, labels, start=10))) == [0, 3, 5, 10, 11]


def test_an_object_larger_than_a_tile_is_decoded_on_the_whole_plane():
    import torch

    from napari_samtune.core.metrics import iou

    torch.set_num_threads(1)
    yy, xx = np.mgrid[:768, :768]
    disc = (yy - 400) ** 2 + (xx - 370) ** 2 < 260**2  # 520 px across: no 256 px tile holds it
    image = (np.where(disc, 200, 40) + np.random.default_rng(0).normal(0, 8, disc.shape)).clip(0, 255)
    segmenter = Segmenter("samtune_small", cache_root=False)
    segmenter.set_image(image.astype(np.uint8))
    rows, cols = np.nonzero(disc)
    box = np.array([rows.min(), cols.min(), rows.max(), cols.max()])
    tiled = segmenter.predictor.predict(segmenter.store.plane(0), [ObjectPrompt(box=box)])
    whole = segmenter.segment_boxes(box[None])
    assert iou(tiled.masks[0], disc) < 0.1  # cut by its tile: measured 0.00
    # What the model gets with the whole image resized to its input: measured 0.73 with samtune_small v1, 0.63 with the
    # interim v2 (step 1,025). The 0.8 of issue 14 is a quality target of the bundled model, tracked in benchmarks.
    assert whole.tile_index[0] == -1 and iou(whole.masks[0], disc) >= 0.6
