"""Prompt-free instance segmentation (``segment_instances``): which click masks become objects, how overlaps are
resolved, the click grid, and ``segment_without_prompts`` over a stack with and without learned prompts."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from napari_samtune.core.automatic import (
    InstanceSettings,
    click_grid,
    segment_automatic,
    segment_instances,
    segment_without_prompts,
)
from napari_samtune.core.embeddings import PlaneEmbedding
from napari_samtune.core.jobs import drive
from napari_samtune.core.predictor import Prediction
from napari_samtune.core.segmenter import Segmenter

SHAPE = (40, 40)


def box(r0: int, c0: int, r1: int, c1: int) -> np.ndarray:
    mask = np.zeros(SHAPE, bool)
    mask[r0:r1, c0:c1] = True
    return mask


# What the i-th click of the grid gets back: (mask, predicted IoU, logit magnitude); later clicks get the background.
BIG, SMALL_INSIDE, CORNER, PART_OF_K = box(0, 0, 24, 24), box(8, 8, 14, 14), box(28, 28, 38, 38), box(30, 12, 36, 16)
ANSWERS = [
    (box(0, 0, 40, 38), 0.99, 4.0),  # 95 % of the plane: background, too large
    (SMALL_INSIDE, 0.95, 4.0),
    (CORNER, 0.92, 4.0),
    (box(28, 29, 38, 38), 0.85, 4.0),  # IoU 0.9 with CORNER, which scores better: a duplicate
    (BIG, 0.90, 4.0),
    (box(2, 30, 8, 38), 0.50, 4.0),  # predicted IoU below 0.7
    (box(12, 30, 20, 38), 0.90, 0.5),  # logits within ±1: stability 0
    (box(38, 0, 40, 3), 0.90, 4.0),  # 6 pixels, below min_area
    (box(30, 12, 36, 18), 0.80, 4.0),  # K: kept (IoU 0.67 with the next), but the next covers all but 12 px of it
    (PART_OF_K, 0.75, 4.0),
]


class AnsweringPredictor:
    """Stands in for ``Predictor``: answers click number i (in grid order) with ``ANSWERS[i]``."""

    def __init__(self) -> None:
        self.clicks: list[np.ndarray] = []
        self.model = SimpleNamespace(metadata={})  # no calibrated thresholds: the defaults apply

    def predict(self, embedding, prompts, *, return_logits=False, **kwargs) -> Prediction:
        assert return_logits and all(len(p.points) == 1 and p.labels is None for p in prompts)
        first = len(self.clicks)
        self.clicks += [p.points[0] for p in prompts]
        answers = [ANSWERS[i] if i < len(ANSWERS) else ANSWERS[0] for i in range(first, first + len(prompts))]
        logits = np.stack([np.where(mask, size, -size) for mask, _, size in answers]).astype(np.float32)
        return Prediction(
            masks=logits > 0,
            scores=np.array([score for _, score, _ in answers], np.float32),
            tile_index=np.zeros(len(prompts), int),
            low_res_logits=torch.zeros(len(prompts), 1, 4, 4),
            logits=logits,
        )


def plane_embedding(shape=SHAPE, tiles=None, scale=None, input_size=64) -> PlaneEmbedding:
    tiles = np.array([[0, 0, *shape]]) if tiles is None else tiles
    scale = input_size / max(shape) if scale is None else scale
    return PlaneEmbedding(torch.zeros(len(tiles), 1, 1, 1), tiles, scale, shape, input_size)


def test_objects_are_confident_stable_sized_non_duplicate_masks_painted_largest_first():
    predictor = AnsweringPredictor()
    labels = segment_instances(predictor, plane_embedding(), InstanceSettings(points_per_side=8))
    assert len(predictor.clicks) == 64  # an 8 × 8 grid over the (untiled) plane
    expected = np.zeros(SHAPE, np.int32)
    expected[BIG] = 3  # ids follow the predicted IoU: SMALL_INSIDE 0.95, CORNER 0.92, BIG 0.90, PART_OF_K 0.75
    expected[CORNER] = 2
    expected[SMALL_INSIDE] = 1  # painted after the larger BIG, so it stays visible inside it
    expected[PART_OF_K] = 4  # K itself kept only 12 visible pixels (< min_area 16) and was dropped
    np.testing.assert_array_equal(labels, expected)
    assert labels.dtype == np.int32


def test_thresholds_decide_which_masks_pass():
    lenient = InstanceSettings(points_per_side=8, min_score=0.4, min_stability=0.0, min_area=4, max_area_fraction=1.0)
    labels = segment_instances(AnsweringPredictor(), plane_embedding(), lenient)
    # Every mask but CORNER's duplicate passes now; the background mask (best score) is object 1, and the others sit
    # on top of it where they are visible.
    assert set(np.unique(labels)) == set(range(10))
    assert labels[:, :38].all() and not labels[:, 38:].any()
    assert np.all(labels[box(2, 30, 8, 38)] == labels[3, 31]) and labels[3, 31] not in (0, 1)


def test_click_grid_spacing_follows_the_encoder_tile():
    untiled = click_grid(plane_embedding((30, 60)), 4)  # resized: one tile side = the plane's long side (60 px)
    assert sorted(set(untiled[:, 1])) == [7.5, 22.5, 37.5, 52.5] and sorted(set(untiled[:, 0])) == [7.5, 22.5]
    tiles = np.array([[0, 0, 64, 64], [0, 36, 64, 100]])
    tiled = click_grid(plane_embedding((64, 100), tiles=tiles, scale=1.0), 8)  # native resolution: about 8 px apart
    assert sorted(set(tiled[:, 0])) == [4 + 8 * i for i in range(8)]
    np.testing.assert_allclose(sorted(set(tiled[:, 1])), (np.arange(12) + 0.5) * 100 / 12)  # 12 cells of 8.33 px


def test_segment_without_prompts_labels_every_plane_of_a_stack(tiny_model):
    stack = (np.random.default_rng(0).random((2, 48, 56)) * 255).astype(np.uint8)
    segmenter = Segmenter(tiny_model, cache_root=False)
    segmenter.set_image(stack)
    settings = InstanceSettings(points_per_side=4, min_score=0, min_stability=0, max_area_fraction=1.0)

    def run(job):
        events = []
        return events, drive(job, events.append)

    events, labels = run(segment_without_prompts(segmenter, settings))
    assert [e["done"] for e in events] == [1, 2] and labels.shape == stack.shape and labels.dtype == np.int32
    for z in range(2):
        np.testing.assert_array_equal(
            labels[z], segment_instances(segmenter.predictor, segmenter.store.plane(z), settings)
        )
    assert labels.any()

    tiny_model.prompt_embeddings = torch.randn(2, 4, 32, generator=torch.Generator().manual_seed(0))
    tiny_model.classes = (3, 5)
    _, classes = run(segment_without_prompts(segmenter, settings))
    for z in range(2):
        np.testing.assert_array_equal(classes[z], segment_automatic(tiny_model, segmenter.store.plane(z)).labels)
    assert set(np.unique(classes)) <= {0, 3, 5}

    stopped = run(segment_without_prompts(segmenter, settings, should_stop=lambda: True))
    assert stopped == ([], None)


def test_unset_thresholds_come_from_the_models_calibration():
    calibrated = SimpleNamespace(metadata={"automatic": {"min_score": 0.31, "min_stability": 0.42}})
    assert InstanceSettings().for_model(calibrated) == InstanceSettings(min_score=0.31, min_stability=0.42)
    assert InstanceSettings(min_score=0.9).for_model(calibrated).min_score == 0.9, "a value given by the user wins"
    plain = InstanceSettings().for_model(SimpleNamespace(metadata={}))
    assert (plain.min_score, plain.min_stability) == (0.7, 0.8)
