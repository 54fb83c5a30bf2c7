"""The shared training loop on toy methods: loss goes down, best-on-validation restore, time budget, cancel, NaN
guard, learning-rate schedules, two independent levels, early stopping and how often a budget is validated."""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pytest
import torch

from napari_samtune.core.jobs import drive
from napari_samtune.core.training.loop import (
    SCHEDULES,
    VALIDATIONS,
    Level,
    TrainConfig,
    TrainingError,
    run_training,
    validation_interval,
)

TARGET = torch.tensor([1.0, -2.0, 3.0])


def run(gen):
    """Iterate a training generator; return (events, result)."""
    events = []
    return events, drive(gen, events.append)


class Fit:
    """Fits a 3-vector to ``TARGET`` (loss = squared error, validation = −error, unless ``scores`` are given)."""

    name = "fit"

    def __init__(self, lr=0.1, scores=None, nan_steps=(), nan_grad_steps=(), sleep=0.0, linear=False):
        self.w = torch.nn.Parameter(torch.zeros(3))
        self.lr, self.scores, self.sleep, self.linear = lr, scores, sleep, linear
        self.nan_steps, self.nan_grad_steps = nan_steps, nan_grad_steps
        self.snapshots: list[torch.Tensor] = []  # the weights at each validation
        self.steps: list[int] = []

    def levels(self):
        return [Level("fit", [self.w], self.backward, self.lr)]

    def backward(self, step, rng):
        self.steps.append(step)
        if self.sleep:
            time.sleep(self.sleep)
        # linear: constant gradient, so each Adam update is exactly lr × schedule factor.
        loss = self.w.sum() if self.linear else ((self.w - TARGET) ** 2).sum()
        if self.nan_steps == "all" or step in self.nan_steps:
            loss = loss * math.nan
        loss.backward()
        if step in self.nan_grad_steps:
            self.w.grad[1] = math.inf
        return {"loss": float(loss.detach())}

    def validate(self):
        self.snapshots.append(self.w.detach().clone())
        if self.scores is not None:
            return self.scores[len(self.snapshots) - 1]
        return -float(((self.w - TARGET) ** 2).sum())


def test_loss_goes_down_and_events_count_the_steps():
    method = Fit(lr=0.2)
    events, result = run(run_training(method, TrainConfig(steps=60, warmup_steps=5, validate_every=20)))
    assert [e.step for e in events] == list(range(61))
    assert events[0].note == "initial validation" and events[0].validation == pytest.approx(-14.0)
    losses = [e.losses["loss"] for e in events[1:]]
    assert losses[0] == pytest.approx(14.0) and np.mean(losses[-5:]) < 0.05 * losses[0]
    assert [e.validation is not None for e in events[1:]].count(True) == 3
    assert result.stopped == "done" and result.steps == 60
    assert [h["step"] for h in result.history] == [0, 20, 40, 60]
    assert result.best_validation == max(h["validation"] for h in result.history) > -0.5
    assert torch.allclose(method.w.detach(), TARGET, atol=0.5)
    assert all(e.eta_s >= 0 for e in events[1:]) and events[-1].eta_s == 0


def test_best_validated_weights_are_restored_at_the_end():
    # Validations at steps 0, 5, 10, 15, 20: the score peaks at step 10.
    method = Fit(scores=[0.0, 0.3, 0.9, 0.5, 0.1])
    events, result = run(run_training(method, TrainConfig(steps=20, warmup_steps=0, validate_every=5)))
    assert result.best_validation == 0.9
    assert [e.best for e in events if e.validation is not None] == [0.0, 0.3, 0.9, 0.9, 0.9]
    best = method.snapshots[2]
    assert not torch.equal(best, method.snapshots[-1])  # the weights moved on after the best validation
    assert torch.equal(method.w.detach(), best)


def test_time_budget_stops_early_with_a_small_overrun():
    method = Fit(sleep=0.02)
    budget = 0.3
    events, result = run(run_training(method, TrainConfig(steps=10_000, time_budget_s=budget, validate_every=1000)))
    assert result.stopped == "budget"
    assert 3 <= result.steps < 10_000 and result.steps == len(method.steps)
    assert budget <= result.elapsed_s < budget + 0.25
    assert all(e.eta_s <= max(0.0, budget - e.elapsed_s) + 1e-9 for e in events[1:])
    # An early stop still validates the last weights.
    assert result.history[-1]["step"] == result.steps and len(method.snapshots) == 2


def test_should_stop_cancels_between_steps():
    method = Fit()
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) > 3

    events, result = run(run_training(method, TrainConfig(steps=100), should_stop))
    assert result.stopped == "cancelled" and result.steps == 3
    assert method.steps == [0, 1, 2]
    assert events[-1].step == 3
    assert result.history[-1]["step"] == 3


