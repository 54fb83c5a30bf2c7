"""Automatic fine-tuning: the search space, resumed trials, the meta-knowledge and its predictors, and a search that
keeps to its time budget."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
import peft  # noqa: F401  (a one-off import of seconds: not what the budget test measures)
import pytest
import torch

from napari_samtune.core.jobs import drive
from napari_samtune.core.training.auto import AutoSettings, Configuration, SearchSpace, load_meta_knowledge
from napari_samtune.core.training.auto.features import dataset_features, dataset_vector, predictor_input
from napari_samtune.core.training.auto.knowledge import (
    MetaKnowledgeError,
    fit_meta_knowledge,
    read_records,
    save_meta_knowledge,
)
from napari_samtune.core.training.auto.search import expected_improvement
from napari_samtune.core.training.auto.space import RUNGS, encode, encoding_width, space_version
from napari_samtune.core.training.auto.trial import Trial
from napari_samtune.core.training.data import TrainingData, prepare_training_data
from napari_samtune.core.training.fine_tune import fine_tune
from napari_samtune.core.training.interactive import InteractiveSettings
from napari_samtune.core.training.loop import TrainConfig

from .conftest import disc_images, make_model

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def discs(n: int = 4, size: int = 64, seed: int = 0) -> TrainingData:
    """Bright discs (two objects per image) on a dark, noisy background, as instance labels."""
    return prepare_training_data(*disc_images(n, size, seed), task="instances")


def cheap(config: Configuration, **changes) -> Configuration:
    """``config`` with a small batch and no corrective rounds: milliseconds per step on the tiny model."""
    return config.replace(units_per_step=1, objects_per_unit=2, corrective_rounds=0, **changes)


def test_sampled_configurations_validate_encode_and_round_trip_through_json():
    space = SearchSpace(("interactive", "blo", "sum"))
    rng = np.random.default_rng(0)
    configs = [space.sample(rng) for _ in range(60)]
    assert {c["method"] for c in configs} == {"interactive", "blo", "sum"}
    for config in configs:
        assert Configuration.from_json(config.to_json()) == config
        assert config["steps"] % RUNGS == 0
        assert ("lora_rank" in config) == config["lora"]
        vector = encode(config)
        assert vector.shape == (encoding_width(),) and vector.min() >= 0 and vector.max() <= 1
        method, settings, train = config.to_settings(seed=3)
        assert method == config["method"] and settings.lr == config["lr"] and train.seed == 3
        assert train.validate_every * RUNGS == train.steps
    again = np.random.default_rng(0)
    assert [space.sample(again) for _ in range(60)] == configs  # sampling is seeded


def test_the_default_configuration_is_the_packages_default_settings():
    method, settings, train = SearchSpace().default().to_settings()
    assert method == "interactive" and settings == InteractiveSettings()
    assert (train.schedule, train.min_lr_ratio, train.grad_clip) == ("cosine", 0.05, 1.0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"lr": 1.0}, "lr must be in"),
        ({"steps": 100}, "multiple of 8"),
        ({"schedule": "linear"}, "schedule must be one of"),
        ({"lora_rank": 4}, "does not apply"),
        ({"n_tokens": 4}, "does not apply"),
        ({"colour": "red"}, "unknown configuration keys"),
        ({"train_decoder": False}, "nothing to train"),
        ({"corrective_rounds": 1.5}, "whole number"),
    ],
)
def test_invalid_configurations_are_rejected_with_the_reason(change, message):
    values = {**SearchSpace().default(), **change}
    with pytest.raises(ValueError, match=message):
        Configuration(values)


def test_a_resumed_trial_continues_from_its_own_state_not_from_scratch():
    model, data = make_model(), discs()
    base = {n: p.detach().clone() for n, p in model.sam.named_parameters()}
    config = cheap(SearchSpace().default(), lr=3e-3, steps=2 * RUNGS)
    first = Trial(config, model, data, cache_root=False)
    events = list(first.advance())
    assert [e.step for e in events] == [0, 1, 2] and first.state == "paused" and len(first.curve) == 2
    paused = [p.detach().clone() for p in first._params]
    assert any(not torch.equal(p, base[n]) for n, p in first.work.sam.named_parameters())  # it trained

    other = Trial(cheap(SearchSpace().default(), lr=1e-2, steps=2 * RUNGS), model, data, cache_root=False)
    list(other.advance())  # another configuration trains in between

    assert all(torch.equal(p, q) for p, q in zip(first._params, paused))  # untouched while paused
    resumed = list(first.advance())
    assert [e.step for e in resumed] == [3, 4]  # the step counter goes on
    assert resumed[0].lr == pytest.approx(first.train_config.lr_factor(2))  # and so does the schedule
    assert len(first.curve) == 3 and first.steps_done == 4
    assert not all(torch.equal(p, q) for p, q in zip(first._params, paused))
    assert all(torch.equal(p, base[n]) for n, p in model.sam.named_parameters())  # the base model never changes


def fake_records(n: int = 40, seed: int = 0) -> list[dict]:
    """Curves whose level falls with the distance of log10(lr) from -3.5, on two made-up data sets."""
    rng = np.random.default_rng(seed)
    space = SearchSpace(("interactive",))
    features = dataset_features(discs())
    records = []
    for i in range(n):
        config = space.sample(rng)
        level = max(0.05, 0.8 - 0.25 * abs(np.log10(config["lr"]) + 3.5))
        curve = [0.3 + (level - 0.3) * (1 - np.exp(-3 * r / RUNGS)) for r in range(RUNGS + 1)]
        records.append(
            {
                "dataset": f"set{i % 2}",
                "task": f"set{i % 2}/instances",
                "config": dict(config),
                "features": features,
                "curve": [float(v + rng.normal(0, 0.01)) for v in curve],
                "diverged": False,
                "setup_s": 1.0,
                "step_s": 0.1 * (1 + config["lora"]),
                "validation_s": 0.2,
                "space_version": space_version(),
            }
        )
    return records


def test_meta_knowledge_fits_saves_loads_and_leaves_a_data_set_out(tmp_path):
    records = fake_records()
    cut = {**records[0], "curve": [], "cut": True}  # too slow to run: only its costs were measured
    meta = fit_meta_knowledge([*records, cut], members=2, epochs=150)
    assert meta.info["curves"] == 40 and meta.info["datasets"] == {"set0": 20, "set1": 20}
    assert meta.info["cost_records"] == 41 and meta.info["tasks"] == {"set0/instances": 20, "set1/instances": 20}
    path = save_meta_knowledge(meta, tmp_path / "meta.npz")
    loaded = load_meta_knowledge(path)
    x = np.stack([fake_input(lr) for lr in (3e-4, 1e-1)])
    assert np.allclose(meta.performance.predict(x), loaded.performance.predict(x), atol=1e-5)
    good, bad = loaded.performance.predict(x)[0]
    assert bad < good  # it learned the learning-rate effect from the curves
    lora = SearchSpace().default().replace(lora=True)
    costs = loaded.cost.predict(
        np.stack([np.concatenate([encode(c), fake_vector()]) for c in (lora.replace(lora=False), lora)])
    )
    assert costs["step_s"][1] > 1.5 * costs["step_s"][0]

    left_out = fit_meta_knowledge(records, exclude=["set1"], members=1, epochs=10)
    assert left_out.info["datasets"] == {"set0": 20} and left_out.info["excluded"] == ["set1"]
    with pytest.raises(MetaKnowledgeError, match="usable learning curves"):
        fit_meta_knowledge(records, exclude=["set0", "set1"])
    stale = [{**r, "space_version": "other"} for r in records]
    with pytest.raises(MetaKnowledgeError):
        fit_meta_knowledge(stale)


def fake_vector() -> np.ndarray:
    return dataset_vector(dataset_features(discs()))


def fake_input(lr: float, steps: int = 64) -> np.ndarray:
    config = SearchSpace().default().replace(lr=lr, steps=steps)
    return predictor_input(encode(config), fake_vector(), steps, [], RUNGS)


def test_the_shipped_meta_knowledge_ranks_a_learning_rate_of_0_1_below_the_default():
    meta = load_meta_knowledge()
    assert "interactive" in meta.methods
    assert meta.info["model"] == "samtune_small" and meta.info["curves"] >= 20  # real curves, not a smoke build
    # On every task it was built from, and on a made-up one (the discs), for short and long schedules.
    vectors = [dataset_vector(f) for f in meta.info["task_features"].values()] + [fake_vector()]
    for vector in vectors:
        for steps in (16, 64, 256):
            good, bad = (SearchSpace().default().replace(lr=lr, steps=steps) for lr in (3e-4, 1e-1))
            x = np.stack([predictor_input(encode(c), vector, steps, [], RUNGS) for c in (good, bad)])
            mean, std = meta.performance.predict(x)
            assert mean[1] < mean[0], (steps, vector)
            assert np.all(std > 0)


def test_expected_improvement():
    assert expected_improvement(0.5, 0.0, 0.4) == pytest.approx(0.1)
    assert expected_improvement(0.3, 0.0, 0.4) == 0.0
    assert expected_improvement(0.4, 0.1, 0.4) == pytest.approx(0.1 / np.sqrt(2 * np.pi))
    assert expected_improvement(0.3, 0.2, 0.4) > expected_improvement(0.3, 0.1, 0.4)


def test_the_search_keeps_to_a_short_budget_and_returns_the_best_trial():
    budget = 8.0
    settings = AutoSettings(candidates=8, initial=2, max_live=2, min_search_steps=0)
    started = time.monotonic()
    run = fine_tune(make_model(), discs(), "auto", settings, TrainConfig(time_budget_s=budget), cache_root=False)
    events = []
    result = drive(run, events.append)
    elapsed = time.monotonic() - started
    assert elapsed <= budget * 1.05 + 0.5
    assert events and all(e.elapsed_s <= budget for e in events)
    auto = result.adapter.metrics["auto"]
    assert result.training.stopped in ("budget", "done") and auto["budget_s"] == budget
    started_trials = [t for t in auto["trials"] if t["curve"]]
    assert started_trials and result.training.best_validation == max(t["best"] for t in started_trials)
    assert result.adapter.method == auto["chosen"]["method"]


def test_a_budget_too_short_to_search_trains_the_default_configuration_for_all_of_it():
    budget = 6.0
    settings = AutoSettings(candidates=8, min_search_steps=10**6)
    started = time.monotonic()
    run = fine_tune(make_model(), discs(), "auto", settings, TrainConfig(time_budget_s=budget), cache_root=False)
    result = drive(run)
    elapsed = time.monotonic() - started
    auto = result.adapter.metrics["auto"]
    assert auto["searched"] is False and len(auto["trials"]) == 1
    (trial,) = auto["trials"]
    assert trial["config"] == dict(SearchSpace().default().replace(steps=trial["config"]["steps"]))
    assert result.training.steps == trial["steps"] > 0 and result.training.stopped in ("budget", "done")
    if result.training.stopped == "budget":  # trained for the whole budget, not for a share of it, and no longer
        assert 0.8 * budget <= elapsed <= budget * 1.05 + 0.5
    else:
        assert result.training.steps == trial["config"]["steps"]


def test_auto_needs_a_budget_that_fits_something():
    with pytest.raises(ValueError, match="needs a time budget"):
        next(fine_tune(make_model(), discs(), "auto"))
    with pytest.raises(ValueError, match="too short"):
        next(fine_tune(make_model(), discs(), "auto", config=TrainConfig(time_budget_s=0.01)))


def test_the_meta_knowledge_build_records_runs_once_and_resumes_without_redoing_them(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("build_meta_knowledge", SCRIPTS / "build_meta_knowledge.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    records, output = tmp_path / "records.jsonl", tmp_path / "meta.npz"
    argv = [
        "--model", "tiny", "--records", str(records), "--output", str(output), "--kinds", "lesion", "--datasets",
        "--methods", "blo", "--configs", "1", "--lr-ladder", "1e-1", "--steps", "16", "--images", "3", "--size", "64",
        "--members", "1", "--epochs", "5",
    ]  # fmt: skip
    with pytest.raises(MetaKnowledgeError, match="0 usable learning curves"):
        build.main([*argv, "--cpu-minutes", "0"])  # no CPU time at all: no run, so nothing to fit
    assert not read_records(records) and not output.exists()
    capsys.readouterr()
    build.main(argv)
    first = read_records(records)
    assert [r["config"]["lr"] for r in first] == [3e-4, 1e-1, first[2]["config"]["lr"]]
    assert {r["task"] for r in first} == {"synthetic-lesion/foreground"}
    assert all(len(r["curve"]) == RUNGS + 1 or r["diverged"] for r in first)
    info = load_meta_knowledge(output).info
    assert info["tasks"] == {"synthetic-lesion/foreground": 3} and info["model_sha256"] == "random-seed0"
    build.main(argv)  # resumed: everything is recorded already
    assert "3 already recorded" in capsys.readouterr().out
    assert read_records(records) == first
