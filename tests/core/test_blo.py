"""BLO prompt learning and prompt-free segmentation: the data split, what each level trains, the upper level's walk
through its split, the second-order hypergradient, automatic segmentation outputs, the adapter round trip and a short
run that learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_samtune.core.automatic import class_logits, segment_automatic
from napari_samtune.core.decoder import decode_tokens, dense_positional_encoding, embed_dense
from napari_samtune.core.embeddings import EmbeddingStore, PlaneEmbedding
from napari_samtune.core.image import as_volume
from napari_samtune.core.jobs import drive
from napari_samtune.core.training.adapters import apply_adapter, load_adapter, save_adapter
from napari_samtune.core.training.blo import BLOPromptLearning, BLOSettings, split_indices
from napari_samtune.core.training.data import TrainingData, prepare_training_data
from napari_samtune.core.training.fine_tune import fine_tune
from napari_samtune.core.training.loop import TrainConfig, run_training
from napari_samtune.core.training.units import Augmentation

from .conftest import TINY, make_model


def discs(n: int, size: int, values: tuple[int, ...] = (1,), seed: int = 0) -> tuple[list, list]:
    """``n`` images of bright discs (brightness by class) on a dark, noisy background, with their label images."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images, labels = [], []
    for _ in range(n):
        lab = np.zeros((size, size), np.int32)
        for value in rng.permutation(np.repeat(values, 2)):
            r = rng.uniform(size / 4, size / 2.5)
            cy, cx = rng.uniform(r, size - r, 2)
            lab[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = value
        brightness = np.array([0.1, *np.linspace(0.9, 0.4, len(values))])[np.searchsorted([0, *values], lab)]
        images.append((brightness + rng.normal(0, 0.03, lab.shape)).astype(np.float32))
        labels.append(lab)
    return images, labels


def binary_data(n: int = 6, size: int = 64) -> TrainingData:
    return prepare_training_data(*discs(n, size), task="semantic", all_objects_labeled=True)


def three_class_data(n: int = 4, size: int = 64) -> TrainingData:
    return prepare_training_data(*discs(n, size, values=(3, 5, 9)), task="semantic", all_objects_labeled=True)


def run(generator):
    """Iterate a training generator; return (events, return value)."""
    events = []
    return events, drive(generator, events.append)


def embed(model, image: np.ndarray) -> PlaneEmbedding:
    return EmbeddingStore(model, as_volume(image), cache_root=False).plane(0)


def test_splits_are_deterministic_disjoint_and_fall_back_to_tiles():
    lower, upper = split_indices(10, 0.5, seed=3)
    assert (lower, upper) == split_indices(10, 0.5, seed=3)
    assert not set(lower) & set(upper) and sorted(lower + upper) == list(range(10)) and len(upper) == 5
    assert split_indices(10, 0.5, seed=4) != (lower, upper)
    assert len(split_indices(2, 0.9, seed=0)[0]) == 1  # both levels keep at least one

    method = BLOPromptLearning(make_model(), binary_data(), cache_root=False)
    lower_items = {id(u.item) for u in method.lower_units}
    assert lower_items and not lower_items & {id(u.item) for u in method.upper_units}
    again = BLOPromptLearning(make_model(), binary_data(), cache_root=False)
    assert [u.item.image for u in again.upper_units] == [u.item.image for u in method.upper_units]

    # One 128 px training image: its 9 tiles (empty ones included: all is labeled) are split instead, each tile's
    # augmented views on the same side as the tile.
    images, labels = discs(1, 128)
    data = prepare_training_data(images, labels, task="semantic", all_objects_labeled=True)
    one = BLOPromptLearning(make_model(), data, cache_root=False)
    lower, upper = ({u.group: u.tile for u in units} for units in (one.lower_units, one.upper_units))
    assert sorted([*lower.values(), *upper.values()]) == list(range(9)) and lower and upper
    assert len(one.lower_units) > len(lower) and len(one.upper_units) > len(upper)


@pytest.mark.parametrize("data", [binary_data, three_class_data], ids=["binary", "3-class"])
def test_each_level_trains_only_its_own_parameters(data):
    training_data = data()
    method = BLOPromptLearning(make_model(), training_data, BLOSettings(n_tokens=2), cache_root=False)
    lower, upper = method.levels()
    assert len(upper.params) == 1 and upper.params[0] is method.prompt_param
    assert method.prompt_param.shape == (len(training_data.classes), 2, TINY.prompt_embed_dim)
    rng = np.random.default_rng(0)
    for level, other in ((lower, upper), (upper, lower)):
        for p in [*lower.params, *upper.params]:
            p.grad = None
        before = [p.detach().clone() for p in other.params]
        losses = level.backward(0, rng)
        assert np.isfinite(losses["loss"])
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in level.params)
        assert all(p.grad is None for p in other.params)
        torch.optim.AdamW(level.params, lr=1e-2).step()
        assert all(torch.equal(p, b) for p, b in zip(other.params, before))


def test_upper_level_cycles_through_split_2_only():
    method = BLOPromptLearning(make_model(), binary_data(12), BLOSettings(units_per_step=3), cache_root=False)
    upper = [id(u) for u in method.upper_units]
    n = len(upper)
    assert n >= 4
    used: list[int] = []
    loss = method._loss

    def recording(units, prompts, **kwargs):
        used.extend(id(u) for u in units)
        return loss(units, prompts, **kwargs)

    method._loss = recording
    backward = method.levels()[1].backward
    step = 0
    while len(used) < 2 * n:
        backward(step, np.random.default_rng(step))
        step += 1
    assert len(used) == 2 * n  # a pass ends with a shorter batch rather than borrowing from the next
    assert sorted(used[:n]) == sorted(upper) and sorted(used[n:]) == sorted(upper)  # every unit once per pass


