"""The one training loop every adaptation method runs in.

A method supplies *levels* (one for plain fine-tuning; two for bi-level prompt learning), each with its parameters
and a function that computes its loss and calls ``backward``; and a validation metric. The loop owns everything else:
optimisers, learning-rate schedule, gradient clipping, bf16 autocast on CUDA, the NaN/inf guard, best-on-validation
weights, the time budget, cancellation and progress events. It is a generator: iterate it, or wrap it in tqdm or a
napari worker.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np
import torch

from ..errors import SamtuneError


class TrainingError(SamtuneError, RuntimeError):
    """Training could not go on; the model was restored to its last good state."""


@dataclass(frozen=True)
class TrainConfig:
    """Settings shared by every method. ``steps`` is the schedule length; ``time_budget_s`` (wall-clock seconds of
    training, encoding the images before it not included) may stop earlier. ``validate_every``: steps between
    validations; None (default) validates about ``VALIDATIONS`` times over the steps that fit (the schedule's, or
    fewer when the time budget affords fewer at the measured step time), validating at most about a quarter of the
    time. Whatever stops the run, the weights returned are the best validated ones (the starting weights included);
    among equally validated states the latest: a validation that cannot tell them apart (e.g. a small held-out block
    where no state yet finds an object) is no reason to hand back the untrained start."""

    steps: int = 300
    time_budget_s: float | None = None
    schedule: str = "cosine"  # cosine | constant | step | poly | onecycle
    warmup_steps: int = 10
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    validate_every: int | None = None
    seed: int = 0
    max_bad_steps: int = 5
    amp: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be ≥ 1, got {self.steps}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {self.schedule!r}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ValueError(f"time budget must be > 0 seconds, got {self.time_budget_s}")
        if self.validate_every is not None and self.validate_every < 1:
            raise ValueError(
                f"validate_every must be ≥ 1 step (or None: chosen from the budget), got {self.validate_every}"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    def lr_factor(self, step: int) -> float:
        if self.schedule == "onecycle":
            # One cycle ramps up by itself (its first 20 %); after a linear warm-up it would drop back to a quarter.
            return self.min_lr_ratio + (1 - self.min_lr_ratio) * SCHEDULES["onecycle"](min(1.0, step / self.steps))
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * SCHEDULES[self.schedule](progress)


VALIDATIONS = 10  # validations aimed at over a run when ``validate_every`` is None
MAX_VALIDATION_SHARE = 0.25  # of the training time, when ``validate_every`` is None


def validation_interval(config: TrainConfig, step: int, elapsed_s: float, step_s: float, validation_s: float) -> int:
    """Steps until the next validation after ``step``: ``config.validate_every``, or (None) about ``VALIDATIONS``
    validations over the steps expected to fit, spaced so that validating costs at most ``MAX_VALIDATION_SHARE`` of
    the time, yet at least three times over the run (the last weights are always validated too)."""
    if config.validate_every is not None:
        return config.validate_every
    expected = config.steps
    if config.time_budget_s is not None and step_s > 0:
        expected = min(expected, step + int(max(0.0, config.time_budget_s - elapsed_s) / step_s))
    interval = math.ceil(expected / VALIDATIONS)
    if step_s > 0:
        interval = max(interval, math.ceil(validation_s / (MAX_VALIDATION_SHARE * step_s)))
    return max(1, min(interval, math.ceil(expected / 3)))


SCHEDULES: dict[str, Callable[[float], float]] = {
    "cosine": lambda p: 0.5 * (1 + math.cos(math.pi * p)),
    "constant": lambda p: 1.0,
    "step": lambda p: 0.1 ** int(p * 3),
    "poly": lambda p: (1 - p) ** 0.9,
    "onecycle": lambda p: min(1.0, 4 * p + 0.25) if p < 0.2 else 0.5 * (1 + math.cos(math.pi * (p - 0.2) / 0.8)),
}


@dataclass
class Level:
    """One optimisation level: parameters, learning rate and a function ``backward(step, rng) -> losses`` that
    computes this level's loss, calls ``.backward()`` on it and returns the scalars (with ``"loss"``)."""

    name: str
    params: list[torch.nn.Parameter]
    backward: Callable[[int, np.random.Generator], dict[str, float]]
    lr: float
    weight_decay: float = 0.0