def test_a_nan_loss_skips_the_step_and_halves_the_learning_rate():
    lr = 0.01
    method = Fit(lr=lr, nan_steps=(3,), linear=True, scores=[0.0, 1.0])
    config = TrainConfig(steps=8, warmup_steps=0, schedule="constant", validate_every=100)
    weights = []

    def record():
        weights.append(method.w.detach().clone())
        return False

    events, result = run(run_training(method, config, should_stop=record))
    assert result.stopped == "done" and result.steps == 8 and method.steps == list(range(8))
    assert [e.lr for e in events[1:]] == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5]
    assert "non-finite loss or gradient: step skipped, learning rate halved (1 in a row)" in events[4].note
    assert all(e.note == "" for e in events[5:])
    # The actual Adam updates (constant gradient: update = lr): lr, then nothing on the bad step, then lr / 2.
    weights.append(method.w.detach().clone())
    updates = [float((a - b)[0]) for a, b in itertools.pairwise(weights)]
    np.testing.assert_allclose(updates, [lr, lr, lr, 0, lr / 2, lr / 2, lr / 2, lr / 2], atol=1e-6)
    assert torch.isfinite(method.w).all()


def test_a_non_finite_gradient_is_caught_like_a_non_finite_loss():
    method = Fit(nan_grad_steps=(2,))
    events, result = run(run_training(method, TrainConfig(steps=5, warmup_steps=0, schedule="constant")))
    assert "step skipped" in events[3].note and events[3].lr == 0.5
    assert torch.isfinite(method.w).all() and result.steps == 5


def test_nan_at_every_step_raises_after_max_bad_steps_and_restores_the_best_good_weights():
    # Good steps 0–9, validated at 5 (the best score) and 10, then NaN forever.
    method = Fit(nan_steps=range(10, 100), scores=[0.0, 1.0, 0.5])
    config = TrainConfig(steps=100, warmup_steps=0, schedule="constant", validate_every=5, max_bad_steps=4)
    gen = run_training(method, config)
    events = []
    with pytest.raises(TrainingError, match="NaN/inf 4 times in a row even with the learning rate lowered 8x") as error:
        for event in gen:
            events.append(event)
    assert "restored to its last good weights" in str(error.value)
    assert method.steps == list(range(14))
    assert [e.lr for e in events[-3:]] == [0.5, 0.25, 0.125]
    assert len(method.snapshots) == 3 and not torch.equal(method.snapshots[1], method.snapshots[2])
    assert torch.equal(method.w.detach(), method.snapshots[1])


def test_nan_from_the_first_step_keeps_the_initial_weights():
    method = Fit(nan_steps="all")
    with pytest.raises(TrainingError):
        run(run_training(method, TrainConfig(steps=50, max_bad_steps=3)))
    assert method.steps == [0, 1, 2]
    assert torch.equal(method.w.detach(), torch.zeros(3))


@pytest.mark.parametrize("schedule", sorted(set(SCHEDULES) - {"onecycle"}))
def test_schedules_warm_up_then_decay(schedule):
    config = TrainConfig(steps=200, warmup_steps=10, schedule=schedule, min_lr_ratio=0.05)
    factors = np.array([config.lr_factor(s) for s in range(200)])
    np.testing.assert_allclose(factors[:10], np.arange(1, 11) / 10)
    after = factors[10:]
    if schedule == "constant":
        np.testing.assert_allclose(after, 1.0)
        return
    assert after[0] == pytest.approx(1.0)
    assert np.all(np.diff(after) <= 1e-12), "the learning rate must not rise again after the warm-up"
    assert after[-1] < 0.1 and factors.min() > 0
    assert config.lr_factor(10_000) == pytest.approx(factors[-1], abs=0.02)
    if schedule in ("cosine", "poly"):
        assert factors[-1] == pytest.approx(0.05, abs=0.01)
    if schedule == "step":
        assert sorted(set(np.round((after - 0.05) / 0.95, 6))) == [0.01, 0.1, 1.0]


def test_onecycle_ramps_up_once_then_decays():
    # One cycle brings its own ramp: the linear warm-up is not stacked before it (the rate would fall back after it).
    config = TrainConfig(steps=200, warmup_steps=10, schedule="onecycle", min_lr_ratio=0.05)
    factors = np.array([config.lr_factor(s) for s in range(200)])
    peak = int(np.argmax(factors))
    assert factors[peak] == pytest.approx(1.0) and 0.1 * 200 <= peak <= 0.25 * 200
    assert factors[0] < 0.5
    assert np.all(np.diff(factors[: peak + 1]) >= 0) and np.all(np.diff(factors[peak:]) <= 1e-12)
    assert factors[-1] == pytest.approx(0.05, abs=0.01)


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError, match="schedule must be one of"):
        TrainConfig(schedule="linear")
    with pytest.raises(ValueError, match="steps must be"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="time budget must be > 0"):
        TrainConfig(time_budget_s=0)


