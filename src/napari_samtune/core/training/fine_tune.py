"""``fine_tune``: adapt a model to the user's data with one of the methods, in the shared loop, on a copy.

The model passed in is never modified: a cancelled or failed fine-tune leaves it exactly as it was. The result
holds the adapted copy and its adapter (what to save).
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
from .loop import TrainConfig, TrainEvent, TrainResult, run_training
from .lora import state_hash
from .sum import SUMSettings, UncertaintyAwareFineTuning
from .wesam import WeakSelfTraining, WeSAMSettings

AUTO = "auto"  # not a loop method: ``fine_tune(method=AUTO)`` chooses one and its configuration within a budget
# name → (settings class, method class). Each method module registers itself here.
METHODS: dict[str, tuple[type, type]] = {
    "interactive": (InteractiveSettings, InteractiveFineTuning),
    "blo": (BLOSettings, BLOPromptLearning),
    "sum": (SUMSettings, UncertaintyAwareFineTuning),
    "wesam": (WeSAMSettings, WeakSelfTraining),
}


@dataclass
class FineTuneResult:
    model: SamModel
    adapter: Adapter
    training: TrainResult

    @property
    def cancelled(self) -> bool:
        return self.training.stopped == "cancelled"


def fine_tune(
    model: SamModel,
    data: TrainingData,
    method: str = "interactive",
    settings: object | None = None,
    config: TrainConfig | None = None,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    cache_root: str | Path | bool | None = None,
) -> Generator[TrainEvent, None, FineTuneResult]:
    """Fine-tune a copy of ``model``; yields progress events and returns a ``FineTuneResult``.

    settings: the method's settings object (default settings when None); config: loop settings.
    ``method="auto"`` searches the configuration itself within ``config.time_budget_s`` (required; ``settings``: an
    ``auto.AutoSettings`` or None); see ``auto.search.auto_fine_tune``.
    """
    if method == AUTO:
        from .auto.search import auto_fine_tune

        if config is None or config.time_budget_s is None:
            raise ValueError("method 'auto' needs a time budget: pass config=TrainConfig(time_budget_s=SECONDS)")
        return (
            yield from auto_fine_tune(
                model,
                data,
                config.time_budget_s,
                settings=settings,
                seed=config.seed,
                should_stop=should_stop,
                cache_root=cache_root,
            )
        )
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)} or {AUTO!r}")
    settings_cls, method_cls = METHODS[method]
    settings = settings if settings is not None else settings_cls()
    config = config or TrainConfig()
    work = model.copy()
    try:
        runner = method_cls(work, data, settings, cache_root=cache_root)
    except ValueError as error:  # the data give the method nothing to learn from (e.g. only objects of a few pixels)
        raise DataError(f"method {method!r} cannot train on these data: {error}") from error
    training = yield from run_training(runner, config, should_stop, device=work.device)
    return package_result(model, work, runner, data, method, settings, config, training)


def package_result(
    model: SamModel,
    work: SamModel,
    runner: object,
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
