"""``fine_tune``: adapt a model to the user's data with one of the methods, in the shared loop, on a copy.

The model passed in is never modified: a cancelled or failed fine-tune leaves it exactly as it was. The result
holds the adapted copy and its adapter (what to save). ``fine_tune`` only dispatches: a named method runs through
``methods.run_method``, ``"auto"`` through the automatic search (``auto.auto_fine_tune``), which runs methods the
same way.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from pathlib import Path

from ..models.registry import SamModel
from .auto.search import auto_fine_tune
from .data import TrainingData
from .loop import TrainConfig, TrainEvent
from .methods import METHODS, FineTuneResult, package_result, run_method

__all__ = ["AUTO", "METHODS", "FineTuneResult", "fine_tune", "package_result"]

AUTO = "auto"  # not a loop method: ``fine_tune(method=AUTO)`` chooses one and its configuration within a budget


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
    return (
        yield from run_method(model, data, method, settings, config, should_stop=should_stop, cache_root=cache_root)
    )
