"""Test-time augmentation views are encoded once per image when the image's embeddings are cached on disk."""

from __future__ import annotations

import numpy as np

from napari_samtune.core.predictor import ObjectPrompt
from napari_samtune.core.segmenter import Segmenter
from napari_samtune.core.uncertainty import prompted_uncertainty

from .conftest import make_model


def _count_encoder_calls(model) -> list[int]:
    calls = [0]
    model.sam.image_encoder.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_tta_views_are_encoded_once_per_image_with_a_disk_cache(tmp_path):
    model = make_model()
    calls = _count_encoder_calls(model)
    image = np.random.default_rng(0).integers(0, 255, (48, 64)).astype(np.uint8)
    segmenter = Segmenter(model, cache_root=tmp_path)
    segmenter.set_image(image)
    first = prompted_uncertainty(
        segmenter.predictor, segmenter.store, ObjectPrompt(points=np.array([[10, 12]])), source="tta"
    )
    assert calls[0] == 4  # the image and its three views (flips, rot90)
    again = prompted_uncertainty(
        segmenter.predictor, segmenter.store, ObjectPrompt(points=np.array([[10, 12]])), source="tta"
    )
    prompted_uncertainty(segmenter.predictor, segmenter.store, ObjectPrompt(points=np.array([[30, 40]])), source="tta")
    assert calls[0] == 4
    np.testing.assert_allclose(again.uncertainty, first.uncertainty, atol=1e-6)


def test_tta_views_of_a_memory_only_store_stay_in_memory(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMTUNE_CACHE_DIR", str(tmp_path))
    model = make_model()
    segmenter = Segmenter(model, cache_root=False)
    segmenter.set_image(np.random.default_rng(1).integers(0, 255, (40, 40)).astype(np.uint8))
    result = prompted_uncertainty(
        segmenter.predictor, segmenter.store, ObjectPrompt(points=np.array([[20, 20]])), source="tta"
    )
    assert result.uncertainty.shape == (40, 40) and 0 <= result.uncertainty.min() <= result.uncertainty.max() <= 1
    assert not any(tmp_path.rglob("*.zarr"))