class Method(Protocol):
    """What an adaptation method gives the loop and ``methods.package_result``.

    A method class is built as ``cls(model, data, settings, cache_root=...)`` and trains ``model`` (a copy) in
    place; it raises ``ValueError`` when the data give it nothing to learn from. ``methods.METHODS`` registers it
    with its settings dataclass.
    """

    name: str

    def levels(self) -> list[Level]:
        """The optimisation levels, each with its trainable parameters and loss (one level, or two for BLO)."""
        ...

    def validate(self) -> float:
        """Validation score, higher is better (e.g. mean IoU)."""
        ...

    def adapter_parts(self) -> dict:
        """What was trained, for the adapter file: ``{"modules": {name: state dict}, "lora": {"settings", "state"}
        or None, "prompt_embeddings": (K, T, C) tensor or None}``."""
        ...


class StepSync(Protocol):
    """Hooks for training in several processes at once (``distributed.GradientSync``): ``rng_key`` is appended to
    each step's random seed, ``agree`` turns this process's stop reason (None, "budget", "cancelled") into the one
    of all processes, ``reduce`` averages a level's gradients and losses over them after its backward."""

    rng_key: tuple[int, ...]

    def agree(self, stop: str | None) -> str | None: ...

    def reduce(self, params: list[torch.nn.Parameter], losses: dict[str, float]) -> dict[str, float]: ...


@dataclass
class TrainEvent:
    """Progress of the loop: after each step (and each validation)."""

    step: int
    total: int
    losses: dict[str, float]
    lr: float
    elapsed_s: float
    eta_s: float
    validation: float | None = None
    best: float | None = None
    note: str = ""


def headline_loss(losses: dict[str, float]) -> float | None:
    """The total loss of a step from its ``TrainEvent.losses``: ``"loss"``, else the mean of the levels'
    ``".../loss"`` (BLO's two levels); None before any step."""
    if "loss" in losses:
        return losses["loss"]
    levels = [v for k, v in losses.items() if k.endswith("/loss")]
    return float(np.mean(levels)) if levels else None


@dataclass
class TrainResult:
    steps: int
    best_validation: float
    stopped: str  # "done" | "budget" | "cancelled"
    elapsed_s: float
    history: list[dict] = field(default_factory=list)


