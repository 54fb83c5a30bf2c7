"""Uncertainty-aware fine-tuning (SUM) and weakly supervised self-training (WeSAM), on tiny random models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_samtune.core.jobs import drive
from napari_samtune.core.training import sum as sum_module
from napari_samtune.core.training.data import TrainingData, WeakLabels, prepare_training_data
from napari_samtune.core.training.fine_tune import fine_tune
from napari_samtune.core.training.loop import TrainConfig, run_training
from napari_samtune.core.training.lora import lora_state
from napari_samtune.core.training.losses import mask_losses
from napari_samtune.core.training.sum import (
    SUMSettings,
    UncertaintyAwareFineTuning,
    confident_click,
    uncertainty_weighted_losses,
)
from napari_samtune.core.training.wesam import WeakSelfTraining, WeSAMSettings, weak_prompts

from .conftest import make_model


def _disks(seed: int, size: int = 64, n: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """A noisy dark image with ``n`` bright disks and their instance labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    image = rng.normal(30, 5, (size, size)).astype(np.float32)
    labels = np.zeros((size, size), np.int32)
    for k in range(n):
        cy, cx = rng.uniform(10, size - 10, 2)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(4, 8) ** 2
        image[disk], labels[disk] = 200, k + 1
    return image, labels


@pytest.fixture
def data() -> TrainingData:
    images, labels = zip(*(_disks(i) for i in range(3)))
    return prepare_training_data(list(images), list(labels), task="instances", unlabeled=[_disks(10)[0], _disks(11)[0]])


def _confident_model():
    """A tiny model whose mask logits are far from 0 (scaled mask heads), so its masks pass the proposal filters."""
    model = make_model()
    with torch.no_grad():
        for mlp in model.sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(60)
            mlp.layers[-1].bias.mul_(60)
    return model


LENIENT = {"pred_iou_threshold": 0.0, "stability_threshold": 0.0, "refinement_steps": 2}


def _finish(generator):
    return drive(generator)


def test_uncertainty_weighting_on_a_hand_checkable_case():
    # 2 × 2 pixels: a confidently wrong pixel (logit 8, target 0) with U = 1; the other three predict p = 0.5.
    logits = torch.tensor([[[[8.0, 0.0], [0.0, 0.0]]]])
    target = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]])
    iou_pred, valid = torch.zeros(1, 1), torch.ones(1, 1, 2, 2)
    uncertain = torch.zeros(1, 1, 2, 2)
    uncertain[..., 0, 0] = 1.0
    out = uncertainty_weighted_losses(logits, iou_pred, target, uncertain, valid)
    # Focal per pixel at p = 0.5: α_t (1 − p_t)² ln 2 with α_t = 0.25 (object) or 0.75 (background).
    assert float(out["focal"]) == pytest.approx((0.25 + 0.25 + 0.75) * 0.25 * math.log(2) / 3, rel=1e-5)
    # Dice on the three weighted pixels: intersection 2 × 0.5, prediction 1.5, target 2, smoothing 1.
    assert float(out["dice"]) == pytest.approx(1 - (2 * 1.0 + 1) / (1.5 + 2 + 1), rel=1e-5)
    # The U = 1 pixel contributes nothing, whatever the model predicts there.
    moved = logits.clone()
    moved[..., 0, 0] = -3.0
    again = uncertainty_weighted_losses(moved, iou_pred, target, uncertain, valid)
    assert float(again["total"]) == pytest.approx(float(out["total"]), rel=1e-6)
    # U = 0 everywhere, or weighting off, is the plain loss.
    plain = mask_losses(logits, iou_pred, target, valid)
    certain = uncertainty_weighted_losses(logits, iou_pred, target, torch.zeros_like(uncertain), valid)
    off = uncertainty_weighted_losses(logits, iou_pred, target, uncertain, valid, weighting=False)
    for key in ("total", "focal", "dice", "iou_mse"):
        assert torch.equal(certain[key], plain[key]) and torch.equal(off[key], plain[key])
    assert float(plain["focal"]) > 10 * float(out["focal"])  # the wrong pixel dominates the unweighted loss


