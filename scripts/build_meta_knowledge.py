"""Build the meta-knowledge of automatic fine-tuning: learning curves of configurations × tasks, and the predictors.

    python scripts/build_meta_knowledge.py                       # run (or continue) everything, fit, write the file
    python scripts/build_meta_knowledge.py --cpu-minutes 20 --threads 1   # a bounded share of it (run again: goes on)
    python scripts/build_meta_knowledge.py --exclude kvasir_seg_polyps_256 --output /tmp/loo_kvasir.npz
    python scripts/build_meta_knowledge.py --fit-only            # refit from the records already collected
    python scripts/build_meta_knowledge.py --model tiny --kinds nuclei lesion --datasets --configs 1 \\
        --run-seconds 5 --images 6 --size 64                    # smoke run (random tiny model, minutes on a CPU)

Tasks: synthetic scenes of each kind in ``core.synthetic`` (instances for interactive fine-tuning, their binary
foreground for BLO; seeds apart from pretraining's) and the shared data sets (``--shared-data``, default
../shared/data relative to the project; their first ``--images`` pairs). Per task and method: the default
configuration, a cheaper variant of it at each learning rate of ``--lr-ladder`` and ``--configs`` random
configurations, each trained to the end of its schedule. A schedule is sized to take one of ``--run-seconds`` (CPU
seconds of this process, like every cost recorded: run it with ``--threads 1``; a probe sets the configuration up and
times one step first), as the search sizes its trials to its budget; a configuration whose shortest schedule would
take more than ``--max-run-seconds`` is not run, only its costs are recorded (``"cut"``). ``--steps`` gives fixed
schedule lengths instead. Runs go round-robin over the tasks (the first configuration of every task, then the second,
...), so a build cut short by ``--cpu-minutes`` (CPU time of this process) covers every task.

Every record carries its data set and task (``dataset``, ``task``) and the base model's name and sha256, so
predictors can be refitted without a data set (``--exclude NAME``; ``benchmarks/auto.py`` does this for leave one
data set out). Each finished run is appended to ``--records`` (JSONL) at once, so a cut build continues where it
stopped (runs already recorded are skipped). The predictors are then fitted on the records of this base model and
written atomically to ``--output``; its metadata say which model, checkpoint, data sets and tasks they come from.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
import zlib
from pathlib import Path

import numpy as np
import torch

from napari_samtune.core.datasets import load_pairs
from napari_samtune.core.models import SamModel
from napari_samtune.core.models.registry import load_model
from napari_samtune.core.models.tiny import tiny_model
from napari_samtune.core.synthetic import SCENE_KINDS, make_scenes
from napari_samtune.core.training.auto.features import dataset_features
from napari_samtune.core.training.auto.knowledge import (
    default_meta_path,
    fit_meta_knowledge,
    read_records,
    save_meta_knowledge,
)
from napari_samtune.core.training.auto.space import RUNGS, Configuration, SearchSpace, space_version
from napari_samtune.core.training.auto.trial import Trial
from napari_samtune.core.training.data import TrainingData, prepare_training_data
from napari_samtune.core.training.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = (
    "dsb2018_fluo_nuclei",
    "kvasir_seg_polyps_256",
    "isbi2012_em_membranes",
    "sstem_drosophila_vnc_multiclass",
)
MIN_STEPS, MAX_STEPS = 2 * RUNGS, 8000  # the schedule lengths the search space allows
# The learning-rate ladder varies a cheaper variant of the default (a sixth of its mask decodings per step, where
# these settings apply): the contrast is what matters, and the default's own steps cost seconds on a CPU.
LADDER_BASE = {"units_per_step": 2, "objects_per_unit": 4, "corrective_rounds": 1}
# Costs in CPU seconds of this (single-threaded) process: on a shared machine, wall seconds measure the neighbours.
CLOCK = time.process_time
SYNTHETIC_SEED = 500_000  # scene seeds far from those of pretraining (which start at 0)


def get_model(name: str, checkpoint: str | None) -> SamModel:
    if name == "tiny":
        # The tests' size, randomly initialised: smoke runs only (its curves say little about a trained model).
        return tiny_model(weights_id="random-seed0")
    return load_model(name, checkpoint=checkpoint)


def synthetic_tasks(kinds: list[str], images: int, size: int, seed: int) -> list[tuple[str, str, TrainingData]]:
    """(dataset name, task id, data) of each kind: instances, and the binary foreground (for BLO)."""
    tasks = []
    for kind in kinds:
        scenes = make_scenes(images, SYNTHETIC_SEED + seed, size=size, kind=kind)
        pixels, labels = [s.image for s in scenes], [s.labels for s in scenes]
        name = f"synthetic-{kind}"
        tasks.append((name, f"{name}/instances", prepare_training_data(pixels, labels, task="instances")))
        binary = [(lab > 0).astype(np.int32) for lab in labels]
        tasks.append((name, f"{name}/foreground", prepare_training_data(pixels, binary, task="semantic")))
    return tasks


def shared_tasks(root: Path, names: list[str], images: int) -> list[tuple[str, str, TrainingData]]:
    """(dataset name, task id, data) of each shared data set found under ``root`` (its first ``images`` pairs)."""
    tasks = []
    for name in names:
        folder = root / name
        if not folder.is_dir():
            print(f"skipping {name}: {folder} not found")
            continue
        pairs = load_pairs(folder, limit=images)
        pixels, labels = [p.image for p in pairs], [p.labels for p in pairs]
        data = prepare_training_data(pixels, labels)
        tasks.append((name, f"{name}/{data.task}", data))
        if data.task == "instances":
            binary = [(lab > 0).astype(np.int32) for lab in labels]
            tasks.append((name, f"{name}/foreground", prepare_training_data(pixels, binary, task="semantic")))
    return tasks


def methods_for(task_id: str, data: TrainingData, methods: list[str]) -> list[str]:
    """Interactive fine-tuning on instances and semantic tasks; BLO on semantic ones (instances: their foreground
    task); SUM where there are unlabeled images."""
    chosen = [m for m in methods if m in METHODS]
    out = []
    for method in chosen:
        if method == "blo" and data.task != "semantic":
            continue
        if method == "interactive" and task_id.endswith("/foreground"):
            continue  # the instance task of the same images covers it
        if method == "sum" and not data.unlabeled:
            continue
        out.append(method)
    return out


def configurations(method: str, task_id: str, args: argparse.Namespace) -> list[tuple[Configuration, float | None]]:
    """(configuration, seconds its run should take) of the default, then ``LADDER_BASE`` at each ladder learning
    rate (in the order given) alternating with random configurations. With ``--steps`` the schedule lengths are drawn
    from it and the seconds are None; otherwise the configurations keep the default length until ``size_schedule``.
    Seeded by the task's name and the method, so the list does not depend on which other tasks are in the build (a
    resumed build finds its runs again)."""
    rng = np.random.default_rng([args.seed, zlib.crc32(task_id.encode()), zlib.crc32(method.encode())])
    space = SearchSpace((method,))
    default = space.default()
    ladder = [default.replace(**LADDER_BASE, lr=lr) for lr in args.lr_ladder]
    randoms = [space.sample(rng) for _ in range(args.configs)]
    # Alternating, so a build cut short still has both learning-rate contrasts and varied configurations.
    configs = [default] + [c for pair in itertools.zip_longest(ladder, randoms) for c in pair if c is not None]
    if args.steps:
        return [(c.replace(steps=int(rng.choice(args.steps))), None) for c in configs]
    return [(c, float(rng.choice(args.run_seconds))) for c in configs]


def run_key(task_id: str, config: dict, seed: int, model_sha256: str | None) -> tuple:
    """What identifies a run across builds: the schedule length is left out (it is sized on the machine)."""
    return task_id, json.dumps({k: v for k, v in config.items() if k != "steps"}, sort_keys=True), seed, model_sha256


def round_robin(lists: list[list]) -> list:
    """The first element of every list, then the second of every list, and so on."""
    return [lst[j] for j in range(max(map(len, lists), default=0)) for lst in lists if j < len(lst)]


def checkpoint_info(model: SamModel) -> dict:
    """What the bundled model's export says about its checkpoint (training steps, CPU seconds), if it says."""
    if model.name != "samtune_small":
        return {}
    from importlib import resources

    path = Path(str(resources.files("napari_samtune") / "models" / "samtune_small.json"))
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def size_schedule(
    config: Configuration,
    seconds: float,
    max_seconds: float,
    model: SamModel,
    data: TrainingData,
    seed: int,
    cache_root: str | bool,
) -> tuple[Configuration | None, dict]:
    """``config`` with the schedule that makes its run take about ``seconds`` here, from a probe that sets it up,
    validates and trains one step; None when even the shortest schedule would take more than ``max_seconds``. Also
    the probe's costs."""
    probe = Trial(config.replace(steps=MIN_STEPS), model, data, seed=seed, cache_root=cache_root, clock=CLOCK)
    for _ in probe.advance(lambda expected: probe.step_s is None):  # set-up, initial validation, one step
        pass
    costs = {"setup_s": probe.setup_s, "step_s": probe.step_s, "validation_s": probe.validation_s}
    probe.release()
    step_s, validation_s = max(probe.step_s or 1e-3, 1e-3), probe.validation_s or 0.0
    if MIN_STEPS * step_s + (RUNGS + 1) * validation_s > max_seconds:
        return None, costs
    steps = int((seconds - (RUNGS + 1) * validation_s) / step_s) // RUNGS * RUNGS
    return config.replace(steps=min(max(steps, MIN_STEPS), MAX_STEPS)), costs