def test_second_order_gives_finite_prompt_gradients_and_restores_the_weights():
    settings = BLOSettings(n_tokens=2, second_order=True)
    method = BLOPromptLearning(make_model(), three_class_data(), settings, cache_root=False)
    lower, upper = method.levels()
    before = [p.detach().clone() for p in lower.params]
    losses = upper.backward(0, np.random.default_rng(0))
    grad = method.prompt_param.grad
    assert np.isfinite(losses["loss"]) and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert all(p.grad is None for p in lower.params)
    assert all(torch.equal(p, b) for p, b in zip(lower.params, before))
    _, result = run(run_training(method, TrainConfig(steps=2, validate_every=2)))
    assert result.steps == 2


def test_segment_automatic_outputs(tiny_model):
    with pytest.raises(ValueError, match="no learned prompts: fine-tune it with BLO prompt learning first"):
        segment_automatic(tiny_model, embed(tiny_model, np.zeros((40, 50), np.float32)))
    rng = np.random.default_rng(1)
    tiny_model.prompt_embeddings = torch.from_numpy(rng.normal(size=(3, 2, 32)).astype(np.float32))
    tiny_model.classes = (2, 5, 7)
    for shape in ((40, 50), (150, 90)):  # one resized tile; eight overlapping tiles
        embedding = embed(tiny_model, rng.random(shape).astype(np.float32))
        result = segment_automatic(tiny_model, embedding)
        assert result.probabilities.shape == (4, *shape) and result.probabilities.dtype == np.float32
        assert np.allclose(result.probabilities.sum(0), 1, atol=1e-5)
        assert result.labels.shape == shape and result.labels.dtype == np.int32
        assert set(np.unique(result.labels)) <= {0, 2, 5, 7}
        assert np.array_equal(result.labels, np.array([0, 2, 5, 7])[result.probabilities.argmax(0)])

    # One tile: the predictor's upsampling (low-res grid → padded input square in plane pixels → crop).
    embedding = embed(tiny_model, rng.random((40, 50)).astype(np.float32))
    sam = tiny_model.sam
    with torch.no_grad():
        low, _ = decode_tokens(
            sam,
            embedding.features,
            dense_positional_encoding(sam),
            tiny_model.prompt_embeddings,
            embed_dense(sam, None, 1),
        )
    side = round(64 / embedding.scale)
    expected = F.interpolate(low[:, :1], size=(side, side), mode="bilinear", align_corners=False)[:, 0, :40, :50]
    assert torch.allclose(class_logits(tiny_model, embedding, tiny_model.prompt_embeddings), expected, atol=1e-5)

    tiny_model.prompt_embeddings, tiny_model.classes = tiny_model.prompt_embeddings[:1], (4,)
    binary = segment_automatic(tiny_model, embedding)
    assert binary.probabilities.shape == (2, 40, 50) and set(np.unique(binary.labels)) <= {0, 4}


def test_fine_tuned_prompts_round_trip_through_the_adapter(tmp_path):
    base = make_model()
    data = three_class_data()
    settings = BLOSettings(n_tokens=3)
    _, result = run(fine_tune(base, data, "blo", settings, TrainConfig(steps=2, validate_every=1), cache_root=False))
    assert result.model.prompt_embeddings.shape == (3, 3, TINY.prompt_embed_dim)
    assert result.model.classes == (3, 5, 9) and base.prompt_embeddings is None
    restored = apply_adapter(base, load_adapter(save_adapter(result.adapter, tmp_path / "blo.pt")))
    embedding = embed(base, data.volumes[0].planes[0])
    a, b = segment_automatic(result.model, embedding), segment_automatic(restored, embedding)
    assert np.array_equal(a.probabilities, b.probabilities) and np.array_equal(a.labels, b.labels)


def test_single_level_trains_prompts_and_weights_together_at_their_own_rates():
    settings = BLOSettings(single_level=True)
    method = BLOPromptLearning(make_model(), binary_data(), settings, cache_root=False)
    bilevel = BLOPromptLearning(make_model(), binary_data(), cache_root=False)
    (joint,) = method.levels()
    assert joint.params[-1] is method.prompt_param and len(joint.params) == len(method.weights) + 1
    assert len(method.lower_units) == len(bilevel.lower_units) + len(bilevel.upper_units)
    assert torch.allclose(method.prompts(), bilevel.prompts())
    with pytest.raises(ValueError, match="cannot be combined with single_level"):
        BLOSettings(single_level=True, second_order=True)


def test_a_short_run_learns_bright_discs():
    # A random tiny model needs larger steps than the defaults made for pretrained SAM; plain frames, so that the
    # loss of 40 steps is comparable from step to step (augmentation is tested in test_augmentation.py).
    settings = BLOSettings(lr=3e-3, prompt_lr=3e-2, units_per_step=2, augmentation=Augmentation.none())
    method = BLOPromptLearning(make_model(), binary_data(), settings, cache_root=False)
    events, result = run(run_training(method, TrainConfig(steps=40, validate_every=20, warmup_steps=2)))
    lower = [e.losses["lower/loss"] for e in events if e.losses]
    assert np.mean(lower[-5:]) < 0.7 * np.mean(lower[:5])
    assert result.best_validation > result.history[0]["validation"] + 0.15
