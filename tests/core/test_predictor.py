"""Prompting: mask shapes at plane resolution, batching, prompt errors, the lone-click rule, tiled vs untiled."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_samtune.core.decoder import decode, dense_positional_encoding, pack_prompts
from napari_samtune.core.embeddings import EmbeddingStore, PlaneEmbedding, Tiling
from napari_samtune.core.image import Volume, as_volume
from napari_samtune.core.predictor import ObjectPrompt, Predictor, PromptError

from .conftest import TINY, make_model

RNG = np.random.default_rng(0)
SMALL = RNG.random((50, 40)).astype(np.float32)  # below the tiny model's 64 px input: one resized tile
LARGE = RNG.random((150, 90)).astype(np.float32)  # above it: eight overlapping 64 px tiles


def embed(model, image: np.ndarray, tiling: Tiling | None = None) -> PlaneEmbedding:
    return EmbeddingStore(model, as_volume(image), tiling=tiling, cache_root=False).plane(0)


def test_points_are_row_col(tiny_model):
    # Row 45 exists in a 50 x 40 plane, column 45 does not.
    embedding = embed(tiny_model, SMALL)
    predictor = Predictor(tiny_model)
    assert predictor.predict(embedding, [ObjectPrompt(points=np.array([[45, 5]]))]).masks.shape == (1, 50, 40)
    with pytest.raises(PromptError, match=r"point \(5.0, 45.0\) \(row, col\) is outside the image of shape \(50, 40\)"):
        predictor.predict(embedding, [ObjectPrompt(points=np.array([[5, 45]]))])


def test_a_click_anywhere_on_an_edge_pixel_is_inside(tiny_model):
    # napari puts pixel (49, 39) at 48.5..49.5 x 38.5..39.5: its outer half is in the image, beyond it is not.
    embedding = embed(tiny_model, SMALL)
    predictor = Predictor(tiny_model)
    corner = predictor.predict(embedding, [ObjectPrompt(points=np.array([[49.0, 39.0]]))], return_logits=True)
    for click in ([49.4, 39.5], [49.5, 39.2]):
        edge = predictor.predict(embedding, [ObjectPrompt(points=np.array([click]))], return_logits=True)
        np.testing.assert_array_equal(edge.logits, corner.logits)
    with pytest.raises(PromptError, match=r"point \(49.6, 39.0\) \(row, col\) is outside"):
        predictor.predict(embedding, [ObjectPrompt(points=np.array([[49.6, 39.0]]))])
    with pytest.raises(PromptError, match=r"point \(0.0, -0.6\) \(row, col\) is outside"):
        predictor.predict(embedding, [ObjectPrompt(points=np.array([[0.0, -0.6]]))])


@pytest.mark.parametrize(
    ("image", "tiling", "n_tiles"),
    [(SMALL, None, 1), (LARGE, None, 8), (LARGE, Tiling(mode="never"), 1)],
    ids=["50x40", "150x90-tiled", "150x90-resized"],
)
def test_masks_scores_and_logits_come_back_at_the_plane_resolution(tiny_model, image, tiling, n_tiles):
    h, w = image.shape
    embedding = embed(tiny_model, image, tiling)
    assert len(embedding.tiles) == n_tiles
    prompts = [
        ObjectPrompt(points=np.array([[h / 3, w / 3]])),
        ObjectPrompt(box=np.array([5, 5, h - 10, w - 10])),
        ObjectPrompt(points=np.array([[h / 2, w / 2], [h - 5, w - 5]]), labels=np.array([1, 0])),
    ]
    predictor = Predictor(tiny_model)
    plain = predictor.predict(embedding, prompts)
    assert plain.masks.shape == (3, h, w) and plain.masks.dtype == bool
    assert plain.scores.shape == (3,) and np.isfinite(plain.scores).all()
    assert plain.tile_index.shape == (3,) and plain.tile_index.max() < n_tiles
    assert plain.low_res_logits.shape == (3, 1, 32, 32) and plain.logits is None
    full = predictor.predict(embedding, prompts, return_logits=True)
    assert full.logits.shape == (3, h, w) and full.logits.dtype == np.float32
    assert np.array_equal(full.masks, plain.masks) and np.array_equal(full.masks, full.logits > 0)
    if n_tiles == 1:
        # One upsampling of the low-res logits to the padded square in plane pixels, cropped to the plane.
        side = max(h, w)
        expected = F.interpolate(full.low_res_logits, size=(side, side), mode="bilinear", align_corners=False)
        np.testing.assert_allclose(full.logits, expected[:, 0, :h, :w].numpy(), atol=1e-6)


def test_many_objects_in_one_call_equal_one_call_per_object(tiny_model):
    embedding = embed(tiny_model, LARGE)
    prompts = [
        ObjectPrompt(points=np.array([[20, 20]])),
        ObjectPrompt(points=np.array([[120, 70]])),
        ObjectPrompt(points=np.array([[70, 30], [80, 50], [60, 40]]), labels=np.array([1, 0, 1])),
        ObjectPrompt(box=np.array([100, 10, 140, 50])),
        ObjectPrompt(points=np.array([[30, 60]]), box=np.array([10, 40, 50, 85])),
        ObjectPrompt(points=np.array([[20, 20]]), labels=np.array([0]), box=np.array([5, 5, 40, 40])),
        ObjectPrompt(points=np.array([[75, 45]]), mask=LARGE > 0.6),
        ObjectPrompt(mask=np.pad(np.ones((20, 20)), ((10, 120), (10, 60)))),
    ]
    predictor = Predictor(tiny_model)
    together = predictor.predict(embedding, prompts, return_logits=True)
    assert len(set(together.tile_index.tolist())) > 1  # the objects span several tiles
    for i, prompt in enumerate(prompts):
        alone = predictor.predict(embedding, [prompt], return_logits=True)
        assert alone.tile_index[0] == together.tile_index[i]
        np.testing.assert_allclose(together.logits[i], alone.logits[0], atol=1e-5)
        assert np.array_equal(together.masks[i], alone.masks[0])
        assert together.scores[i] == pytest.approx(alone.scores[0], abs=1e-5)


def test_mask_prompt_changes_the_result_on_a_model_with_8_px_patches(tiny_model):
    # TINY has 8 px patches: its low-resolution masks are input / 2, not SAM's input / 4.
    embedding = embed(tiny_model, SMALL)
    predictor = Predictor(tiny_model)
    point = np.array([[25, 20]])
    without = predictor.predict(embedding, [ObjectPrompt(points=point)], multimask=False, return_logits=True)
    blob = np.zeros((50, 40))
    blob[15:35, 10:30] = 1
    with_mask = predictor.predict(embedding, [ObjectPrompt(points=point, mask=blob)], return_logits=True)
    assert with_mask.masks.shape == (1, 50, 40)
    assert np.abs(with_mask.logits - without.logits).max() > 1e-3


def test_box_reaching_outside_the_image_is_clipped(tiny_model):
    embedding = embed(tiny_model, SMALL)
    predictor = Predictor(tiny_model)
    outside = predictor.predict(embedding, [ObjectPrompt(box=np.array([-10, -10, 30, 60]))], return_logits=True)
    inside = predictor.predict(embedding, [ObjectPrompt(box=np.array([0, 0, 30, 39]))], return_logits=True)
    np.testing.assert_array_equal(outside.logits, inside.logits)


GOOD = ObjectPrompt(points=np.array([[10, 10]]))


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        (
            ObjectPrompt(points=np.array([[10, 40]])),
            r"object 1: point \(10.0, 40.0\) \(row, col\) is outside the image",
        ),
        (ObjectPrompt(points=np.array([[-1, 5]])), r"object 1: point \(-1.0, 5.0\) \(row, col\) is outside the image"),
        (ObjectPrompt(points=np.array([[np.nan, 5]])), "object 1: a point coordinate is NaN or infinite"),
        (ObjectPrompt(), "object 1 has no prompt: give at least one point, a box or a mask"),
        (ObjectPrompt(points=np.zeros((0, 2))), "object 1 has no prompt"),
        (
            ObjectPrompt(points=np.array([[5, 5], [9, 9]]), labels=np.array([0, 0])),
            "object 1 has only negative points: add a positive point or a box",
        ),
        (
            ObjectPrompt(points=np.array([[5, 5]]), labels=np.array([2])),
            r"object 1: point labels must be one 1 \(positive\) or 0 \(negative\) per point",
        ),
        (ObjectPrompt(points=np.array([[5, 5]]), labels=np.array([1, 0])), "object 1: point labels must be"),
        (ObjectPrompt(box=np.array([30, 5, 10, 20])), r"object 1: box \(30.0, 5.0, 10.0, 20.0\) has row1 < row0"),
        (ObjectPrompt(box=np.array([5, 20, 30, 10])), "has row1 < row0 or col1 < col0"),
        (ObjectPrompt(box=np.array([5, 5, 20])), r"object 1: a box needs 4 finite numbers \(row0, col0, row1, col1\)"),
        (
            ObjectPrompt(mask=np.zeros((40, 50))),
            r"object 1: mask prompt has shape \(40, 50\) but the image plane has \(50, 40\)",
        ),
    ],
)
def test_bad_prompt_names_the_object_and_the_problem(tiny_model, prompt, message):
    embedding = embed(tiny_model, SMALL)
    with pytest.raises(PromptError, match=message):
        Predictor(tiny_model).predict(embedding, [GOOD, prompt])


def test_no_prompts_at_all_is_refused(tiny_model):
    with pytest.raises(PromptError, match="no prompts given: add at least one point or box"):
        Predictor(tiny_model).predict(embed(tiny_model, SMALL), [])


def test_lone_click_takes_the_multimask_output_with_the_highest_predicted_iou(tiny_model):
    embedding = embed(tiny_model, SMALL)
    predictor = Predictor(tiny_model)
    click = [ObjectPrompt(points=np.array([[20.0, 15.0]]))]
    auto = predictor.predict(embedding, click, return_logits=True)
    multi = predictor.predict(embedding, click, multimask=True, return_logits=True)
    single = predictor.predict(embedding, click, multimask=False, return_logits=True)
    # All candidates decoded by hand: (row, col) = (20, 15) is (x, y) = (15, 20) in the resized input frame.
    s = embedding.scale
    coords, labels = pack_prompts([np.array([[15.0 * s, 20.0 * s]])], [np.ones(1)], [None])
    with torch.no_grad():
        logits, iou = decode(
            tiny_model.sam, embedding.features, dense_positional_encoding(tiny_model.sam), coords, labels
        )
    best = int(iou[0, 1:].argmax()) + 1
    assert auto.scores[0] == pytest.approx(iou[0, best].item(), abs=1e-6)
    assert auto.scores[0] == pytest.approx(iou[0, 1:].max().item(), abs=1e-6)
    torch.testing.assert_close(auto.low_res_logits[0, 0], logits[0, best])
    assert single.scores[0] == pytest.approx(iou[0, 0].item(), abs=1e-6)
    torch.testing.assert_close(single.low_res_logits[0, 0], logits[0, 0])
    assert np.array_equal(auto.logits, multi.logits) and auto.scores[0] == multi.scores[0]
    assert np.abs(auto.logits - single.logits).max() > 1e-3

    # With a second point the object is no longer ambiguous: the single-mask output is used.
    two = [ObjectPrompt(points=np.array([[20.0, 15.0], [30.0, 25.0]]))]
    auto_two = predictor.predict(embedding, two, return_logits=True)
    single_two = predictor.predict(embedding, two, multimask=False, return_logits=True)
    multi_two = predictor.predict(embedding, two, multimask=True, return_logits=True)
    assert np.array_equal(auto_two.logits, single_two.logits)
    assert np.abs(auto_two.logits - multi_two.logits).max() > 1e-3


@pytest.fixture(scope="module")
def big_plane():
    """A 2048 x 2048 plane, its volume and its tiled embedding with a 128 px tiny model (361 tiles)."""
    model = make_model(dataclasses.replace(TINY, img_size=128))
    image = np.random.default_rng(3).integers(0, 4096, (2048, 2048)).astype(np.uint16)
    volume = as_volume(image)
    store = EmbeddingStore(model, volume, tiling=Tiling(overlap=16), cache_root=False, batch_size=16)
    return model, image, volume, store.plane(0)


def test_tiled_prediction_equals_untiled_prediction_on_the_tile(big_plane):
    model, image, volume, embedding = big_plane
    tiles = embedding.tiles
    assert len(tiles) == 19 * 19 and (tiles[:, 2:] - tiles[:, :2] == 128).all()
    starts = np.unique(tiles[:, 0])
    assert starts[9] == 960 and starts[4] == 427 and starts[12:14].tolist() == [1280, 1387]

    def tile_at(row0: int, col0: int) -> int:
        return int(np.flatnonzero((tiles[:, 0] == row0) & (tiles[:, 1] == col0))[0])

    prompts = [
        # At the centre of tile (960, 427), the only tile that holds row 1024.
        ObjectPrompt(points=np.array([[1024, 491]])),
        # Column 1401 lies in the tiles starting at columns 1280 (6 px from its right edge) and 1387 (14 px from its
        # left edge): the wider margin wins.
        ObjectPrompt(points=np.array([[1024, 1401]])),
        # A box and a negative point, 10 px from the top of tile (320, 747) and far from its other edges.
        ObjectPrompt(box=np.array([330, 760, 390, 820]), points=np.array([[350, 800]]), labels=np.array([0])),
    ]
    expected_tiles = [tile_at(960, 427), tile_at(960, 1387), tile_at(320, 747)]
    predictor = Predictor(model)
    tiled = predictor.predict(embedding, prompts, return_logits=True)
    assert tiled.tile_index.tolist() == expected_tiles

    for i, (prompt, t) in enumerate(zip(prompts, expected_tiles)):
        r0, c0, r1, c1 = tiles[t]
        crop = image[r0:r1, c0:c1]
        crop_volume = Volume(planes=crop[None], low=volume.low, high=volume.high, is_stack=False)
        crop_embedding = EmbeddingStore(model, crop_volume, cache_root=False).plane(0)
        assert crop_embedding.scale == 1.0 and len(crop_embedding.tiles) == 1
        torch.testing.assert_close(crop_embedding.features[0], embedding.features[t], atol=1e-5, rtol=1e-5)
        shifted = ObjectPrompt(
            points=None if prompt.points is None else prompt.points - [r0, c0],
            labels=prompt.labels,
            box=None if prompt.box is None else prompt.box - [r0, c0, r0, c0],
        )
        alone = predictor.predict(crop_embedding, [shifted], return_logits=True)
        np.testing.assert_allclose(tiled.logits[i, r0:r1, c0:c1], alone.logits[0], atol=1e-5)
        assert np.array_equal(tiled.masks[i, r0:r1, c0:c1], alone.masks[0])
        assert tiled.scores[i] == pytest.approx(alone.scores[0], abs=1e-5)
        outside = np.ones(image.shape, bool)
        outside[r0:r1, c0:c1] = False
        assert not tiled.masks[i][outside].any() and not tiled.logits[i][outside].any()