def test_clicks_are_drawn_in_proportion_to_confidence():
    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:6] = True
    uncertainty = np.zeros((8, 8), np.float32)
    uncertainty[:, 2:4] = 1.0
    uncertainty[:, 4] = 0.5
    rng = np.random.default_rng(0)
    xs, ys = np.array([confident_click(mask, uncertainty, rng) for _ in range(2000)], int).T
    assert mask[ys, xs].all()
    assert (uncertainty[ys, xs] < 1).all()  # never where U = 1
    assert 0.4 < (xs == 4).sum() / (xs == 5).sum() < 0.62  # U = 0.5 drawn half as often as U = 0
    assert confident_click(mask, np.ones((8, 8)), rng) is None


@pytest.mark.parametrize("source", ["refinement", "prompt", "multimask", "entropy"])
def test_unlabeled_units_get_pseudo_labels(data, source):
    settings = SUMSettings(uncertainty=source, **LENIENT)
    runner = UncertaintyAwareFineTuning(_confident_model(), data, settings, cache_root=False)
    assert len(runner.unlabeled_units) == 2  # one unit per unlabeled 64 × 64 image, although it has no labels
    pseudo = runner.label_unlabeled(0)
    k = len(pseudo.probability)
    assert k >= 1
    assert pseudo.probability.shape == pseudo.uncertainty.shape == (k, 64, 64)
    assert 0 <= pseudo.uncertainty.min() and pseudo.uncertainty.max() <= 1
    assert 0 <= pseudo.probability.min() and pseudo.probability.max() <= 1


def test_sum_interleaves_batches_and_the_loop_skips_a_nan_unlabeled_loss(data, monkeypatch):
    settings = SUMSettings(uncertainty="entropy", **LENIENT)
    runner = UncertaintyAwareFineTuning(_confident_model(), data, settings, cache_root=False)
    level = runner.levels()[0]
    labeled, unlabeled = level.backward(0, np.random.default_rng(0)), level.backward(1, np.random.default_rng(1))
    assert "focal" in labeled and "pseudo_focal" not in labeled
    assert unlabeled["pseudo_objects"] > 0 and math.isfinite(unlabeled["loss"])

    real = sum_module.uncertainty_weighted_losses

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        return {**out, "total": out["total"] * math.nan}

    monkeypatch.setattr(sum_module, "uncertainty_weighted_losses", poisoned)
    events = list(run_training(runner, TrainConfig(steps=4, warmup_steps=1, validate_every=10)))
    notes = {e.step: e.note for e in events[1:]}
    assert "non-finite" in notes[2] and "non-finite" in notes[4]  # the unlabeled steps (1 and 3) were skipped
    assert notes[1] == notes[3] == ""
    assert all(torch.isfinite(p).all() for p in runner.params)


def test_weak_prompts_are_mapped_into_the_unit_frame():
    coarse = np.zeros((1, 32, 32), bool)
    coarse[0, 2:6, 3:8] = True
    weak = WeakLabels(
        boxes=np.array([[4, 6, 10, 20]]),
        points=np.array([[8, 8], [8, 12], [30, 30]]),
        point_labels=np.array([1, 0, 1]),
        masks=coarse,
    )
    # A 32 × 32 image is resized ×2 into a 64 × 64 input: (row, col) → (x, y) = 2 × (col, row).
    prompts = weak_prompts(weak, 0, False, np.array([0, 0, 32, 32]), 2.0)
    boxes = [b.tolist() for b in prompts.boxes if b is not None]
    assert boxes == [[12, 8, 40, 20], [6, 4, 14, 10]]  # the box, then the coarse mask's bounding box
    points = [(p.tolist(), lab.tolist()) for p, lab in zip(prompts.points, prompts.labels) if p is not None]
    assert points == [([[16, 16], [24, 16]], [1, 0]), ([[60, 60], [24, 16]], [1, 0])]  # + the nearest negative
    # In a tile holding only the first quarter, the box (centre inside) is clipped and the far point dropped.
    quarter = weak_prompts(weak, 0, False, np.array([0, 0, 16, 16]), 1.0)
    assert [b.tolist() for b in quarter.boxes if b is not None] == [[6, 4, 15, 10], [3, 2, 7, 5]]
    assert len(quarter) == 3


