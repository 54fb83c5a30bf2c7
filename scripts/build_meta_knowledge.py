"""Build the meta-knowledge of automatic fine-tuning: learning curves of configurations × tasks, and the predictors.

    python scripts/build_meta_knowledge.py                       # run (or continue) everything, fit, write the file
    python scripts/build_meta_knowledge.py --exclude kvasir_seg_polyps_256 --output /tmp/loo_kvasir.npz
    python scripts/build_meta_knowledge.py --fit-only            # refit from the records already collected
    python scripts/build_meta_knowledge.py --model tiny --kinds nuclei lesion --datasets --configs 1 \\
        --steps 16 --images 6 --size 64                         # smoke run (random tiny model, minutes on a CPU)

Tasks: synthetic scenes of each kind in ``core.synthetic`` (instances for interactive fine-tuning, their binary
foreground for BLO) and the shared data sets (``--shared-data``, default ../shared/data relative to the project).
Per task and method: the default configuration, the default with each learning rate of ``--lr-ladder``, and
``--configs`` random configurations, each with a schedule length from ``--steps``, trained to the end of its
schedule. Each finished run is appended to ``--records`` (JSONL) at once, so a cut build continues where it stopped
(runs already recorded are skipped). ``--exclude NAME`` leaves a data set out of running and fitting (leave one data
set out, to evaluate on it). The predictors are then fitted and written atomically to ``--output``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from napari_samtune.core.datasets import load_pairs
from napari_samtune.core.models import SamArchitecture, SamModel, build_sam
from napari_samtune.core.models.registry import load_model
from napari_samtune.core.synthetic import SCENE_KINDS, make_scenes
from napari_samtune.core.training.auto.features import dataset_features
from napari_samtune.core.training.auto.knowledge import (
    default_meta_path,
    fit_meta_knowledge,
    read_records,
    save_meta_knowledge,
)
from napari_samtune.core.training.auto.space import RUNGS, SearchSpace, space_version
from napari_samtune.core.training.auto.trial import Trial
from napari_samtune.core.training.data import TrainingData, prepare_training_data
from napari_samtune.core.training.fine_tune import METHODS

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = (
    "dsb2018_fluo_nuclei",
    "kvasir_seg_polyps_256",
    "isbi2012_em_membranes",
    "sstem_drosophila_vnc_multiclass",
)
# A randomly initialised model of the tests' size: smoke runs only (its curves say little about a trained model).
TINY = SamArchitecture(
    img_size=64,
    patch_size=8,
    encoder_embed_dim=32,
    encoder_depth=2,
    encoder_num_heads=2,
    encoder_global_attn_indexes=(1,),
    window_size=4,
    prompt_embed_dim=32,
    mask_in_chans=8,
    decoder_depth=1,
    decoder_mlp_dim=64,
    decoder_num_heads=2,
    iou_head_hidden_dim=32,
    conv_stem_channels=(8, 16, 32),
)


def get_model(name: str, checkpoint: str | None) -> SamModel:
    if name == "tiny":
        torch.manual_seed(0)
        return SamModel(build_sam(TINY), "tiny", TINY, "random-seed0", torch.device("cpu"))
    return load_model(name, checkpoint=checkpoint)


def synthetic_tasks(kinds: list[str], images: int, size: int, seed: int) -> list[tuple[str, str, TrainingData]]:
    """(dataset name, task id, data) of each kind: instances, and the binary foreground (for BLO)."""
    tasks = []
    for kind in kinds:
        scenes = make_scenes(images, seed, size=size, kind=kind)
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


def configurations(method: str, args: argparse.Namespace, rng: np.random.Generator) -> list:
    """The default, the default at each ladder learning rate, and random configurations; schedules from --steps."""
    space = SearchSpace((method,))
    default = space.default()
    configs = [default] + [default.replace(lr=lr) for lr in args.lr_ladder]
    configs += [space.sample(rng) for _ in range(args.configs)]
    return [c.replace(steps=int(rng.choice(args.steps))) for c in configs]


def run_one(config, model: SamModel, data: TrainingData, seed: int, cache_root: str | bool) -> dict:
    """Train ``config`` to the end of its schedule; its curve and costs."""
    trial = Trial(config, model, data, seed=seed, cache_root=cache_root)
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


def main() -> None:
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
    parser.add_argument("--steps", type=int, nargs="+", default=[64, 128, 256, 512], help="schedule lengths")
    parser.add_argument("--exclude", nargs="*", default=[], help="data sets left out of running and fitting")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-minutes", type=float, default=None, help="start no run after this; then fit")
    parser.add_argument("--fit-only", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--members", type=int, default=5, help="MLPs in the performance ensemble")
    parser.add_argument("--epochs", type=int, default=400)
    args = parser.parse_args()
    if any(s % RUNGS for s in args.steps):
        parser.error(f"schedule lengths must be multiples of {RUNGS}")
    if args.threads:
        torch.set_num_threads(args.threads)

    model = get_model(args.model, args.checkpoint)
    if not args.fit_only:
        collect(args, model)
    # Curves of another base model (e.g. a smoke run's) would mislead the predictors of this one.
    records = [r for r in read_records(args.records) if r.get("model_sha256") == model.weights_sha256]
    meta = fit_meta_knowledge(records, exclude=args.exclude, seed=args.seed, members=args.members, epochs=args.epochs)
    path = save_meta_knowledge(meta, args.output)
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB): {json.dumps(meta.info)}")


def collect(args: argparse.Namespace, model: SamModel) -> None:
    started = time.monotonic()
    version = space_version()
    done = {
        (r["task"], json.dumps(r["config"], sort_keys=True), r["seed"], r.get("model_sha256"))
        for r in read_records(args.records)
        if r.get("space_version") == version
    }
    kinds = [k for k in args.kinds if f"synthetic-{k}" not in args.exclude]
    tasks = synthetic_tasks(kinds, args.images, args.size, args.seed)
    tasks += shared_tasks(args.shared_data, [d for d in args.datasets if d not in args.exclude], args.images)
    args.records.parent.mkdir(parents=True, exist_ok=True)
    cache_root = str(args.records.parent / "embeddings")
    for t, (dataset, task_id, data) in enumerate(tasks):
        features = dataset_features(data)
        for m, method in enumerate(methods_for(task_id, data, args.methods)):
            rng = np.random.default_rng([args.seed, t, m])
            for config in configurations(method, args, rng):
                key = (task_id, config.to_json(), args.seed, model.weights_sha256)
                if key in done:
                    continue
                if args.max_minutes is not None and time.monotonic() - started > 60 * args.max_minutes:
                    print(f"stopping after {args.max_minutes} minutes; run again to continue")
                    return
                result = run_one(config, model, data, args.seed, cache_root)
                record = {
                    "dataset": dataset,
                    "task": task_id,
                    "config": dict(config),
                    "seed": args.seed,
                    "features": features,
                    **result,
                    "model": model.name,
                    "model_sha256": model.weights_sha256,
                    "device": str(model.device),
                    "space_version": version,
                }
                append_record(args.records, record)
                curve = " ".join(f"{v:.2f}" for v in result["curve"])
                print(f"{task_id} {config.summary()}: {curve} ({result['step_s'] or 0:.3f} s/step)", flush=True)


if __name__ == "__main__":
    main()
