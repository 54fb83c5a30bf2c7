"""Pretraining recipe: a few steps run, lower the loss, and a resumed run equals an uninterrupted one exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_samtune.pretraining.batches import sample_batch
from napari_samtune.pretraining.recipe import PretrainConfig, pretrain
from napari_samtune.pretraining.scenes import build_pool
from tests.core.conftest import TINY

CONFIG = PretrainConfig(
    total_steps=12,
    images_per_step=2,
    objects_per_image=3,
    pool_size=6,
    warmup_steps=2,
    lr=3e-3,
    architecture=TINY.to_dict(),
)


def _run(folder, **kwargs) -> list[dict]:
    return list(pretrain(CONFIG, folder, **kwargs))


def test_resumed_run_matches_uninterrupted_run_exactly(tmp_path):
    straight = _run(tmp_path / "a")
    first = _run(tmp_path / "b", max_steps=5)
    second = _run(tmp_path / "b")
    assert [e["step"] for e in first + second] == list(range(1, 13))
    assert [e["loss"] for e in first + second] == [e["loss"] for e in straight]
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    exp_a = a["optimizer"]["state"][0]["exp_avg"]
    assert torch.equal(exp_a, b["optimizer"]["state"][0]["exp_avg"])


def test_a_few_steps_lower_the_loss(tmp_path):
    events = _run(tmp_path)
    losses = [e["loss"] for e in events]
    assert np.mean(losses[-4:]) < np.mean(losses[:4])


def test_batches_are_a_pure_function_of_the_step(tmp_path):
    pool = build_pool(CONFIG.pool_size, CONFIG.seed, TINY.img_size, tmp_path)
    a, b = sample_batch(pool, CONFIG, 3), sample_batch(pool, CONFIG, 3)
    assert torch.equal(a.images, b.images) and np.array_equal(a.masks, b.masks)
    assert not np.array_equal(a.masks, sample_batch(pool, CONFIG, 4).masks[: len(a.masks)])


def test_changed_config_refuses_to_resume(tmp_path):
    _run(tmp_path, max_steps=1)
    other = PretrainConfig(**{**CONFIG.__dict__, "lr": 1e-4})
    try:
        list(pretrain(other, tmp_path))
    except ValueError as error:
        assert "another config" in str(error)
    else:
        raise AssertionError("resuming with another config must fail")


def test_an_amendment_resumes_only_from_before_it_takes_effect(tmp_path):
    """A run written before ``iou_boost`` existed resumes under a boost that starts at or after its step."""
    plain = PretrainConfig(**{**CONFIG.__dict__, "iou_boost": None})
    _run_with(plain, tmp_path, max_steps=4)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    del ckpt["config"]["iou_boost"]  # as written by the recipe before the amendment
    torch.save(ckpt, tmp_path / "checkpoint.pt")
    too_early = PretrainConfig(**{**CONFIG.__dict__, "iou_boost": (2, 5.0)})
    with pytest.raises(ValueError, match="another config"):
        list(pretrain(too_early, tmp_path))
    boosted = PretrainConfig(**{**CONFIG.__dict__, "iou_boost": (4, 5.0)})
    resumed = list(pretrain(boosted, tmp_path, max_steps=2))
    assert [e["step"] for e in resumed] == [5, 6]
    # the boost changes the loss from its step on, and nothing before it
    straight = _run_with(plain, tmp_path / "plain", max_steps=6)
    assert resumed[0]["loss"] != straight[4]["loss"]
    assert boosted.iou_weight_at(3) == 1.0 and boosted.iou_weight_at(4) == 5.0


def _run_with(config, folder, **kwargs) -> list[dict]:
    return list(pretrain(config, folder, **kwargs))
