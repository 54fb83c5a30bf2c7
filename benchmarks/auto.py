"""Automatic fine-tuning within a time budget (issue 7): the automatic search against the default configuration and
against random search at the same budget, each against zero-shot, leaving the target data set out of the
meta-knowledge.

For every target set of ../shared/data: its first ``--train-images`` pairs are the user's labeled images (a quarter
of them validates, as in the widget) and the next ``--test-images`` pairs, never seen by any arm, are the test. The
score is the interactive goal's metric: mean IoU of one click at each test object's interior point (up to
``MAX_TEST_OBJECTS`` objects; the best of the multimask outputs). Arms, at each budget and seed:

- ``zero-shot``: the base model, untouched;
- ``default``: the package's default configuration (``SearchSpace().default()``: interactive fine-tuning of the mask
  decoder, lr 3e-4, cosine over 320 steps), its loop stopped by the budget;
- ``random``: random search with the automatic search's machinery (same candidates, schedules sized to the remaining
  budget, same budget checks, best trial on validation), minus the predictors: the random candidates in their
  drawn order, each trained to the end of its schedule before the next starts;
- ``auto``: ``auto_fine_tune`` with predictors refitted on the meta-knowledge records (runs/auto_meta/records.jsonl)
  *without* the target set (leave one data set out).

Every arm reads the same embedding cache, warmed before the first arm, so none pays for encoding the images.
Budgets count CPU seconds of this process (``--clock cpu``, the default, with ``--threads 1``), so that a machine
shared with other work gives about the numbers of an idle core, where they are wall seconds; ``--clock wall`` counts
wall time, as the product does. The searches are handed the same clock; the default configuration's loop is stopped
by it (checked before each step). Elapsed time runs from the call to the returned result (set-up, every validation
and the packaging of the result included); overrun = (elapsed - budget) / budget.

    python benchmarks/auto.py                  # budget 60 s, 2 sets, 2 seeds: ~13 CPU-min (< 15 min on an idle core)
    python benchmarks/auto.py --quick          # budget 40 s, 1 set, 1 seed: ~2.5 CPU-min
    python benchmarks/auto.py --budgets 60 120 180 --sets all --seeds 0 1 2   # the full grid (hours on a CPU)

Targets (issue 7): automatic >= default on every set (mean over budgets and seeds), automatic > random search on
average, budget overrun of the automatic search <= 5 %.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from collections.abc import Callable, Generator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA, data_folder, set_threads, target
from napari_samtune.core.datasets import load_pairs
from napari_samtune.core.jobs import drive
from napari_samtune.core.models.registry import SamModel, load_model
from napari_samtune.core.training.auto import AutoSettings, MetaKnowledge, SearchSpace, auto_fine_tune
from napari_samtune.core.training.auto.knowledge import fit_meta_knowledge, read_records
from napari_samtune.core.training.auto.search import _Search
from napari_samtune.core.training.data import TrainingData, prepare_training_data
from napari_samtune.core.training.fine_tune import FineTuneResult, fine_tune
from napari_samtune.core.training.interactive import InteractiveFineTuning, InteractiveSettings
from napari_samtune.core.training.loop import TrainEvent
from napari_samtune.core.training.units import build_units

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "runs" / "auto_meta" / "records.jsonl"
SETS = ("dsb2018_fluo_nuclei", "kvasir_seg_polyps_256", "isbi2012_em_membranes", "sstem_drosophila_vnc_multiclass")
ARMS = ("default", "random", "auto")
MAX_TEST_OBJECTS = 200
CLOCK: Callable[[], float] = time.process_time  # what budgets count (``--clock wall``: time.monotonic)


class RandomSearch(_Search):
    """Random search on the automatic search's machinery: candidates 1.. (random; 0 is the default) in their drawn
    order, each advanced rung by rung to the end of its schedule, then the next; stops when none fits any more."""

    def run(self, should_stop) -> Generator[TrainEvent, None, FineTuneResult]:
        self.should_stop = should_stop
        for index in range(1, len(self.candidates)):
            while (option := self.option(index, 0.0)) is not None:
                yield from self.advance(index, option[1])
        return self.finish()


def random_search(
    model: SamModel, data: TrainingData, budget_s: float, meta: MetaKnowledge, seed: int, cache_root: str
) -> Generator[TrainEvent, None, FineTuneResult]:
    search = RandomSearch(model, data, budget_s, AutoSettings(), meta, seed, cache_root, CLOCK(), CLOCK)
    return (yield from search.run(lambda: False))


def default_arm(
    model: SamModel, data: TrainingData, budget_s: float, seed: int, cache_root: str
) -> Generator[TrainEvent, None, FineTuneResult]:
    started = CLOCK()
    method, settings, config = SearchSpace().default().to_settings(seed)
    stop = lambda: CLOCK() - started >= budget_s  # noqa: E731
    return (yield from fine_tune(model, data, method, settings, config, should_stop=stop, cache_root=cache_root))


def start_arm(
    arm: str, model: SamModel, data: TrainingData, budget_s: float, seed: int, meta: MetaKnowledge, cache_root: str
) -> Generator[TrainEvent, None, FineTuneResult]:
    if arm == "default":
        return default_arm(model, data, budget_s, seed, cache_root)
    if arm == "random":
        return random_search(model, data, budget_s, meta, seed, cache_root)
    return auto_fine_tune(model, data, budget_s, meta=meta, seed=seed, cache_root=cache_root, clock=CLOCK)


def finish(run: Generator) -> tuple[FineTuneResult | None, float, str]:
    """Iterate ``run`` to its end: its result (None when the budget fits no training at all), the seconds (of
    ``CLOCK``) it took, and why it has no result."""
    started = CLOCK()
    try:
        return drive(run), CLOCK() - started, ""
    except ValueError as error:  # "a time budget of ... is too short to train any configuration"
        return None, CLOCK() - started, str(error)


def split_set(name: str, train_images: int, test_images: int) -> tuple[TrainingData, TrainingData]:
    """(training data: the first ``train_images`` pairs, a quarter validating; test data: the next pairs, all of them
    as validation items)."""
    pairs = load_pairs(data_folder(name), limit=train_images + test_images)
    if len(pairs) < train_images + 1:
        raise SystemExit(f"{name} has only {len(pairs)} labeled images: lower --train-images")
    train, test = pairs[:train_images], pairs[train_images:]
    data = prepare_training_data([p.image for p in train], [p.labels for p in train], all_objects_labeled=True)
    test_data = prepare_training_data(
        [p.image for p in test], [p.labels for p in test], task=data.task, all_objects_labeled=True
    )
    items = test_data.train + test_data.validation
    return data, dataclasses.replace(test_data, train=items[:1], validation=items)


def test_score(model: SamModel, test: TrainingData, cache_root: str) -> float:
    """Mean click IoU over the test objects (what the interactive goal validates, on images no arm has seen)."""
    settings = InteractiveSettings(max_validation_objects=MAX_TEST_OBJECTS)
    return InteractiveFineTuning(model.copy(), test, settings, cache_root=cache_root).validate()


def leave_one_out_meta(records: list[dict], model: SamModel, target_set: str) -> tuple[MetaKnowledge, str]:
    """Predictors fitted on the records of ``model`` without ``target_set``; and a note on what they come from."""
    own = [r for r in records if r.get("model_sha256") == model.weights_sha256]
    note = f"records of this model ({model.weights_sha256[:12]})"
    if not own:  # e.g. the bundled model was re-exported after the records were made
        own = [r for r in records if r.get("model") == model.name]
        shas = sorted({r.get("model_sha256", "")[:12] for r in own})
        note = f"records of another checkpoint of {model.name} ({', '.join(shas)}): rebuild them for this one"
    meta = fit_meta_knowledge(own, exclude=[target_set], members=3, epochs=300)
    return meta, f"{meta.info['curves']} curves from {sorted(meta.info['datasets'])}, {note}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", type=float, nargs="+", default=[60.0], help="seconds (the issue: 60 120 180)")
    parser.add_argument("--sets", nargs="+", default=list(SETS[:2]), help=f"target sets, or 'all' ({', '.join(SETS)})")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--train-images", type=int, default=8)
    parser.add_argument("--test-images", type=int, default=6)
    parser.add_argument("--records", type=Path, default=RECORDS, help="meta-knowledge records (JSONL)")
    parser.add_argument("--quick", action="store_true", help="budget 40 s, dsb2018_fluo_nuclei, seed 0 (~3 min)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu", help="what budgets count (default cpu)")
    parser.add_argument("--json", type=Path, default=None, help="also write every run here")
    args = parser.parse_args()
    if args.quick:
        args.budgets, args.sets, args.seeds = [40.0], [SETS[0]], [0]
    args.sets = list(SETS) if args.sets == ["all"] else args.sets
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.monotonic
    set_threads(args.threads)
    import peft  # noqa: F401  (a one-off import of seconds: not part of any arm's budget)

    wall, cpu = time.monotonic(), time.process_time()
    records = read_records(args.records)
    if not records:
        raise SystemExit(f"no meta-knowledge records in {args.records}: run scripts/build_meta_knowledge.py first")
    model = load_model("samtune_small", device="cpu")
    print(f"model: {model.name} {model.metadata}")
    print(
        f"ran: budgets {args.budgets} s, sets {args.sets}, seeds {args.seeds}, {args.train_images} training + "
        f"{args.test_images} test images per set, {args.threads} thread(s), budgets in {args.clock} seconds, "
        f"data {DATA}"
    )
    runs = []
    for name in args.sets:
        meta, note = leave_one_out_meta(records, model, name)
        print(f"\n{name}: meta-knowledge without it: {note}")
        data, test = split_set(name, args.train_images, args.test_images)
        with tempfile.TemporaryDirectory() as cache:
            build_units(model, data, data.train + data.validation, with_embeddings=True, cache_root=cache)  # warm
            zero_shot = test_score(model, test, cache)
            for budget in args.budgets:
                for seed in args.seeds:
                    row = {"set": name, "budget": budget, "seed": seed, "zero_shot": zero_shot}
                    order = ARMS[seed % 3 :] + ARMS[: seed % 3]  # no arm always runs first
                    for arm in order:
                        result, elapsed, error = finish(start_arm(arm, model, data, budget, seed, meta, cache))
                        row[f"{arm}_elapsed"] = elapsed
                        if result is None:  # nothing trained: the user keeps the base model
                            row[arm], row[f"{arm}_validation"] = zero_shot, None
                            print(f"  {arm}: {error}")
                        else:
                            row[arm] = test_score(result.model, test, cache)
                            row[f"{arm}_validation"] = result.training.best_validation
                        if arm != "default":
                            search = result.adapter.metrics["auto"] if result is not None else {"trials": []}
                            row[f"{arm}_chosen"] = summary(search["chosen"]) if result is not None else "nothing"
                            row[f"{arm}_trials"] = [
                                {"config": summary(t["config"]), "steps": t["steps"], "curve": t["curve"]}
                                for t in search["trials"]
                            ]
                    runs.append(row)
                    print_row(row)
    print_summary(runs, args, time.monotonic() - wall, time.process_time() - cpu)
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))


def summary(config: dict) -> str:
    return SearchSpace((config["method"],)).validate(config).summary()


def print_row(r: dict) -> None:
    gains = "  ".join(f"{arm} {r[arm]:.3f} ({r[arm] - r['zero_shot']:+.3f})" for arm in ARMS)
    print(
        f"  budget {r['budget']:.0f} s seed {r['seed']}: zero-shot {r['zero_shot']:.3f}  {gains}  |  elapsed/budget "
        f"default {r['default_elapsed'] / r['budget']:.3f} random {r['random_elapsed'] / r['budget']:.3f} auto "
        f"{r['auto_elapsed'] / r['budget']:.3f}  |  auto: {len(r['auto_trials'])} trials, chose {r['auto_chosen']}",
        flush=True,
    )


def print_summary(runs: list[dict], args: argparse.Namespace, wall_s: float, cpu_s: float) -> None:
    print("\nmean test click IoU (gain over zero-shot; ratio to zero-shot) per set, over budgets and seeds")
    print(f"{'set':<34} {'runs':>4} {'zero-shot':>9} " + " ".join(f"{arm:>22}" for arm in ARMS) + " auto-default")
    by_set = {}
    for name in args.sets:
        rows = [r for r in runs if r["set"] == name]
        m = {k: float(np.mean([r[k] for r in rows])) for k in ("zero_shot", *ARMS)}
        by_set[name] = m["auto"] - m["default"]
        cells = " ".join(f"{m[a]:>7.3f} ({m[a] - m['zero_shot']:+.3f}; {m[a] / m['zero_shot']:.2f}x)" for a in ARMS)
        print(f"{name:<34} {len(rows):>4} {m['zero_shot']:>9.3f} {cells} {by_set[name]:+12.3f}")
    for budget in args.budgets:
        rows = [r for r in runs if r["budget"] == budget]
        m = {k: float(np.mean([r[k] for r in rows])) for k in ("zero_shot", *ARMS)}
        print(
            f"budget {budget:.0f} s: " + ", ".join(f"{a} {m[a] - m['zero_shot']:+.3f}" for a in ARMS) + " vs zero-shot"
        )
    overrun = max((r["auto_elapsed"] - r["budget"]) / r["budget"] for r in runs)
    random_overrun = max((r["random_elapsed"] - r["budget"]) / r["budget"] for r in runs)
    print(f"random search overrun (max): {random_overrun:+.3f}")
    print(f"whole benchmark: {wall_s / 60:.1f} min wall, {cpu_s / 60:.1f} CPU-min")
    print(target("auto_minus_default_worst_set", min(by_set.values()), ">=", 0.0))
    print(target("auto_minus_random_mean", float(np.mean([r["auto"] - r["random"] for r in runs])), ">", 0.0))
    print(target("auto_budget_overrun_max", overrun, "<=", 0.05))


if __name__ == "__main__":
    main()
