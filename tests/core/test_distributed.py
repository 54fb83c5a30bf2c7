"""Fine-tuning in two processes (torch.distributed, gloo on CPU) takes the same steps as one process given the same
global batch: the union of the ranks' micro-batches, their gradients averaged."""

from __future__ import annotations

import os
import socket

import numpy as np
import torch
import torch.multiprocessing as mp

from napari_samtune.core.training import distributed
from napari_samtune.core.training.data import prepare_training_data
from napari_samtune.core.training.interactive import InteractiveFineTuning, InteractiveSettings
from napari_samtune.core.training.loop import Level, TrainConfig, run_training
from napari_samtune.core.training.units import Augmentation

from .conftest import make_model
from .test_interactive import disc_scenes

WORLD = 2
CONFIG = TrainConfig(steps=4, warmup_steps=1, validate_every=100, seed=3)
SETTINGS = InteractiveSettings(
    units_per_step=2, objects_per_unit=2, corrective_rounds=1, augmentation=Augmentation.none()
)


def _data():
    images, labels = disc_scenes(6, 64, (5, 9), per_image=2, seed=1)
    return prepare_training_data(images, labels, all_objects_labeled=True)


class LastIsBest:
    """``method`` whose validation improves at every call, so the loop ends on the last weights (not the best)."""

    def __init__(self, method) -> None:
        self.method, self.name, self.calls = method, method.name, 0

    def levels(self):
        return self.method.levels()

    def validate(self) -> float:
        self.calls += 1
        return float(self.calls)


class Regression:
    """Least squares on fixed samples (the whole shard each step): the batch does not depend on the random stream."""

    name = "regression"

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y
        torch.manual_seed(0)
        self.w = torch.nn.Parameter(torch.zeros(x.shape[1]))

    def levels(self):
        return [Level("fit", [self.w], self._backward, 0.05)]

    def _backward(self, step, rng):
        loss = ((self.x @ self.w - self.y) ** 2).mean()
        loss.backward()
        return {"loss": float(loss.detach())}

    def validate(self) -> float:
        return -float(((self.x @ self.w - self.y) ** 2).mean())


def _samples():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, generator=g)
    return x, x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(8, generator=g)


def _trained(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.sam.mask_decoder.parameters()]


def _run(gen):
    """Iterate a training generator; return (events, its return value)."""
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            return events, stop.value


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    group = distributed.init_from_env(device="cpu")
    try:
        data, model = _data(), make_model()
        method = InteractiveFineTuning(model, distributed.shard_data(data, rank, WORLD), SETTINGS, cache_root=False)
        events, _ = _run(distributed.run_training_distributed(LastIsBest(method), CONFIG, group))
        x, y = _samples()
        regression = Regression(x[rank::WORLD], y[rank::WORLD])
        _run(distributed.run_training_distributed(regression, CONFIG, group))
        run = distributed.distributed_fine_tune(
            make_model(), data, group, "interactive", SETTINGS, CONFIG, cache_root=False
        )
        _, tuned = _run(run)
        result = {
            "params": _trained(model),
            "losses": [e.losses["loss"] for e in events if "loss" in e.losses],
            "regression": regression.w.detach().clone(),
            "tuned": _trained(tuned.model),
            "tuned_steps": tuned.training.steps,
        }
        torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    finally:
        distributed.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GlobalBatch:
    """One process, the global batch of two ranks: each shard's micro-batch with that rank's random stream, the
    gradients averaged (what the two processes compute together)."""

    name = "interactive"

    def __init__(self, model, data) -> None:
        self.shards = [
            InteractiveFineTuning(model, distributed.shard_data(data, r, WORLD), SETTINGS, cache_root=False)
            for r in range(WORLD)
        ]
        self.params = self.shards[0].params
        self.calls = 0

    def levels(self):
        return [Level("model", self.params, self._backward, SETTINGS.lr, SETTINGS.weight_decay)]

    def _backward(self, step, rng):
        losses = [m._backward(step, distributed.per_rank_rng(CONFIG.seed, step, r)) for r, m in enumerate(self.shards)]
        for p in self.params:
            if p.grad is not None:
                p.grad /= WORLD
        return {"loss": float(np.mean([loss["loss"] for loss in losses]))}

    def validate(self) -> float:
        self.calls += 1
        return float(self.calls)


def test_two_gloo_processes_take_the_steps_of_one_process_with_the_same_global_batch(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    model = make_model()
    events, _ = _run(run_training(GlobalBatch(model, _data()), CONFIG))
    start = _trained(make_model())
    assert any(not torch.equal(a, b) for a, b in zip(_trained(model), start)), "training moved the decoder"
    for rank in ranks:
        for a, b in zip(rank["params"], _trained(model)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert np.allclose(ranks[0]["losses"], [e.losses["loss"] for e in events if "loss" in e.losses], atol=1e-6)

    x, y = _samples()  # a batch that does not depend on the random stream: two halves == the whole, plainly
    whole = Regression(x, y)
    _run(run_training(whole, CONFIG))
    for rank in ranks:
        torch.testing.assert_close(rank["regression"], whole.w.detach(), rtol=0, atol=1e-6)

    assert ranks[0]["tuned_steps"] == CONFIG.steps
    for a, b in zip(ranks[0]["tuned"], ranks[1]["tuned"]):  # rank 0's best weights reach every rank
        assert torch.equal(a, b)