def run_one(config, model: SamModel, data: TrainingData, seed: int, cache_root: str | bool) -> dict:
    """Train ``config`` to the end of its schedule; its curve and costs."""
    trial = Trial(config, model, data, seed=seed, cache_root=cache_root, clock=CLOCK)
    while trial.resumable:
        for _ in trial.advance():
            pass
    diverged = trial.state == "stopped"
    result = {
        "curve": trial.curve,
        "diverged": diverged,
        "note": trial.note if diverged else "",
        "setup_s": trial.setup_s,
        "step_s": trial.step_s,
        "validation_s": trial.validation_s,
    }
    trial.release()
    return result


def append_record(path: Path, record: dict) -> None:
    """Append one JSON line (after a newline if a killed run left the last line unfinished)."""
    broken = path.is_file() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
    with path.open("a") as handle:
        handle.write(("\n" if broken else "") + json.dumps(record) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=Path, default=ROOT / "runs" / "auto_meta" / "records.jsonl")
    parser.add_argument("--output", type=Path, default=default_meta_path())
    parser.add_argument("--model", default="samtune_small", help="model name, 'custom' (with --checkpoint) or 'tiny'")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--kinds", nargs="*", default=list(SCENE_KINDS), help="synthetic scene kinds")
    parser.add_argument("--images", type=int, default=8, help="images per synthetic task / shared data set")
    parser.add_argument("--size", type=int, default=256, help="side of the synthetic scenes")
    parser.add_argument("--shared-data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--datasets", nargs="*", default=list(SHARED_DATASETS), help="shared data sets to use")
    parser.add_argument("--methods", nargs="*", default=["interactive", "blo"])
    parser.add_argument("--configs", type=int, default=12, help="random configurations per task and method")
    parser.add_argument("--lr-ladder", type=float, nargs="*", default=[1e-5, 1e-4, 1e-3, 1e-2, 1e-1])
    parser.add_argument(
        "--run-seconds", type=float, nargs="+", default=[15, 30, 60], help="seconds a run's schedule is sized to"
    )
    parser.add_argument("--max-run-seconds", type=float, default=120, help="longer configurations: costs only")
    parser.add_argument("--steps", type=int, nargs="*", default=None, help="fixed schedule lengths instead")
    parser.add_argument("--exclude", nargs="*", default=[], help="data sets left out of running and fitting")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu-minutes", type=float, default=None, help="start no run after this many CPU minutes")
    parser.add_argument("--fit-only", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--members", type=int, default=5, help="MLPs in the performance ensemble")
    parser.add_argument("--epochs", type=int, default=400)
    args = parser.parse_args(argv)
    if any(s % RUNGS or s < MIN_STEPS for s in args.steps or ()):
        parser.error(f"schedule lengths must be multiples of {RUNGS}")
    if args.threads:
        torch.set_num_threads(args.threads)

    model = get_model(args.model, args.checkpoint)
    if not args.fit_only:
        collect(args, model)
    # Curves of another base model (e.g. a smoke run's) would mislead the predictors of this one.
    records = [r for r in read_records(args.records) if r.get("model_sha256") == model.weights_sha256]
    meta = fit_meta_knowledge(records, exclude=args.exclude, seed=args.seed, members=args.members, epochs=args.epochs)
    meta.info["checkpoint"] = checkpoint_info(model)
    meta.info["records"] = str(args.records.relative_to(ROOT) if args.records.is_relative_to(ROOT) else args.records)
    path = save_meta_knowledge(meta, args.output)
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB): {json.dumps(meta.info)}")


