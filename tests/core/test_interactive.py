"""Interactive fine-tuning on bright discs: it learns, a cancel leaves the original model untouched, LoRA trains only
the encoder's adapters and renames the encoder, and the frozen-encoder path never runs the encoder while training."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from segment_anything.modeling import ImageEncoderViT
from skimage.draw import disk

from napari_samtune.core.embeddings import EmbeddingStore
from napari_samtune.core.jobs import drive
from napari_samtune.core.training.data import prepare_training_data
from napari_samtune.core.training.fine_tune import fine_tune
from napari_samtune.core.training.interactive import InteractiveFineTuning, InteractiveSettings, click_ious
from napari_samtune.core.training.loop import TrainConfig
from napari_samtune.core.training.lora import LoraSettings
from napari_samtune.core.training.units import Augmentation

from .conftest import TINY, make_model

LORA = LoraSettings(rank=2, alpha=4.0)


def disc_scenes(n: int, size: int, radius: tuple[int, int], per_image: int = 1, seed: int = 0):
    """``n`` noisy dark images with ``per_image`` bright non-overlapping discs; instance labels (one id per disc)."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for _ in range(n):
        image = rng.normal(20, 5, (size, size)).astype(np.float32)
        lab = np.zeros((size, size), np.int32)
        for _ in range(200):
            r = int(rng.integers(*radius))
            rr, cc = disk(tuple(rng.integers(r, size - r, 2)), r, shape=lab.shape)
            if not lab[rr, cc].any():
                lab[rr, cc] = lab.max() + 1
                image[rr, cc] += 150
            if lab.max() == per_image:
                break
        images.append(image)
        labels.append(lab)
    return images, labels


def run(gen, events=None):
    """Iterate a training generator; return (events, its return value)."""
    events = [] if events is None else events
    return events, drive(gen, events.append)


def state_of(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.sam.state_dict().items()}


def assert_same_state(model, state: dict[str, torch.Tensor]) -> None:
    now = model.sam.state_dict()
    assert now.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(now[key], value), key


@pytest.fixture
def small_data():
    images, labels = disc_scenes(4, 64, (8, 14), per_image=2, seed=1)
    return prepare_training_data(images, labels, validation_fraction=0.25, seed=0)


def test_decoder_fine_tune_learns_bright_discs():
    # A random tiny model first has to find "bright = object" through its decoder's random upscaling path: a plateau
    # of ~40–70 steps, and with several small discs per image far more than 100 steps. One large disc per image, all
    # training images in every step, lr 5e-3 held constant, single-round sessions and click prompts (what validation
    # uses) reach a validation IoU of 0.70–0.90 at step 100 from ~0.2, for each of the model seeds 0–3. Plain frames:
    # augmented views lengthen that plateau (they are tested in test_augmentation.py).
    images, labels = disc_scenes(9, 128, (30, 45), seed=0)
    data = prepare_training_data(images, labels, validation_fraction=1 / 3, seed=0)
    model = make_model(dataclasses.replace(TINY, img_size=128))
    before = state_of(model)
    settings = InteractiveSettings(
        lr=5e-3,
        corrective_rounds=0,
        click_fraction=1.0,
        units_per_step=6,
        objects_per_unit=1,
        loss_size=64,
        augmentation=Augmentation.none(),
    )
    config = TrainConfig(steps=100, warmup_steps=5, schedule="constant", validate_every=20)
    events, result = run(fine_tune(model, data, settings=settings, config=config, cache_root=False))

    losses = [e.losses["loss"] for e in events if e.losses]
    assert len(losses) == 100
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    history = result.training.history
    initial = history[0]["validation"]
    assert [h["step"] for h in history] == [0, 20, 40, 60, 80, 100]
    assert history[-1]["validation"] > initial + 0.3
    assert result.training.best_validation > initial + 0.4
    assert not result.cancelled and result.training.stopped == "done"
    assert result.adapter.metrics["best_validation"] == result.training.best_validation
    # The returned model holds the best validated weights; the model passed in is untouched.
    check = InteractiveFineTuning(result.model.copy(), data, settings, cache_root=False)
    assert check.validate() == pytest.approx(result.training.best_validation, abs=1e-6)
    assert_same_state(model, before)


