"""``auto_fine_tune``: the best adaptation that fits a time budget (Quick-Tune / QTT-SEG style, resuming instead of
retraining).

1. Candidates: the default configuration and random ones from the search space, for the methods that serve the
   user's goal. Each trial's schedule is sized, when it starts, to take ``schedule_fraction`` of the remaining budget.
2. A few candidates ranked best by the performance predictor are started and trained to their first rung.
3. Then, repeatedly, every resumable trial and every not-yet-started candidate is scored by its expected
   improvement over the best validation so far, at the furthest rung it can reach in the remaining budget, divided
   by the predicted seconds to get there; the best one is advanced by one rung. Paused trials resume from their
   state (``trial.Trial``): nothing is trained twice.
   When the budget affords the default configuration fewer than ``min_search_steps`` steps (predicted), there is
   no search: a trial costs steps the default needs, and the predictors cannot tell a handful of steps apart; the
   default then trains for the whole budget.
4. The budget is never overrun by plan: an option is only taken when its predicted cost (times ``safety``) fits in
   what remains, and each step is checked again before it runs (a trial is cut mid-rung rather than run past the
   end). Predicted costs are rescaled by the observed/predicted ratios on this machine.
5. At the end the trial with the best validation hands over its best weights and adapter, as ``fine_tune`` does.

At most ``max_live`` trials hold a model copy at a time; starting another releases the least promising one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ...jobs import relay
from ...models.registry import SamModel
from ..data import TrainingData
from ..loop import TrainEvent
from ..methods import METHODS, FineTuneResult, run_method
from .features import dataset_features, dataset_vector, predictor_input
from .knowledge import MetaKnowledge, cost_input, load_meta_knowledge
from .space import RUNGS, Configuration, SearchSpace, encode
from .trial import Trial

GOALS: dict[str, tuple[str, ...]] = {
    "interactive": ("interactive", "sum"),  # prompted segmentation (click IoU); SUM only with unlabeled images
    "automatic": ("blo",),  # prompt-free segmentation (learned prompts)
}
_MIN_STEPS, _MAX_STEPS = 2 * RUNGS, 8000
_OFFSET_PRIOR = 3.0  # residuals needed before the online correction counts fully (shrinkage)
# Until a trial has run a step its costs are predictions, which can be several times too low (a LoRA step re-encodes
# the images): its set-up, first validation and first step need this many times their predicted seconds left.
_UNSEEN = 3.0


@dataclass(frozen=True)
class AutoSettings:
    """How the search runs.

    goal: "interactive" (models for prompted segmentation) or "automatic" (prompt-free, learned prompts); the
    methods compared all validate with the goal's metric. candidates: configurations considered (the default
    included); initial: started first, ranked by the predictor; max_live: trials holding a model copy at a time;
    schedule_fraction: share of the remaining budget a trial's schedule is sized to; safety: factor on predicted
    costs before checking they fit; min_search_steps: below this many predicted default steps in the budget, train
    the default alone (0: always search); meta_path: meta-knowledge file (None: the one shipped with the package).
    """

    goal: str = "interactive"
    candidates: int = 32
    initial: int = 3
    max_live: int = 3
    schedule_fraction: float = 0.5
    safety: float = 1.15
    min_search_steps: int = 48
    meta_path: str | None = None

    def __post_init__(self) -> None:
        if self.goal not in GOALS:
            raise ValueError(f"goal must be one of {sorted(GOALS)}, got {self.goal!r}")
        if self.max_live < 2:
            raise ValueError(f"max_live must be ≥ 2 (the best trial and one more), got {self.max_live}")
        if not 1 <= self.initial <= self.candidates:
            raise ValueError(f"initial must be in [1, candidates={self.candidates}], got {self.initial}")
        if not 0 < self.schedule_fraction <= 1 or self.safety < 1:
            raise ValueError("schedule_fraction must be in (0, 1] and safety ≥ 1")
        if self.min_search_steps < 0:
            raise ValueError(f"min_search_steps must be ≥ 0, got {self.min_search_steps}")


def auto_fine_tune(
    model: SamModel,
    data: TrainingData,
    budget_s: float,
    *,
    settings: AutoSettings | None = None,
    meta: MetaKnowledge | None = None,
    seed: int = 0,
    should_stop: Callable[[], bool] = lambda: False,
    cache_root: str | Path | bool | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Generator[TrainEvent, None, FineTuneResult]:
    """Search a fine-tuning configuration for ``data`` within ``budget_s`` seconds (of ``clock``: wall clock by
    default; ``time.process_time`` counts this process's CPU seconds, as benchmarks on a shared machine do), from
    this call; yields progress events and returns the best trial's ``FineTuneResult`` (its adapter records the
    search under ``metrics["auto"]``). ``model`` is not modified. Raises ValueError when not even one trial fits the
    budget."""
    started = clock()
    if budget_s <= 0:
        raise ValueError(f"the time budget must be > 0 seconds, got {budget_s}")
    if settings is not None and not isinstance(settings, AutoSettings):
        raise ValueError(f"method 'auto' takes AutoSettings, got {type(settings).__name__}")
    settings = settings or AutoSettings()
    meta = meta or load_meta_knowledge(settings.meta_path)
    search = _Search(model, data, budget_s, settings, meta, seed, cache_root, started, clock)
    return (yield from search.run(should_stop))


class _Search:
    def __init__(
        self,
        model: SamModel,
        data: TrainingData,
        budget_s: float,
        settings: AutoSettings,
        meta: MetaKnowledge,
        seed: int,
        cache_root: str | Path | bool | None,
        started: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model, self.data, self.settings, self.meta = model, data, settings, meta
        self.clock = clock
        self.seed, self.cache_root = seed, cache_root
        self.budget_s, self.started = budget_s, started
        self.deadline = started + budget_s
        self.reserve = min(1.0, 0.02 * budget_s)  # packaging the result at the end
        methods = tuple(
            m for m in GOALS[settings.goal] if m in METHODS and m in meta.methods and (m != "sum" or data.unlabeled)
        )
        if not methods:
            raise ValueError(
                f"no method for goal {settings.goal!r} is both installed and covered by the meta-knowledge "
                f"(installed: {sorted(METHODS)}; meta-knowledge: {list(meta.methods)}): rebuild it with "
                "scripts/build_meta_knowledge.py including these methods"
            )
        self.data_vector = dataset_vector(dataset_features(data))
        space = SearchSpace(methods)
        rng = np.random.default_rng(seed)
        configs = [space.default(m) for m in methods]
        self.candidates: list[Configuration] = configs + [
            space.sample(rng) for _ in range(settings.candidates - len(configs))
        ]
        if any(c["lora"] for c in self.candidates):
            import peft  # noqa: F401  (a one-off import of seconds: now, rather than inside a trial's planned setup)
        raw_costs = meta.cost.predict(np.stack([cost_input(c, self.data_vector) for c in self.candidates]))
        self.raw_costs = [{name: float(v[i]) for name, v in raw_costs.items()} for i in range(len(self.candidates))]
        self.trials: list[Trial | None] = [None] * len(self.candidates)
        self.ratios: dict[str, list[float]] = {name: [] for name in raw_costs}
        self.residuals: list[float] = []
        self.base_scores: dict[str, list[float]] = {}
        self.schedule_fraction = settings.schedule_fraction
        self.default_steps = self.affordable_steps(0)
        self.searching = self.default_steps >= settings.min_search_steps
        if not self.searching:  # too short to search: the default alone, for the whole budget (``default_only``)
            del self.candidates[1:], self.raw_costs[1:], self.trials[1:]
        self.total_steps = 0
        self.cancelled = False
        self.should_stop: Callable[[], bool] = lambda: False

    # ------------------------------------------------------------------------------------------------ estimates
    def remaining(self) -> float:
        return self.deadline - self.reserve - self.clock()

    def costs(self, index: int) -> dict[str, float]:
        """Expected seconds of setup, step and validation of candidate ``index`` on this machine."""
        trial = self.trials[index]
        out = {}
        for name, raw in self.raw_costs[index].items():
            ratios = self.ratios[name]
            factor = math.exp(float(np.mean(np.log(ratios)))) if ratios else 1.0
            out[name] = raw * factor
        if trial is not None:  # what this trial has shown beats any prediction
            out = {name: v if getattr(trial, name) is None else getattr(trial, name) for name, v in out.items()}
        return out

    def affordable_steps(self, index: int, fraction: float = 1.0) -> int:
        """Predicted steps of candidate ``index`` in ``fraction`` of the remaining budget (set-up and validations
        at every rung deducted)."""
        c = self.costs(index)
        seconds = fraction * self.remaining() - c["setup_s"] - (RUNGS + 1) * c["validation_s"]
        return max(0, int(seconds / max(c["step_s"], 1e-6)))

    def schedule_steps(self, index: int) -> int:
        """Schedule length for candidate ``index`` if started now: ``schedule_fraction`` of the remaining budget."""
        steps = self.affordable_steps(index, self.schedule_fraction) // RUNGS * RUNGS
        return int(min(max(steps, _MIN_STEPS), _MAX_STEPS))

    def predict(
        self, config: Configuration, prefix: list[float], target: int, corrected: bool = True
    ) -> tuple[float, float]:
        """Mean and standard deviation of ``config``'s score at rung ``target`` after ``prefix``; ``corrected``:
        shifted by the shrunken mean residual of this search's earlier predictions (the target task's offset)."""
        x = predictor_input(encode(config), self.data_vector, config["steps"], prefix, target)
        mean, std = self.meta.performance.predict(x[None])
        offset = sum(self.residuals) / (len(self.residuals) + _OFFSET_PRIOR) if corrected else 0.0
        return float(np.clip(mean[0] + offset, 0.0, 1.0)), float(std[0])

    def option(self, index: int, incumbent: float) -> tuple[float, Configuration] | None:
        """(acquisition value, configuration) of advancing candidate ``index``, or None when it cannot go on or its
        next rung does not fit. The value: expected improvement over ``incumbent`` at the furthest rung reachable in
        the remaining budget, per predicted second to get there."""
        trial = self.trials[index]
        if trial is not None and not trial.resumable:
            return None
        c = self.costs(index)
        if trial is None:
            config = self.candidates[index].replace(steps=self.schedule_steps(index))
            base = self.base_scores.get(config["method"])
            prefix, done = ([float(np.mean(base))] if base else []), 0
            first_extra = c["setup_s"] + c["validation_s"]
        else:
            config, prefix, done, first_extra = trial.config, trial.curve, trial.rungs_done, 0.0
        rung_s = config["steps"] // RUNGS * c["step_s"] + c["validation_s"]
        available = self.remaining() / self.settings.safety - first_extra
        reachable = min(RUNGS - done, int(available / max(rung_s, 1e-6)))
        if reachable < 1:
            return None
        mean, std = self.predict(config, prefix, done + reachable)
        cost = first_extra + reachable * rung_s
        return expected_improvement(mean, std, incumbent) / max(cost, 1e-6), config

    # ------------------------------------------------------------------------------------------------ the search
    def run(self, should_stop: Callable[[], bool]) -> Generator[TrainEvent, None, FineTuneResult]:
        self.should_stop = should_stop
        if not self.searching:
            return (yield from self.default_only())
        queue = self.initial_order()
        while not self.cancelled:
            if should_stop():
                self.cancelled = True
                break
            incumbent = self.incumbent()
            best = incumbent.best if incumbent is not None else max(self.all_base_scores(), default=0.0)
            options = {i: self.option(i, best) for i in range(len(self.candidates))}
            options = {i: o for i, o in options.items() if o is not None}
            if not options:
                break
            # The first trials are taken in the predictor's order, the rest by improvement per second.
            queue = [i for i in queue if i in options and self.trials[i] is None]
            choice = queue.pop(0) if queue else max(options, key=lambda i: options[i][0])
            yield from self.advance(choice, options[choice][1])
        return self.finish()

    def default_only(self) -> Generator[TrainEvent, None, FineTuneResult]:
        """The default configuration trained as ``fine_tune`` trains it, stopped before a step (and the final
        validation) would pass the deadline."""
        config = self.candidates[0]
        method, settings, train_config = config.to_settings(self.seed)
        costs = self.costs(0)
        if self.remaining() < (costs["setup_s"] + 2 * costs["validation_s"] + costs["step_s"]) * self.settings.safety:
            raise self.too_short()
        cost = {"step_s": costs["step_s"], "validation_s": costs["validation_s"]}  # observed ones replace these
        last = {"stop": self.clock(), "budget": False}

        def stop() -> bool:  # asked by the loop before each step
            last["stop"] = now = self.clock()
            if self.should_stop():
                self.cancelled = True
                return True
            needed = (cost["step_s"] + cost["validation_s"]) * self.settings.safety  # a step, then the last validation
            last["budget"] = now + needed > self.deadline - self.reserve
            return last["budget"]

        def observe(event: TrainEvent) -> TrainEvent:
            if event.step > 0:
                seconds = self.clock() - last["stop"]
                if event.validation is None:
                    cost["step_s"] = seconds
                else:
                    cost["validation_s"] = max(0.0, seconds - cost["step_s"])
                self.total_steps = event.step
            return replace(event, elapsed_s=self.clock() - self.started, note=f"default configuration: {event.note}")

        run = run_method(
            self.model, self.data, method, settings, train_config, should_stop=stop, cache_root=self.cache_root
        )
        result = yield from relay(run, observe)
        stopped = "cancelled" if self.cancelled else ("budget" if last["budget"] else result.training.stopped)
        training = replace(result.training, stopped=stopped, elapsed_s=self.clock() - self.started)
        chosen = config.replace(steps=train_config.steps)
        trial = {
            "config": dict(chosen),
            "steps": training.steps,
            "curve": [h["validation"] for h in training.history],
            "best": training.best_validation,
            "state": "done" if training.stopped == "done" else "stopped",
            "note": training.stopped,
        }
        summary = self.summary(chosen, [trial])
        result.adapter.metrics.update({"stopped": stopped, "auto": summary})
        return replace(result, training=training)

    def summary(self, chosen: Configuration, trials: list[dict]) -> dict:
        """What the search did (``trials``: config, steps, curve, best, state, note of each), for the adapter."""
        return {
            "budget_s": self.budget_s,
            "elapsed_s": self.clock() - self.started,
            "goal": self.settings.goal,
            "searched": self.searching,
            "default_steps_predicted": self.default_steps,
            "chosen": dict(chosen),
            "meta_knowledge": {k: self.meta.info.get(k) for k in ("built", "space_version", "curves", "model")},
            "trials": trials,
        }

    def initial_order(self) -> list[int]:
        """The first ``initial`` candidates to start: the default, then the best predicted at a full schedule."""
        means = []
        for i, config in enumerate(self.candidates):
            config = config.replace(steps=self.schedule_steps(i))
            means.append(self.predict(config, [], RUNGS)[0])
        ranked = [int(i) for i in np.argsort(means)[::-1] if i != 0]
        return [0, *ranked][: self.settings.initial]

    def advance(self, index: int, config: Configuration) -> Generator[TrainEvent, None, None]:
        trial = self.trials[index]
        if trial is None:
            self.make_room()
            trial = Trial(config, self.model, self.data, seed=self.seed, cache_root=self.cache_root, clock=self.clock)
            trial.predicted = self.costs(index)
            self.trials[index] = trial
        was_new, rungs_before = trial.state == "new", trial.rungs_done
        prediction = None if was_new else self.predict(trial.config, trial.curve, rungs_before + 1, False)[0]
        for event in trial.advance(lambda seconds: self.may_run(seconds * (1.0 if trial.step_s else _UNSEEN))):
            if event.step > 0:
                self.total_steps += 1
            yield self.event(index, trial, event)
        if prediction is not None and trial.rungs_done > rungs_before:
            self.residuals.append(trial.curve[rungs_before + 1] - prediction)
        if was_new and trial.curve:
            self.base_scores.setdefault(trial.method, []).append(trial.curve[0])
            for name, raw in self.raw_costs[index].items():
                observed = getattr(trial, name)
                if observed:
                    self.ratios[name].append(observed / raw)
        self.tidy()

    def all_base_scores(self) -> list[float]:
        return [s for scores in self.base_scores.values() for s in scores]

    def may_run(self, seconds: float) -> bool:
        """Asked by the trial before each piece of work: no cancellation and the expected seconds still fit."""
        if self.should_stop():
            self.cancelled = True
            return False
        return self.clock() + seconds * self.settings.safety <= self.deadline - self.reserve

    def incumbent(self) -> Trial | None:
        held = [t for t in self.trials if t is not None and t.work is not None and t.curve]
        return max(held, key=lambda t: t.best, default=None)

    def make_room(self) -> None:
        """Release trials until one more model copy fits under ``max_live``: finished ones first, then the paused
        one with the lowest acquisition value; never the incumbent."""
        incumbent = self.incumbent()
        while True:
            held = [i for i, t in enumerate(self.trials) if t is not None and t.work is not None]
            if len(held) < self.settings.max_live:
                return
            best = incumbent.best if incumbent is not None else 0.0
            candidates = [i for i in held if self.trials[i] is not incumbent]
            values = {i: (self.option(i, best) or (-math.inf,))[0] for i in candidates}
            self.trials[min(values, key=values.get)].release()

    def tidy(self) -> None:
        """Free the model of every trial that can no longer improve the result."""
        incumbent = self.incumbent()
        for trial in self.trials:
            if trial is not None and trial is not incumbent and trial.work is not None and not trial.resumable:
                trial.release()

    def event(self, index: int, trial: Trial, event: TrainEvent) -> TrainEvent:
        now = self.clock()
        step_s = trial.expected("step_s")
        left = max(0.0, self.deadline - now)
        incumbent = self.incumbent()
        return TrainEvent(
            step=self.total_steps,
            total=self.total_steps + (int(left / step_s) if step_s > 0 else 0),
            losses=event.losses,
            lr=event.lr,
            elapsed_s=now - self.started,
            eta_s=left,
            validation=event.validation,
            best=incumbent.best if incumbent is not None else event.best,
            note=f"trial {index + 1}/{len(self.candidates)} ({trial.config.summary()}): step {event.step}"
            + (f"; {event.note}" if event.note else ""),
        )

    def finish(self) -> FineTuneResult:
        incumbent = self.incumbent()
        if incumbent is None:
            raise self.too_short()
        stopped = "cancelled" if self.cancelled else ("done" if self.exhausted() else "budget")
        trials = [
            {
                "config": dict(t.config),
                "steps": t.steps_done,
                "curve": list(t.curve),
                "best": t.best if t.curve else None,
                "state": t.state,
                "note": t.note,
            }
            for t in self.trials
            if t is not None
        ]
        summary = self.summary(incumbent.config, trials)
        for trial in self.trials:
            if trial is not None and trial is not incumbent:
                trial.release()
        return incumbent.package(stopped, self.clock() - self.started, {"auto": summary})

    def too_short(self) -> ValueError:
        return ValueError(
            f"a time budget of {self.budget_s:g} s is too short to train any configuration on this data "
            f"(the quickest needs about {self.quickest_s():.0f} s here): give a larger budget"
        )

    def exhausted(self) -> bool:
        return all(t is not None and not t.resumable for t in self.trials)

    def quickest_s(self) -> float:
        seconds = []
        for i in range(len(self.candidates)):
            c = self.costs(i)
            seconds.append(c["setup_s"] + 2 * c["validation_s"] + _MIN_STEPS // RUNGS * c["step_s"])
        return min(seconds)


def expected_improvement(mean: float, std: float, best: float) -> float:
    """E[max(0, Y − best)] for Y ~ N(mean, std²)."""
    if std <= 1e-9:
        return max(0.0, mean - best)
    z = (mean - best) / std
    return (mean - best) * 0.5 * math.erfc(-z / math.sqrt(2)) + std * math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