def run_training(
    method: Method,
    config: TrainConfig,
    should_stop: Callable[[], bool] = lambda: False,
    device: torch.device | None = None,
    sync: StepSync | None = None,
) -> Iterator[TrainEvent]:
    """Train ``method``; yields ``TrainEvent``s and returns a ``TrainResult`` (the generator's return value).

    At the end (done, time budget or ``should_stop``) the parameters hold the best validated weights. Repeated
    NaN/inf losses or gradients raise ``TrainingError`` after restoring the last good weights. ``sync``: this
    process is one of several training together (see ``distributed``); None (default) trains alone.
    """
    torch.manual_seed(config.seed)
    levels = method.levels()
    params = [p for level in levels for p in level.params]
    optimizers = [torch.optim.AdamW(level.params, lr=level.lr, weight_decay=level.weight_decay) for level in levels]
    lr_scale = 1.0
    amp = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if config.amp and device is not None and device.type == "cuda"
        else nullcontext()
    )
    start = time.monotonic()
    best = _validate(method)
    validation_s = time.monotonic() - start
    training_s = 0.0
    next_validation = config.validate_every or 1
    best_state = _snapshot(params)
    history = [{"step": 0, "validation": best}]
    yield TrainEvent(0, config.steps, {}, 0.0, 0.0, math.nan, best, best, "initial validation")
    bad_in_a_row, step, stopped = 0, 0, "done"
    while step < config.steps:
        elapsed = time.monotonic() - start
        stop = "cancelled" if should_stop() else None
        if stop is None and config.time_budget_s is not None and elapsed >= config.time_budget_s:
            stop = "budget"
        if sync is not None:
            stop = sync.agree(stop)
        if stop is not None:
            stopped = stop
            break
        rng = np.random.default_rng([config.seed, step, *(sync.rng_key if sync is not None else ())])
        step_start = time.monotonic()
        factor = config.lr_factor(step) * lr_scale
        losses: dict[str, float] = {}
        ok = True
        for level, optimizer in zip(levels, optimizers):
            for group in optimizer.param_groups:
                group["lr"] = level.lr * factor
            optimizer.zero_grad(set_to_none=True)
            with amp:
                out = level.backward(step, rng)
            if sync is not None:
                out = sync.reduce(level.params, out)
            losses.update({f"{level.name}/{k}" if len(levels) > 1 else k: v for k, v in out.items()})
            if not _finite(out.get("loss", 0.0), level.params):
                ok = False
                optimizer.zero_grad(set_to_none=True)
                break
            torch.nn.utils.clip_grad_norm_(level.params, config.grad_clip)
            optimizer.step()
        note = ""
        if not ok:
            bad_in_a_row += 1
            lr_scale *= 0.5
            note = f"non-finite loss or gradient: step skipped, learning rate halved ({bad_in_a_row} in a row)"
            if bad_in_a_row >= config.max_bad_steps:
                _restore(params, best_state)
                raise TrainingError(
                    f"training diverged: the loss or its gradients were NaN/inf {bad_in_a_row} times in a row even "
                    f"with the learning rate lowered {0.5 / lr_scale:g}x. The model was restored to its last good "
                    "weights. Check the images and labels for NaNs, or lower the learning rate."
                )
        else:
            bad_in_a_row = 0
        step += 1
        training_s += time.monotonic() - step_start
        elapsed = time.monotonic() - start
        eta = elapsed / step * (config.steps - step)
        if config.time_budget_s is not None:
            eta = min(eta, max(0.0, config.time_budget_s - elapsed))
        validation = None
        if step == 1 and config.validate_every is None:  # the first step's time decides the first interval
            next_validation = step + validation_interval(config, step, elapsed, training_s / step, validation_s)
        if step >= next_validation or step == config.steps:
            validation_start = time.monotonic()
            validation = _validate(method)
            validation_s = time.monotonic() - validation_start
            history.append({"step": step, "validation": validation, "elapsed_s": elapsed, **losses})
            if validation >= best:
                best, best_state = validation, _snapshot(params)
            next_validation = step + validation_interval(config, step, elapsed, training_s / step, validation_s)
        yield TrainEvent(
            step,
            config.steps,
            losses,
            config.lr_factor(step - 1) * lr_scale,
            elapsed,
            eta,
            validation,
            best,
            note,
        )
    if stopped != "done" or history[-1]["step"] != step:
        validation = _validate(method)
        history.append({"step": step, "validation": validation, "elapsed_s": time.monotonic() - start})
        if validation >= best:
            best, best_state = validation, _snapshot(params)
    _restore(params, best_state)
    return TrainResult(step, best, stopped, time.monotonic() - start, history)


def _validate(method: Method) -> float:
    with torch.no_grad():
        return float(method.validate())


def _finite(loss: float, params: list[torch.nn.Parameter]) -> bool:
    if not math.isfinite(loss):
        return False
    return all(p.grad is None or torch.isfinite(p.grad).all() for p in params)


def _snapshot(params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def _restore(params: list[torch.nn.Parameter], state: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for p, s in zip(params, state):
            p.copy_(s)