@pytest.mark.parametrize("settings", [InteractiveSettings(), InteractiveSettings(lora=LORA)], ids=["decoder", "lora"])
def test_a_cancelled_fine_tune_leaves_the_original_model_bit_identical(small_data, settings):
    model = make_model()
    before = state_of(model)
    grads = [p.requires_grad for p in model.sam.parameters()]
    events: list = []
    gen = fine_tune(
        model,
        small_data,
        settings=settings,
        config=TrainConfig(steps=50, warmup_steps=0, validate_every=100),
        should_stop=lambda: len(events) >= 3,
        cache_root=False,
    )

    def seen(event) -> None:
        events.append(event)
        assert_same_state(model, before)  # also while the copy is being trained

    result = drive(gen, seen)
    assert result.cancelled and result.training.stopped == "cancelled" and result.training.steps == 2
    assert result.adapter.metrics["stopped"] == "cancelled"
    assert_same_state(model, before)
    assert [p.requires_grad for p in model.sam.parameters()] == grads
    assert not any("lora_" in name for name, _ in model.sam.named_parameters())
    assert model.encoder_id == "tiny:seed0"


def test_lora_adds_trainable_adapters_only_in_the_image_encoder(small_data):
    runner = InteractiveFineTuning(make_model(), small_data, InteractiveSettings(lora=LORA), cache_root=False)
    named = dict(runner.model.sam.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    lora = {n for n in named if "lora_" in n}
    assert lora and all(n.startswith("image_encoder.") for n in lora)
    assert len(lora) == 2 * TINY.encoder_depth  # lora_A and lora_B of each block's qkv
    assert trainable == lora | {n for n in named if n.startswith("mask_decoder.")}
    assert {id(p) for p in runner.params} == {id(named[n]) for n in trainable}
    assert runner.train_units[0].embedding is None and runner.train_units[0].inputs is not None

    only_lora = InteractiveFineTuning(
        make_model(), small_data, InteractiveSettings(lora=LORA, train_decoder=False), cache_root=False
    )
    assert {n for n, p in only_lora.model.sam.named_parameters() if p.requires_grad} == lora


def count_encoder_calls(monkeypatch) -> list[int]:
    calls: list[int] = []
    forward = ImageEncoderViT.forward

    def counted(self, x):
        calls.append(x.shape[0])
        return forward(self, x)

    monkeypatch.setattr(ImageEncoderViT, "forward", counted)
    return calls


def test_lora_fine_tune_renames_the_encoder_and_runs_it_every_step(small_data, monkeypatch):
    model = make_model()
    calls = count_encoder_calls(monkeypatch)
    config = TrainConfig(steps=4, warmup_steps=0, validate_every=100)
    settings = InteractiveSettings(lora=LORA, lr=1e-2)
    _, result = run(fine_tune(model, small_data, settings=settings, config=config, cache_root=False))
    assert len(calls) >= 4 + 2  # one encoder pass per step, plus the validations
    assert result.model.encoder_id.startswith(f"{model.encoder_id}+lora:")
    assert result.model.encoder_id != model.encoder_id
    volume = small_data.volumes[0]
    assert (
        EmbeddingStore(result.model, volume, cache_root=False).key
        != EmbeddingStore(model, volume, cache_root=False).key
    )
    assert result.adapter.lora["state"] and result.adapter.modules.keys() == {"mask_decoder"}


def test_the_frozen_encoder_is_not_run_during_training_steps(small_data, monkeypatch):
    model = make_model()
    calls = count_encoder_calls(monkeypatch)
    gen = fine_tune(model, small_data, config=TrainConfig(steps=6, validate_every=3), cache_root=False)
    first = next(gen)  # the copy is made, the units are encoded and validated once
    assert first.step == 0 and len(calls) > 0
    encoded = len(calls)
    events, result = run(gen)
    assert [e.step for e in events] == list(range(1, 7)) and result.training.steps == 6
    assert len(calls) == encoded
    assert result.model.encoder_id == model.encoder_id


def test_click_ious_one_value_per_object_up_to_the_limit(small_data):
    runner = InteractiveFineTuning(make_model(), small_data, cache_root=False)
    n_objects = sum(len(o.ids) for o in runner.val_objects)
    ious = click_ious(runner.model, runner.val_units, runner.val_objects, 48)
    assert len(ious) == n_objects == 2
    assert all(0 <= v <= 1 for v in ious)
    assert len(click_ious(runner.model, runner.val_units, runner.val_objects, 1)) == 1
    assert runner.validate() == pytest.approx(np.mean(ious))


def test_settings_must_train_something():
    with pytest.raises(ValueError, match="nothing to train"):
        InteractiveSettings(train_decoder=False)
