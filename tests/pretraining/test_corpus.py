"""The real-image pretraining corpus: every source reads, frames keep instance labels, a v2-style run on a corpus
sample lowers the loss and resumes exactly."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from napari_samtune.pretraining.batches import sample_batch
from napari_samtune.pretraining.corpus import SOURCES, CorpusImage, cut_frame, default_corpus_dir, load_corpus
from napari_samtune.pretraining.recipe import RECIPES, pretrain
from tests.core.conftest import TINY

needs_corpus = pytest.mark.skipif(
    not default_corpus_dir().is_dir(),
    reason=f"the pretraining corpus is not at {default_corpus_dir()} (set SAMTUNE_PRETRAIN_CORPUS)",
)


@pytest.fixture(scope="module")
def small_corpus():
    return load_corpus(limit=6, holdout_every=3)


@needs_corpus
def test_every_source_reads_with_objects_and_a_held_out_part(small_corpus):
    assert set(small_corpus.train) == set(SOURCES)
    for source in SOURCES:
        train, held = small_corpus.train[source], small_corpus.held_out[source]
        assert len(train) == 4 and len(held) == 2
        assert not {i.name for i in train} & {i.name for i in held}
        for item in train + held:
            assert item.image.dtype == np.uint8 and item.image.ndim == 3 and item.image.shape[-1] == 3
            assert item.labels.shape == item.image.shape[:2] and item.labels.max() >= 1


def test_missing_corpus_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_corpus(tmp_path)


def _two_nuclei_image() -> CorpusImage:
    labels = np.zeros((300, 500), np.uint16)
    labels[10:40, 10:40] = 7
    labels[200:260, 400:470] = 9
    image = np.where(labels > 0, 200, 30).astype(np.uint8)
    return CorpusImage("two", np.repeat(image[..., None], 3, -1), labels)


def test_native_crops_keep_instance_ids_and_pixels_aligned():
    item = _two_nuclei_image()
    for seed in range(10):
        image, labels = cut_frame(item, 128, np.random.default_rng(seed), downscale_probability=0.0)
        assert image.shape == (128, 128, 3) and labels.shape == (128, 128)
        assert set(np.unique(labels)) <= {0, 7, 9}
        assert labels.any(), "a crop prefers a place with an object"
        assert np.array_equal(image[..., 0] == 200, labels > 0)


def test_downscaled_view_shows_the_whole_image_padded_like_the_predictor():
    image, labels = cut_frame(_two_nuclei_image(), 250, np.random.default_rng(0), downscale_probability=1.0)
    assert set(np.unique(labels)) == {0, 7, 9}
    assert not labels[150:].any() and not image[150:].any(), "500x300 → 250x150, zero padding below"
    assert (labels == 9).sum() == pytest.approx(70 * 60 / 4, rel=0.1)


@needs_corpus
def test_a_corpus_run_lowers_the_loss_and_resumes_exactly(small_corpus, tmp_path):
    config = dataclasses.replace(
        RECIPES["v2"],
        total_steps=10,
        images_per_step=3,
        objects_per_image=3,
        pool_size=4,
        warmup_steps=1,
        lr=3e-3,
        init_from=None,
        architecture=TINY.to_dict(),
    )
    straight = list(pretrain(config, tmp_path / "a", corpus=small_corpus))
    first = list(pretrain(config, tmp_path / "b", corpus=small_corpus, max_steps=4))
    second = list(pretrain(config, tmp_path / "b", corpus=small_corpus))
    assert [e["loss"] for e in first + second] == [e["loss"] for e in straight]
    losses = [e["loss"] for e in straight]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # batches mix the sources by their weights: the corpus appears, and every object lies inside its frame
    from napari_samtune.pretraining.scenes import build_pool

    pool = build_pool(4, config.seed, TINY.img_size)
    batch = sample_batch(pool, config, 3, small_corpus)
    assert batch.masks.shape[-2:] == (TINY.img_size, TINY.img_size) and batch.masks.any((1, 2)).all()


def test_calibrated_thresholds_are_the_best_pair_and_reproduce_their_f1():
    from napari_samtune.core.automatic import InstanceSettings, segment_instances
    from napari_samtune.core.metrics import match_instances
    from napari_samtune.core.models import load_model
    from napari_samtune.core.segmenter import Segmenter
    from napari_samtune.core.synthetic import make_scenes
    from napari_samtune.pretraining.calibrate import calibrate_automatic

    model = load_model("samtune_small", device="cpu")
    scene = make_scenes(1, seed=4242)[0]
    result = calibrate_automatic(model, [(scene.image, scene.labels)])
    assert result["f1"] == pytest.approx(max(result["table"].values()), abs=1e-4)
    assert result["f1"] >= result["table"]["0.7/0.8"]
    segmenter = Segmenter(model, cache_root=False)
    segmenter.set_image(scene.image)
    chosen = InstanceSettings(min_score=result["min_score"], min_stability=result["min_stability"])
    labels = segment_instances(segmenter.predictor, segmenter.store.plane(0), chosen)
    assert match_instances(labels, scene.labels).f1 == pytest.approx(result["f1"], abs=1e-3)