def collect(args: argparse.Namespace, model: SamModel) -> None:
    cpu_started = time.process_time()
    version = space_version()
    done = {
        run_key(r["task"], r["config"], r["seed"], r.get("model_sha256"))
        for r in read_records(args.records)
        if r.get("space_version") == version
    }
    kinds = [k for k in args.kinds if f"synthetic-{k}" not in args.exclude]
    tasks = synthetic_tasks(kinds, args.images, args.size, args.seed)
    tasks += shared_tasks(args.shared_data, [d for d in args.datasets if d not in args.exclude], args.images)
    args.records.parent.mkdir(parents=True, exist_ok=True)
    cache_root = str(args.records.parent / "embeddings")
    runs = []
    for dataset, task_id, data in tasks:
        features = dataset_features(data)
        for method in methods_for(task_id, data, args.methods):
            runs.append([(dataset, task_id, data, features, *c) for c in configurations(method, task_id, args)])
    runs = round_robin(runs)
    todo = [run for run in runs if run_key(run[1], run[4], args.seed, model.weights_sha256) not in done]
    print(f"{len(runs)} runs over {len(tasks)} tasks, {len(runs) - len(todo)} already recorded", flush=True)
    for n, (dataset, task_id, data, features, config, seconds) in enumerate(todo):
        cpu_minutes = (time.process_time() - cpu_started) / 60
        if args.cpu_minutes is not None and cpu_minutes >= args.cpu_minutes:
            print(f"stopping after {cpu_minutes:.1f} CPU minutes ({len(todo) - n} runs left); run again to continue")
            return
        probe = {}
        if seconds is not None:
            sized, probe = size_schedule(config, seconds, args.max_run_seconds, model, data, args.seed, cache_root)
        if seconds is not None and sized is None:
            result = {"curve": [], "diverged": False, "cut": True, "note": "too slow for --max-run-seconds", **probe}
        else:
            config = sized if seconds is not None else config
            result = {**run_one(config, model, data, args.seed, cache_root), "cut": False}
        record = {
            "dataset": dataset,
            "task": task_id,
            "config": dict(config),
            "seed": args.seed,
            "features": features,
            **result,
            "run_seconds": seconds,
            "probe_step_s": probe.get("step_s"),
            "model": model.name,
            "model_sha256": model.weights_sha256,
            "device": str(model.device),
            "threads": torch.get_num_threads(),
            "clock": "cpu",  # costs are CPU seconds of this process
            "space_version": version,
        }
        append_record(args.records, record)
        curve = " ".join(f"{v:.2f}" for v in result["curve"])
        print(f"{task_id} {config.summary()}: {curve} ({result['step_s'] or 0:.3f} s/step)", flush=True)


if __name__ == "__main__":
    main()