def test_wesam_keeps_the_anchor_frozen_while_lora_learns(data):
    image = data.train[0].image
    data.weak = {image: WeakLabels(boxes=np.array([[10, 10, 30, 30], [40, 40, 60, 60]]))}
    model = make_model()
    runner = WeakSelfTraining(model, data, WeSAMSettings(), cache_root=False)
    weak_units = [p for u, p in zip(runner.units, runner.prompts) if u.item.image == image]
    assert [b.tolist() for b in weak_units[0].boxes] == [[10, 10, 30, 30], [40, 40, 60, 60]]
    anchor = {k: v.clone() for k, v in runner.anchor.sam.state_dict().items()}
    lora = lora_state(model.sam)
    level = runner.levels()[0]
    optimizer = torch.optim.AdamW(level.params, lr=1e-2)
    for step in range(3):
        optimizer.zero_grad()
        out = level.backward(step, np.random.default_rng(step))
        optimizer.step()
    assert {"loss", "focal", "dice", "iou_mse", "anchor", "contrastive"} <= out.keys()
    assert all(torch.equal(v, anchor[k]) for k, v in runner.anchor.sam.state_dict().items())
    assert not any(p.requires_grad for p in runner.anchor.sam.parameters())
    assert not any("lora_" in name for name, _ in runner.anchor.sam.named_parameters())
    assert any(not torch.equal(v, lora[k]) for k, v in lora_state(model.sam).items())
    cached = dict(runner._anchor_masks)
    assert cached  # the anchor's masks are computed once per unit and then reused
    level.backward(3, np.random.default_rng(0))
    assert all(runner._anchor_masks[i] is cached[i] for i in cached)


def test_wesam_ablation_drops_anchor_and_contrastive_terms(data):
    settings = WeSAMSettings(anchor=False, contrastive=False)
    runner = WeakSelfTraining(make_model(), data, settings, cache_root=False)
    assert runner.anchor is None
    out = runner.levels()[0].backward(0, np.random.default_rng(0))
    assert "anchor" not in out and "contrastive" not in out
    assert out["loss"] == pytest.approx(20 * out["focal"] + out["dice"] + out["iou_mse"], rel=1e-4)


SETTINGS = {"sum": SUMSettings(uncertainty="refinement", **LENIENT), "wesam": WeSAMSettings()}


@pytest.mark.parametrize("method", ["sum", "wesam"])
def test_fine_tune_runs_each_method(data, method):
    config = TrainConfig(steps=3, warmup_steps=1, validate_every=2)
    result = _finish(fine_tune(_confident_model(), data, method, SETTINGS[method], config, cache_root=False))
    assert result.training.stopped == "done" and result.training.steps == 3
    assert result.adapter.method == method
    if method == "wesam":
        assert result.adapter.lora is not None and "+lora:" in result.model.encoder_id
    else:
        assert "mask_decoder" in result.adapter.modules


@pytest.mark.parametrize("method", ["sum", "wesam"])
def test_cancel_leaves_the_original_model_untouched(data, method):
    model = _confident_model()
    before = {k: v.clone() for k, v in model.sam.state_dict().items()}
    calls = iter(range(100))
    config = TrainConfig(steps=10, warmup_steps=1, validate_every=5)
    generator = fine_tune(
        model, data, method, SETTINGS[method], config, should_stop=lambda: next(calls) >= 2, cache_root=False
    )
    result = _finish(generator)
    assert result.cancelled and result.training.steps == 2
    after = model.sam.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_pseudo_objects_pass_relative_thresholds_when_the_model_never_reaches_the_absolute_ones():
    logits = torch.full((4, 32, 32), -10.0)
    for i in range(4):  # four separate squares, certain (stability 1)
        logits[i, 8 * i : 8 * i + 6, 2:8] = 10.0
    scores = torch.tensor([0.2, 0.3, 0.4, 0.45])  # a small model's IoU head: never ≥ 0.7
    valid = torch.ones(32, 32, dtype=torch.bool)
    common = dict(min_score=0.7, min_stability=0.8, nms_iou=0.7, max_objects=8)
    assert len(sum_module.mask_proposals(logits, scores, valid, **common)) == 0
    kept = sum_module.mask_proposals(logits, scores, valid, quantile=0.5, **common)
    assert kept.tolist() == [3, 2]  # the upper half by score, best first
    high = torch.tensor([0.75, 0.8, 0.9, 0.95])  # scores above the absolute threshold: it still decides
    assert sum_module.mask_proposals(logits, high, valid, quantile=0.5, **common).tolist() == [3, 2, 1, 0]
