"""Ablations of semi- and weakly supervised adaptation: SUM and WeSAM on real data, with few labels.

Per set: the held-out test split of ``benchmarks/uncertainty.py`` (``split_pairs``, 30 %, seed 0); from the training
split, 4 labeled images (chosen by ``--seed``) and the rest (up to 10; 4 with ``--quick``) unlabeled (SUM) or weakly
labeled with the tight box of every ground-truth object (WeSAM). Everything is deterministic for a given seed. Budgets
are training steps, the same for every variant of a table (printed with the results).

1. Semi-supervised (SUM): held-out mIoU from one click at each object's interior point, after the same number of
   steps of
   - labeled-only: interactive fine-tuning of the mask decoder on the 4 labeled images;
   - plain pseudo-labeling: SUM with ``weighting=False`` (pseudo-labels used as they are, clicks drawn uniformly);
   - SUM: pseudo-label loss weighted by (1 − U) and clicks drawn ∝ (1 − U), U from the refinement head;
   and zero-shot for reference. Each method keeps its best weights on its validation image (one of the 4 labeled),
   as ``fine_tune`` does for a user.
2. Weakly supervised (WeSAM, boxes only): held-out mIoU from each object's exact box (single-mask output) for the full
   method, without the anchor and without the contrastive term, along the training (LoRA on the image encoder), with
   the weights as they are at each step (no choice of best weights by labels); step 0 is zero-shot.

    python benchmarks/ablations.py                     # 3 sets for SUM, nuclei + polyps for WeSAM (< 15 min, 2 cores)
    python benchmarks/ablations.py --quick             # fewer steps and images (about 4.5 CPU-minutes)
    python benchmarks/ablations.py --sets polyps --wesam-steps 200   # a longer curve on one set
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import click_row_col, data_folder, exact_box, iou, set_threads, target
from napari_samtune.core.datasets import Pair, load_pairs, split_pairs
from napari_samtune.core.image import as_volume
from napari_samtune.core.jobs import drive
from napari_samtune.core.models.registry import SamModel, load_model
from napari_samtune.core.predictor import ObjectPrompt
from napari_samtune.core.segmenter import Segmenter
from napari_samtune.core.training.data import TrainingData, WeakLabels, prepare_training_data
from napari_samtune.core.training.fine_tune import fine_tune
from napari_samtune.core.training.interactive import InteractiveSettings
from napari_samtune.core.training.loop import TrainConfig, run_training
from napari_samtune.core.training.sum import SUMSettings
from napari_samtune.core.training.wesam import WeakSelfTraining, WeSAMSettings

N_LABELED = 4


@dataclass(frozen=True)
class SetSpec:
    folder: str
    instances: bool  # instance ids in the masks; else connected components of the foreground are the objects
    min_area: int  # smaller objects are neither prompted nor boxed


SETS = {
    "nuclei": SetSpec("dsb2018_fluo_nuclei", True, 20),
    "polyps": SetSpec("kvasir_seg_polyps_256", False, 100),
    "membranes": SetSpec("isbi2012_em_membranes", False, 100),
}
WESAM_SETS = ("nuclei", "polyps")


@dataclass(frozen=True)
class Budget:
    """Per-run budgets: training steps, unlabeled/weak images used, test images and objects per test image."""

    sum_steps: int
    wesam_steps: int
    unlabeled: int
    test_images: int
    objects_per_image: int
    wesam_test_images: int

    def wesam_checkpoints(self) -> list[int]:
        return sorted({max(1, self.wesam_steps // 4), max(1, self.wesam_steps // 2), self.wesam_steps})


DEFAULT = Budget(sum_steps=40, wesam_steps=40, unlabeled=10, test_images=10, objects_per_image=20, wesam_test_images=5)
QUICK = Budget(sum_steps=8, wesam_steps=6, unlabeled=4, test_images=4, objects_per_image=8, wesam_test_images=3)
# The same labeled-side settings for all three runs of a set, lighter than the defaults to fit the time limit: 2
# tiles × 8 objects a step and one corrective click round (a quarter of the default's decoder work). Pseudo-labels
# from an 8 × 8 grid of clicks instead of 16 × 16 (the objects here are few per tile, or large). Plain
# pseudo-labeling never uses U, so it skips the refinement head ("entropy" is free).
LABELED_SIDE = {"units_per_step": 2, "objects_per_unit": 8, "corrective_rounds": 1}
RUN_SETTINGS = {
    "labeled_only": ("interactive", InteractiveSettings(**LABELED_SIDE)),
    "plain_pseudo": ("sum", SUMSettings(**LABELED_SIDE, grid_points=8, weighting=False, uncertainty="entropy")),
    "sum": ("sum", SUMSettings(**LABELED_SIDE, grid_points=8)),
}


@dataclass
class Split:
    labeled: list[Pair]
    unlabeled: list[Pair]
    test: list[Pair]


def make_split(spec: SetSpec, n_unlabeled: int | None, seed: int) -> Split:
    """Held-out test split as in the other benchmarks; ``N_LABELED`` training images by ``seed``, the rest
    (at most ``n_unlabeled``, in a seed-fixed order) unlabeled."""
    train, test = split_pairs(load_pairs(data_folder(spec.folder)), test_fraction=0.3, seed=0)
    order = np.random.default_rng(seed).permutation(len(train))
    labeled = [train[i] for i in sorted(order[:N_LABELED])]
    rest = [train[i] for i in sorted(order[N_LABELED:][:n_unlabeled])]
    return Split(labeled, rest, test)


def objects_of(labels: np.ndarray, spec: SetSpec, limit: int | None = None) -> list[np.ndarray]:
    if not spec.instances:
        labels, _ = ndimage.label(labels > 0)
    ids, areas = np.unique(labels[labels > 0], return_counts=True)
    return [labels == i for i, a in zip(ids, areas) if a >= spec.min_area][:limit]


def training_labels(pair: Pair, spec: SetSpec) -> np.ndarray:
    """Labels as a user paints them: instance ids, or the binary foreground (0/1) of a semantic set."""
    return pair.labels.astype(np.int32) if spec.instances else (pair.labels > 0).astype(np.int32)


def labeled_data(split: Split, spec: SetSpec, unlabeled: bool) -> TrainingData:
    return prepare_training_data(
        [p.image for p in split.labeled],
        [training_labels(p, spec) for p in split.labeled],
        task="instances" if spec.instances else "semantic",
        all_objects_labeled=True,  # the benchmark sets label every object
        unlabeled=[p.image for p in split.unlabeled] if unlabeled else (),
    )


def boxed_data(split: Split, spec: SetSpec) -> TrainingData:
    """The labeled images plus every other training image with only the exact box of each object (``WeakLabels``)."""
    data = labeled_data(split, spec, unlabeled=False)
    volumes, weak = list(data.volumes), dict(data.weak)
    for pair in split.unlabeled:
        boxes = [exact_box(m) for m in objects_of(pair.labels, spec)]
        if boxes:
            weak[len(volumes)] = WeakLabels(boxes=np.array(boxes))
            volumes.append(as_volume(pair.image))
    return replace(data, volumes=volumes, weak=weak)


def prompted_miou(
    model: SamModel, pairs: list[Pair], spec: SetSpec, prompt: str, per_image: int, cache_root: Path | bool
) -> float:
    """Mean IoU over the objects of ``pairs`` (at most ``per_image`` each) from one interior click (``"click"``) or
    the exact box (``"box"``) per object."""
    segmenter = Segmenter(model, cache_root=cache_root)
    ious = []
    for pair in pairs:
        masks = objects_of(pair.labels, spec, per_image)
        if not masks:
            continue
        segmenter.set_image(pair.image)
        if prompt == "click":
            prompts = [ObjectPrompt(points=click_row_col(m)) for m in masks]
        else:
            prompts = [ObjectPrompt(box=exact_box(m)) for m in masks]
        predicted = segmenter.segment(prompts).masks
        ious += [iou(p, m) for p, m in zip(predicted, masks)]
    return float(np.mean(ious))


def progress(message: str) -> None:
    print(f"  ... {message}", file=sys.stderr, flush=True)


def semi_supervised(
    model: SamModel, name: str, budget: Budget, seed: int, cache: Path, filters: dict | None = None
) -> dict:
    """Zero-shot, labeled-only, plain pseudo-labeling and SUM on one set: held-out click mIoU and relative cost.
    ``filters``: SUMSettings fields overriding the pseudo-object filters (both pseudo-labeling runs)."""
    cpu = time.process_time()
    spec = SETS[name]
    split = make_split(spec, budget.unlabeled, seed)
    test = split.test[: budget.test_images]
    config = TrainConfig(steps=budget.sum_steps, seed=seed, validate_every=max(1, budget.sum_steps // 4))
    data = {False: labeled_data(split, spec, unlabeled=False), True: labeled_data(split, spec, unlabeled=True)}
    out = {"zero_shot": prompted_miou(model, test, spec, "click", budget.objects_per_image, cache)}
    seconds, pseudo = {}, {}
    for key, (method, settings) in RUN_SETTINGS.items():
        settings = replace(settings, **filters) if filters and method == "sum" else settings
        start, objects = time.process_time(), []
        training = fine_tune(model, data[method == "sum"], method, settings, config, cache_root=cache)

        def count(event, objects: list = objects) -> None:
            if "pseudo_objects" in event.losses:
                objects.append(event.losses["pseudo_objects"])

        result = drive(training, count)
        seconds[key] = time.process_time() - start
        out[key] = prompted_miou(result.model, test, spec, "click", budget.objects_per_image, cache)
        if method == "sum":
            pseudo[key] = float(np.mean(objects)) if objects else 0.0
        progress(f"{name} {key}: click mIoU {out[key]:.3f}")
    out["cost_vs_labeled_only"] = {k: v / seconds["labeled_only"] for k, v in seconds.items()}
    # Pseudo-objects trained per unlabeled step: 0 means no proposal passed the filters and SUM fell back to labels.
    out["pseudo_objects_per_step"] = pseudo
    out["images"] = {"labeled": len(split.labeled), "unlabeled": len(split.unlabeled), "test": len(test)}
    out["cpu_s"] = time.process_time() - cpu
    return out


WESAM_VARIANTS = {
    "full": WeSAMSettings(),
    "no_anchor": WeSAMSettings(anchor=False),
    "no_contrastive": WeSAMSettings(contrastive=False),
}


def weakly_supervised(model: SamModel, name: str, budget: Budget, seed: int) -> dict:
    """WeSAM variants with boxes only: held-out box mIoU at step 0 (zero-shot) and at each checkpoint."""
    cpu = time.process_time()
    spec = SETS[name]
    split = make_split(spec, budget.unlabeled, seed)
    test = split.test[: budget.wesam_test_images]
    data = boxed_data(split, spec)
    checkpoints = budget.wesam_checkpoints()
    # Validation only at the end: the curve shows the weights as trained, not the best ones chosen by labels.
    config = TrainConfig(steps=budget.wesam_steps, seed=seed, validate_every=budget.wesam_steps, warmup_steps=2)
    zero_shot = prompted_miou(model, test, spec, "box", budget.objects_per_image, False)
    curves, seconds = {}, {}
    for key, settings in WESAM_VARIANTS.items():
        work = model.copy()
        runner = WeakSelfTraining(work, data, settings, cache_root=False)
        curve, start, spent = {0: zero_shot}, time.process_time(), 0.0
        for event in run_training(runner, config):  # the result is not needed: the curve is measured here
            if event.step in checkpoints and event.step not in curve:
                lap = time.process_time()
                curve[event.step] = prompted_miou(work, test, spec, "box", budget.objects_per_image, False)
                spent += time.process_time() - lap
        seconds[key] = time.process_time() - start - spent
        curves[key] = curve
        progress(f"{name} wesam {key}: box mIoU by step {curve}")
    return {
        "zero_shot": zero_shot,
        "curves": {k: {str(s): v for s, v in c.items()} for k, c in curves.items()},
        "final": {k: c[max(c)] for k, c in curves.items()},
        "cost_vs_full": {k: v / seconds["full"] for k, v in seconds.items()},
        "images": {"labeled": len(split.labeled), "boxed": len(data.weak), "test": len(test)},
        "cpu_s": time.process_time() - cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps and images (about 4.5 CPU-minutes)")
    parser.add_argument("--sets", nargs="+", choices=sorted(SETS), default=list(SETS), help="sets to run")
    parser.add_argument("--sum-steps", type=int, default=None, help="training steps of each semi-supervised run")
    parser.add_argument("--wesam-steps", type=int, default=None, help="training steps of each WeSAM run")
    parser.add_argument("--seed", type=int, default=0, help="which training images are the labeled ones")
    parser.add_argument("--tables", nargs="+", choices=("sum", "wesam"), default=("sum", "wesam"))
    parser.add_argument(
        "--pseudo-iou",
        type=float,
        default=None,
        help="pseudo-object filter: minimum predicted IoU (default: SUMSettings' 0.7; a diagnostic for models whose "
        "IoU head is not calibrated yet)",
    )
    parser.add_argument("--pseudo-stability", type=float, default=None, help="pseudo-object filter: min stability")
    parser.add_argument("--checkpoint", type=Path, default=None, help="a pretraining checkpoint instead of the bundle")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    set_threads(args.threads)
    budget = QUICK if args.quick else DEFAULT
    budget = replace(
        budget, sum_steps=args.sum_steps or budget.sum_steps, wesam_steps=args.wesam_steps or budget.wesam_steps
    )
    if args.checkpoint is not None:
        from napari_samtune.pretraining.evaluation import load_checkpoint_model

        model = load_checkpoint_model(args.checkpoint)
    else:
        model = load_model("samtune_small", device="cpu")
    print(f"model: {model.name} {model.metadata}")
    print(
        f"budget per set: {N_LABELED} labeled + up to {budget.unlabeled} unlabeled/boxed training images; "
        f"SUM-table runs {budget.sum_steps} steps, WeSAM runs {budget.wesam_steps} steps (mIoU at "
        f"{budget.wesam_checkpoints()}); test: {budget.test_images} images (WeSAM {budget.wesam_test_images}), "
        f"≤ {budget.objects_per_image} objects each; seed {args.seed}; {args.threads} threads"
    )
    filters = {
        key: value
        for key, value in (("pred_iou_threshold", args.pseudo_iou), ("stability_threshold", args.pseudo_stability))
        if value is not None
    }
    sum_settings = RUN_SETTINGS["sum"][1]
    thresholds = {k: filters.get(k, getattr(sum_settings, k)) for k in ("pred_iou_threshold", "stability_threshold")}
    print(
        f"settings: labeled side {LABELED_SIDE} (decoder trained); SUM 8 × 8 pseudo-label grid, pseudo-objects with "
        f"{thresholds}, U from the refinement head; WeSAM LoRA rank 4 on the image encoder, 2 tiles × ≤ 8 boxes a step"
    )
    t0 = time.perf_counter()
    results: dict = {
        "model": model.name,
        "metadata": model.metadata,
        "budget": vars(budget),
        "seed": args.seed,
        "pseudo_filters": thresholds,
    }
    with tempfile.TemporaryDirectory() as cache:
        semi = {
            name: semi_supervised(model, name, budget, args.seed, Path(cache), filters)
            for name in args.sets
            if "sum" in args.tables
        }
    results["semi_supervised"] = semi
    if semi:
        print("\nSemi-supervised: held-out one-click mIoU (cost: CPU time relative to labeled-only)")
        print(
            f"{'set':<10} {'images L/U/T':>13} {'zero-shot':>10} {'labeled':>8} {'plain PL':>9} {'SUM':>7} "
            f"{'cost PL':>8} {'cost SUM':>9} {'pseudo/step PL':>15} {'SUM':>5}"
        )
        for name, r in semi.items():
            n, c, k = r["images"], r["cost_vs_labeled_only"], r["pseudo_objects_per_step"]
            print(
                f"{name:<10} {n['labeled']:>5}/{n['unlabeled']:>3}/{n['test']:>3} {r['zero_shot']:>10.3f} "
                f"{r['labeled_only']:>8.3f} {r['plain_pseudo']:>9.3f} {r['sum']:>7.3f} {c['plain_pseudo']:>7.1f}x "
                f"{c['sum']:>8.1f}x {k['plain_pseudo']:>15.1f} {k['sum']:>5.1f}"
            )
    weak = {
        name: weakly_supervised(model, name, budget, args.seed)
        for name in args.sets
        if name in WESAM_SETS and "wesam" in args.tables
    }
    results["weakly_supervised"] = weak
    if weak:
        print("\nWeSAM, boxes only: held-out box mIoU by training step (step 0 = zero-shot; cost: CPU time vs full)")
        steps = [0, *budget.wesam_checkpoints()]
        print(f"{'set':<10} {'variant':<15} " + " ".join(f"{'@' + str(s):>7}" for s in steps) + f" {'cost':>6}")
        for name, r in weak.items():
            for variant, curve in r["curves"].items():
                values = " ".join(f"{curve.get(str(s), float('nan')):>7.3f}" for s in steps)
                print(f"{name:<10} {variant:<15} {values} {r['cost_vs_full'][variant]:>5.2f}x")
    elapsed, cpu = time.perf_counter() - t0, time.process_time()
    results["elapsed_s"], results["process_cpu_s"] = elapsed, cpu
    print(f"\nran in {elapsed / 60:.1f} min ({cpu / 60:.1f} CPU min)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if semi:
        margins = {n: r["sum"] - max(r["labeled_only"], r["plain_pseudo"]) for n, r in semi.items()}
        wins = [n for n, m in margins.items() if m > 0]
        print(
            "SUM − best of labeled-only / plain pseudo-labeling: "
            + ", ".join(f"{n} {m:+.3f}" for n, m in margins.items())
        )
        print(target("sum_beats_labeled_only_and_plain_pseudo_labels_sets", len(wins), ">=", 2))
    for name, r in weak.items():
        print(target(f"{name}_wesam_boxes_minus_zero_shot_box_miou", r["final"]["full"] - r["zero_shot"], ">=", 0.05))


if __name__ == "__main__":
    main()
