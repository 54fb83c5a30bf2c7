"""Decoding with the prompt-independent image side prepared once gives SAM's own outputs, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_samtune.core import predictor as predictor_module
from napari_samtune.core.decoder import decode, decode_prepared, dense_positional_encoding, pack_prompts, prepare_image
from napari_samtune.core.embeddings import EmbeddingStore
from napari_samtune.core.image import as_volume
from napari_samtune.core.predictor import ObjectPrompt, Predictor


@torch.inference_mode()
@pytest.mark.parametrize("n", [1, 4])
def test_prepared_decoding_equals_decode_bit_for_bit(tiny_model, n):
    sam, size = tiny_model.sam, tiny_model.img_size
    grid = tiny_model.architecture.embedding_size
    features = torch.randn(
        1, tiny_model.architecture.prompt_embed_dim, grid, grid, generator=torch.Generator().manual_seed(n)
    )
    pe = dense_positional_encoding(sam)
    rng = np.random.default_rng(n)
    points = [rng.uniform(0, size, (2, 2)) for _ in range(n)]
    labels = [np.array([1, 0]) for _ in range(n)]
    boxes = [np.array([5.0, 8.0, 40.0, 50.0]) if i % 2 else None for i in range(n)]
    coords, point_labels = pack_prompts(points, labels, boxes)
    logits, iou = decode(sam, features, pe, coords, point_labels)
    fast_logits, fast_iou = decode_prepared(sam, prepare_image(sam, features, pe), coords, point_labels)
    assert torch.equal(fast_logits, logits) and torch.equal(fast_iou, iou)


def test_predictor_prepares_each_tile_once_per_plane(tiny_model, monkeypatch):
    prepared: list[int] = []

    def counting(sam, features, pe):
        prepared.append(features.data_ptr())
        return prepare_image(sam, features, pe)

    monkeypatch.setattr(predictor_module, "prepare_image", counting)
    store = EmbeddingStore(tiny_model, as_volume(np.random.default_rng(0).random((2, 50, 40))), cache_root=False)
    predictor = Predictor(tiny_model)
    clicks = [ObjectPrompt(points=np.array([[10.0 * i, 5.0 * i]])) for i in range(1, 4)]
    first = [predictor.predict(store.plane(0), [click]).masks for click in clicks]
    assert len(prepared) == 1  # three clicks, one preparation
    predictor.predict(store.plane(1), clicks[:1])
    assert len(prepared) == 2  # another plane's features: prepared afresh
    again = [predictor.predict(store.plane(0), [click]).masks for click in clicks]
    assert len(prepared) == 3
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
