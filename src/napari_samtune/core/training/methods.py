"""The adaptation methods in one place: which exist, running one on a copy of a model, and what a run gives back.

Every method is a class that follows ``loop.Method`` (built as ``cls(model, data, settings, cache_root=...)``, it
trains ``model`` in place) with a settings dataclass. ``run_method`` is the one way a method is run: by
``fine_tune`` for a chosen method and by the automatic search (``auto``) for its default configuration; the search's
trials use ``start_method`` and ``package_result`` to pause and resume the same loop. This module imports the method
modules and the loop, never ``fine_tune`` or ``auto``.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path

from ..models.registry import SamModel
from .adapters import Adapter
from .blo import BLOPromptLearning, BLOSettings
from .data import DataError, TrainingData
from .interactive import InteractiveFineTuning, InteractiveSettings
from .loop import Method, TrainConfig, TrainEvent, TrainResult, run_training
from .lora import state_hash
from .sum import SUMSettings, UncertaintyAwareFineTuning
from .wesam import WeakSelfTraining, WeSAMSettings

# name → (settings class, method class)
METHODS: dict[str, tuple[type, Callable[..., Method]]] = {
    "interactive": (InteractiveSettings, InteractiveFineTuning),
    "blo": (BLOSettings, BLOPromptLearning),
    "sum": (SUMSettings, UncertaintyAwareFineTuning),
    "wesam": (WeSAMSettings, WeakSelfTraining),
}


@dataclass
class FineTuneResult:
    """model: the adapted copy; adapter: what to save (only what was trained, plus metadata); training: the loop's
    summary (steps, best validation, why it stopped, history)."""

    model: SamModel
    adapter: Adapter
    training: TrainResult

    @property
    def cancelled(self) -> bool:
        return self.training.stopped == "cancelled"


def start_method(
    model: SamModel,
    data: TrainingData,
    method: str,
    settings: object,
    cache_root: str | Path | bool | None = None,
) -> tuple[SamModel, Method]:
    """A copy of ``model`` and the ``method`` object that trains it on ``data`` (``model`` itself is never changed).

    Raises ``ValueError`` for an unknown method and ``DataError`` when the data give the method nothing to learn
    from (e.g. only objects of a few pixels, or SUM without unlabeled images)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    work = model.copy()
    try:
        runner = METHODS[method][1](work, data, settings, cache_root=cache_root)
    except ValueError as error:
        raise DataError(f"method {method!r} cannot train on these data: {error}") from error
    return work, runner


def run_method(
    model: SamModel,
    data: TrainingData,
    method: str,
    settings: object | None = None,
    config: TrainConfig | None = None,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    cache_root: str | Path | bool | None = None,
) -> Generator[TrainEvent, None, FineTuneResult]:
    """Train ``method`` (default settings when ``settings`` is None) on a copy of ``model`` in the shared loop;
    yields the loop's events and returns the ``FineTuneResult`` of the best validated weights."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    settings = settings if settings is not None else METHODS[method][0]()
    config = config or TrainConfig()
    work, runner = start_method(model, data, method, settings, cache_root)
    training = yield from run_training(runner, config, should_stop, device=work.device)
    return package_result(model, work, runner, data, method, settings, config, training)


def package_result(
    model: SamModel,
    work: SamModel,
    runner: Method,
    data: TrainingData,
    method: str,
    settings: object,
    config: TrainConfig,
    training: TrainResult,
    metrics: dict | None = None,
) -> FineTuneResult:
    """The ``FineTuneResult`` of ``runner`` (which trained ``work``, a copy of ``model``): names the new encoder
    weights, attaches learned prompts and writes the adapter. ``metrics`` are added to the adapter's."""
    parts = runner.adapter_parts()
    if parts["lora"] is not None:
        work.encoder_id = f"{model.encoder_id}+lora:{state_hash(parts['lora']['state'])}"
    if parts["prompt_embeddings"] is not None:
        work.prompt_embeddings = parts["prompt_embeddings"]
        work.classes = tuple(data.classes)
    work.sam.eval()
    adapter = Adapter(
        base_name=model.name,
        base_sha256=model.weights_sha256,
        architecture=model.architecture.to_dict(),
        method=method,
        settings=_as_dict(settings),
        train_config=config.to_dict(),
        task=data.task,
        classes=list(data.classes),
        data_summary=data.summary(),
        metrics={
            "best_validation": training.best_validation,
            "steps": training.steps,
            "stopped": training.stopped,
            **(metrics or {}),
        },
        **parts,
    )
    return FineTuneResult(work, adapter, training)


def _as_dict(settings: object) -> dict:
    if is_dataclass(settings):
        return {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in asdict(settings).items()}
    return dict(vars(settings))