class TwoLevels:
    """Two parameters trained at different levels and rates; the inner loss also touches the outer parameter."""

    name = "two"

    def __init__(self):
        self.inner = torch.nn.Parameter(torch.zeros(2))
        self.outer = torch.nn.Parameter(torch.zeros(2))
        self.grads_seen = []

    def levels(self):
        return [
            Level("inner", [self.inner], self.inner_backward, 0.1),
            Level("outer", [self.outer], self.outer_backward, 0.01),
        ]

    def inner_backward(self, step, rng):
        loss = (self.inner - 1).pow(2).sum() + (self.outer * self.inner).sum()
        loss.backward()
        return {"loss": float(loss.detach())}

    def outer_backward(self, step, rng):
        # The inner level's gradient on ``outer`` must not leak into this level's step.
        self.grads_seen.append(None if self.outer.grad is None else self.outer.grad.clone())
        loss = (self.outer + 1).pow(2).sum()
        loss.backward()
        return {"loss": float(loss.detach()), "extra": 1.0}

    def validate(self):
        return -float((self.inner - 1).pow(2).sum() + (self.outer + 1).pow(2).sum())


def test_two_levels_step_independently():
    method = TwoLevels()
    events, result = run(run_training(method, TrainConfig(steps=5, warmup_steps=0, schedule="constant")))
    assert set(events[1].losses) == {"inner/loss", "outer/loss", "outer/extra"}
    assert all(g is None for g in method.grads_seen)
    # Adam with a consistent gradient sign moves each level by its own lr per step.
    np.testing.assert_allclose(method.inner.detach().numpy(), [0.5, 0.5], atol=1e-4)
    np.testing.assert_allclose(method.outer.detach().numpy(), [-0.05, -0.05], atol=1e-4)
    assert result.steps == 5


class DivergesLate(Fit):
    """Fits ``TARGET`` for ``good_steps`` steps, then the loss turns into its opposite (a schedule gone wrong): the
    weights run away from the target while the true validation (−error) falls."""

    def __init__(self, good_steps: int):
        super().__init__(lr=0.2)
        self.good_steps = good_steps

    def backward(self, step, rng):
        self.steps.append(step)
        error = ((self.w - TARGET) ** 2).sum()
        (error if step < self.good_steps else -error).backward()
        return {"loss": float(error.detach())}


def test_a_run_that_diverges_late_returns_the_earlier_validated_state():
    method = DivergesLate(good_steps=40)
    _, result = run(run_training(method, TrainConfig(steps=80, warmup_steps=0, schedule="constant")))
    final_error = float(((method.snapshots[-1] - TARGET) ** 2).sum())
    returned_error = float(((method.w.detach() - TARGET) ** 2).sum())
    assert final_error > 10  # the last weights went far away
    assert returned_error < 0.5 and result.best_validation == pytest.approx(-returned_error, abs=1e-5)
    assert result.best_validation == max(h["validation"] for h in result.history) > result.history[-1]["validation"]


def test_a_run_that_only_gets_worse_returns_the_starting_weights():
    method = DivergesLate(good_steps=0)
    run(run_training(method, TrainConfig(steps=30, warmup_steps=0)))
    assert torch.equal(method.w.detach(), torch.zeros(3))


def test_default_validation_interval_fits_the_steps_the_budget_affords():
    budget = TrainConfig(steps=300, time_budget_s=60)
    # 3 s per step: 20 steps fit, so about every 2 steps (not every 25 as a fixed interval would).
    assert validation_interval(budget, 1, 3.0, 3.0, 0.1) == 2
    # No budget: about VALIDATIONS over the schedule.
    assert validation_interval(TrainConfig(steps=300), 1, 0.1, 0.1, 0.01) == 300 // VALIDATIONS
    # A validation that costs 10 steps: spaced so that it takes at most a quarter of the time ...
    assert validation_interval(TrainConfig(steps=300), 1, 0.1, 0.1, 1.0) == 40
    # ... but still three times over what fits.
    assert validation_interval(budget, 10, 30.0, 3.0, 30.0) == 7
    assert validation_interval(TrainConfig(validate_every=7), 1, 1.0, 1.0, 1.0) == 7


def test_a_short_budget_validates_several_times():
    method = Fit(sleep=0.02)
    _, result = run(run_training(method, TrainConfig(steps=10_000, time_budget_s=0.4)))
    assert 5 <= result.steps <= 25
    assert len(result.history) >= 5  # the start, several during the run, the last weights


def test_a_validation_that_cannot_tell_states_apart_keeps_the_trained_weights():
    # Partial labels leave a held-out block of a few objects that no state finds at first: every validation reads 0.
    # The untrained start is not better than the trained weights, so they are returned.
    method = Fit(scores=[0.0, 0.0, 0.0, 0.0, 0.0])
    _, result = run(run_training(method, TrainConfig(steps=20, warmup_steps=0, validate_every=5)))
    assert result.best_validation == 0.0
    assert not torch.equal(method.w.detach(), torch.zeros(3))
    assert torch.equal(method.w.detach(), method.snapshots[-1])
