"""A trial: one configuration trained on the user's data, advanced rung by rung and resumed from where it paused.

Resuming is keeping the training loop's generator alive: between rungs it sits paused after its validation event,
with its model copy, optimiser state, schedule position and best weights intact, and the next rung pulls more events
from it. Nothing is retrained. The trial measures its own costs (setup, seconds per step and per validation) and
keeps a copy of its best validated trainable weights, so it can be stopped at any point (even mid-rung, when the
budget runs out) and still hand over its best model without another validation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from ...models.registry import SamModel
from ..data import TrainingData
from ..loop import TrainEvent, TrainingError, TrainResult, run_training
from ..methods import FineTuneResult, package_result, start_method
from .space import Configuration


class Trial:
    """``config`` on ``data`` from ``model`` (never modified: the trial trains a copy).

    state: "new" (not set up), "paused" (between rungs, resumable), "done" (schedule finished), "stopped"
    (diverged, cut by the budget or released: not resumable). curve: validation scores at rungs 0..k−1.
    predicted: seconds of "setup_s", "step_s", "validation_s" expected before they are observed (set by the search).
    clock: what costs are measured with (wall clock; ``time.process_time`` measures the CPU seconds of a
    single-threaded process, unaffected by other processes on a shared machine, as the meta-knowledge build does).
    """

    def __init__(
        self,
        config: Configuration,
        model: SamModel,
        data: TrainingData,
        *,
        seed: int = 0,
        cache_root: str | Path | bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.clock = clock
        self.method, self.settings, self.train_config = config.to_settings(seed)
        self.model, self.data, self.cache_root = model, data, cache_root
        self.state = "new"
        self.curve: list[float] = []
        self.steps_done = 0
        self.best = -math.inf
        self.note = ""
        self.predicted: dict[str, float] = {}
        self.setup_s: float | None = None
        self.validation_s: float | None = None
        self._step_times: list[float] = []
        self._validation_times: list[float] = []
        self.history: list[dict] = []
        self.work: SamModel | None = None
        self.runner = None
        self._generator: Iterator[TrainEvent] | None = None
        self._params: list[torch.nn.Parameter] = []
        self._best_state: list[torch.Tensor] = []

    @property
    def rungs_done(self) -> int:
        """Rungs validated after training (0 before the first rung; the initial validation is not counted)."""
        return max(0, len(self.curve) - 1)

    @property
    def every(self) -> int:
        return self.train_config.validate_every

    @property
    def step_s(self) -> float | None:
        """Observed seconds per training step (mean of the recent steps), None before the first step."""
        return float(sum(self._step_times[-20:]) / len(self._step_times[-20:])) if self._step_times else None

    @property
    def resumable(self) -> bool:
        return self.state in ("new", "paused")

    def expected(self, name: str) -> float:
        """Seconds of "setup_s", "step_s" or "validation_s": observed when known, else predicted, else 0."""
        observed = getattr(self, name)
        return float(observed) if observed is not None else self.predicted.get(name, 0.0)

    def next_rung_s(self) -> float:
        """Expected seconds of the next ``advance`` (for a new trial: setup and initial validation included)."""
        seconds = self.every * self.expected("step_s") + self.expected("validation_s")
        if self.state == "new":
            seconds += self.expected("setup_s") + self.expected("validation_s")
        return seconds

    def advance(self, may_run: Callable[[float], bool] = lambda seconds: True) -> Iterator[TrainEvent]:
        """Run to the next rung (a new trial first sets up and validates the untrained model: rung 0); yields the
        loop's events.

        ``may_run(seconds)`` is asked before the setup and before each step with its expected seconds (a step at a
        rung with its validation); False stops the trial there (state "stopped", best weights kept). Divergence
        also stops it.
        """
        if not self.resumable:
            raise RuntimeError(f"trial {self.config.summary()} is {self.state} and cannot be advanced")
        if self.state == "new":
            if not may_run(self.expected("setup_s") + self.expected("validation_s")):
                self.stop("budget")
                return
            yield from self._set_up()
        target = self.steps_done + self.every
        while self.steps_done < target:
            expected = self.expected("step_s") + self.expected("validation_s") * (self.steps_done + 1 == target)
            if not may_run(expected):
                self.stop("budget")
                return
            started = self.clock()
            try:
                event = next(self._generator, None)
            except TrainingError as error:
                self.note = str(error)
                self.stop("diverged")
                return
            if event is None:  # the loop has ended
                self.state = "done"
                return
            seconds = self.clock() - started
            self.steps_done = event.step
            if event.validation is None:
                self._step_times.append(seconds)
            else:  # a step and a validation
                self._validation_times.append(max(0.0, seconds - self.expected("step_s")))
                self._observe(event)
            yield event
        if self.steps_done >= self.train_config.steps:
            self._finish_generator()

    def _set_up(self) -> Iterator[TrainEvent]:
        started = self.clock()
        self.work, self.runner = start_method(self.model, self.data, self.method, self.settings, self.cache_root)
        self._params = [p for level in self.runner.levels() for p in level.params]
        self.setup_s = self.clock() - started
        self._generator = run_training(self.runner, self.train_config, device=self.work.device)
        started = self.clock()
        event = next(self._generator)  # the initial validation
        self._validation_times.append(self.clock() - started)
        self.state = "paused"
        self._observe(event)
        yield event

    def _observe(self, event: TrainEvent) -> None:
        self.curve.append(float(event.validation))
        self.history.append({"step": event.step, "validation": event.validation, **event.losses})
        self.validation_s = float(np.mean(self._validation_times[-5:]))
        if event.validation > self.best:
            self.best = float(event.validation)
            self._best_state = [p.detach().clone() for p in self._params]

    def _finish_generator(self) -> None:
        # The schedule is complete and validated: pulling once more only ends the loop (it restores the best weights).
        if next(self._generator, None) is None:
            self.state = "done"

    def stop(self, reason: str) -> None:
        """Close the loop (no further work, no extra validation); the best weights stay available."""
        if self._generator is not None:
            self._generator.close()
        self.state = "stopped"
        self.note = self.note or reason

    def release(self) -> None:
        """Free the model copy and the loop (the curve and costs stay); the trial can no longer be resumed."""
        self.stop("released")
        self.work = self.runner = self._generator = None
        self._params, self._best_state = [], []

    def package(self, stopped: str, elapsed_s: float, metrics: dict | None = None) -> FineTuneResult:
        """The trial's best validated weights as a ``FineTuneResult`` (its adapter included)."""
        if self.work is None:
            raise RuntimeError("the trial was released: its model is gone")
        with torch.no_grad():
            for p, s in zip(self._params, self._best_state):
                p.copy_(s)
        training = TrainResult(self.steps_done, self.best, stopped, elapsed_s, list(self.history))
        return package_result(
            self.model, self.work, self.runner, self.data, self.method, self.settings, self.train_config, training,
            metrics,
        )  # fmt: skip
