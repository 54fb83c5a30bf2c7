"""Adapting the bundled model to a few labeled images, against zero-shot, trivial baselines and a U-Net from scratch.

Each set of ../shared/data is split once into a held-out test split (``core.datasets.split_pairs``, 20 %, seed 0)
and a training pool in a fixed order (seed 1); k = 4, 8, 16 training images are the first k of that pool (nested).
``fine_tune`` splits its own validation items off those k images (25 %), as it does for a user.

- ``dsb2018_fluo_nuclei``: one click at each test nucleus's interior point → IoU per nucleus, averaged (mIoU); the
  bundled model zero-shot vs after interactive fine-tuning (mask decoder, cached embeddings). Baselines: the clicked
  component of a global Otsu threshold, the inscribed ellipse of the nucleus's exact box, and the clicked component of
  the U-Net's foreground.
- ``kvasir_seg_polyps_256``, ``isbi2012_em_membranes`` (the object is the membrane, mask value 0; the interior covers
  ~77 % of the pixels, so its IoU is high for any mostly-foreground map) and
  ``sstem_drosophila_vnc_multiclass`` (all 5 classes, background included): prompt-free segmentation with BLO prompt
  learning; IoU per class pooled over the test images, averaged over the classes. Zero-shot is the same prompt-free
  path before any training (BLO's initial prompt tokens). Baseline: a global Otsu threshold per image, its dark and
  bright sides given the two classes that score best on the k training images; and the majority class everywhere.
  The sstem images (1024²) are cropped to their central 512² (``--crop``), then tiled as the core does (9 overlapping
  256² tiles at native resolution, tiles blended at prediction).
- U-Net (``unet_baseline.py``, 1.9 M parameters, like the bundled model's 2.0 M): trained from scratch on the same k
  images for the same time as the fine-tune it is compared with (``fine_tune`` from call to return: set-up on cached
  embeddings, training loop, validations).
- BLO vs single-level training (prompts and weights trained together on all training items) at k = 4, same budget:
  prompt-free IoU on the training items and on the test split; the gap between them.
- Time to quality: nuclei with k = 8 runs longer (``--curve-budget``); from the loop's validation events, the first
  time its validation reaches 95 % of the final value (the best, which the run returns), and 95 % of the gain over the
  initial value.

Budgets count CPU seconds of this process (``--clock cpu``, the default; ``--clock wall`` counts wall time), with one
thread by default, so that a machine shared with other work gives about the same numbers as an idle one, where they
are wall seconds. Per fine-tune: interactive 30 (nuclei at k = 8: 80, for the time-to-quality curve), BLO 15; the
U-Net gets what its fine-tune used. Fine-tuning uses the product's default settings. Every image is encoded once
(timed separately, shared by zero-shot, fine-tuning and evaluation through an embedding cache in a temporary folder)
and counted on neither side of a comparison. The default run needs about 800 CPU-s (under 15 minutes on 2 cores).

    python benchmarks/adapt.py                         # k = 4, 8, 16 (~800 CPU-s)
    python benchmarks/adapt.py --quick                 # k = 4, fewer test images, 12/8 s per fine-tune (~3 min)
    python benchmarks/adapt.py --sets polyps --k 4 8 --budget 20 --json adapt.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_common_arguments, click_row_col, data_folder, exact_box, iou, set_threads, target
from bundled_quality import grey, inscribed_ellipse, otsu_component
from napari_samtune.core.automatic import class_logits, logits_to_result, segment_automatic
from napari_samtune.core.datasets import Pair, load_pairs, split_pairs
from napari_samtune.core.embeddings import EmbeddingStore, PlaneEmbedding
from napari_samtune.core.image import as_volume
from napari_samtune.core.jobs import drive
from napari_samtune.core.models.registry import SamModel, load_model
from napari_samtune.core.predictor import ObjectPrompt
from napari_samtune.core.segmenter import Segmenter
from napari_samtune.core.training.blo import BLOPromptLearning, BLOSettings
from napari_samtune.core.training.data import TrainingData, prepare_training_data
from napari_samtune.core.training.fine_tune import FineTuneResult, fine_tune
from napari_samtune.core.training.loop import TrainConfig
from unet_baseline import SmallUNet, n_parameters, predict_unet, train_unet

CLOCK = time.process_time  # budgets in CPU seconds of this process (``--clock wall``: wall seconds)
TEST_FRACTION = 0.2
# Seconds per fine-tune by method: an interactive step (32 objects × 3 decoder passes) costs ~4 CPU-s, a BLO step
# 0.2–1 CPU-s.
BUDGETS = {"interactive": 30.0, "blo": 15.0}
QUICK_BUDGETS = {"interactive": 12.0, "blo": 8.0}
# Validation (best weights kept, and the time-to-quality curve) every so many steps: ~every 15 CPU-s for interactive.
VALIDATE_EVERY = {"interactive": 4, "blo": 10}
GAP_K = 4
CURVE_K = 8
MIN_NUCLEUS_AREA = 5


@dataclass(frozen=True)
class SetSpec:
    folder: str
    name: str
    prompted: bool  # True: single click per instance; False: prompt-free semantic segmentation
    n_classes: int  # pixel classes, background included
    crop: bool = False  # central crop (``--crop``) before anything else
    quick_test: int = 4  # test images in --quick
    zero_is_foreground: bool = False  # binary masks whose 0 marks the object (ISBI: 0 = membrane)


SETS = (
    SetSpec("dsb2018_fluo_nuclei", "nuclei", True, 2, quick_test=6),
    SetSpec("kvasir_seg_polyps_256", "polyps", False, 2, quick_test=10),
    SetSpec("isbi2012_em_membranes", "em_membranes", False, 2, quick_test=3, zero_is_foreground=True),
    SetSpec("sstem_drosophila_vnc_multiclass", "sstem_5class", False, 5, crop=True, quick_test=2),
)


def class_map(spec: SetSpec, labels: np.ndarray) -> np.ndarray:
    """Pixel class index in [0, n_classes): object 1 / background 0 for instance and binary masks, values as given
    for the multi-class set."""
    if spec.n_classes > 2:
        return labels.astype(np.int64)
    return ((labels == 0) if spec.zero_is_foreground else (labels > 0)).astype(np.int64)


def load_set(spec: SetSpec, crop: int, test_limit: int | None) -> tuple[list[Pair], list[Pair]]:
    """(training pool in its fixed order, held-out test pairs)."""
    pairs = load_pairs(data_folder(spec.folder))
    if spec.crop and crop:
        pairs = [Pair(p.name, _centre(p.image, crop), _centre(p.labels, crop)) for p in pairs]
    train, test = split_pairs(pairs, TEST_FRACTION, seed=0)
    order = np.random.default_rng(1).permutation(len(train))
    return [train[i] for i in order], test[:test_limit]


def _centre(a: np.ndarray, size: int) -> np.ndarray:
    r, c = (a.shape[0] - size) // 2, (a.shape[1] - size) // 2
    return np.ascontiguousarray(a[r : r + size, c : c + size]) if r >= 0 and c >= 0 else a


def embed(model: SamModel, image: np.ndarray, cache: Path) -> PlaneEmbedding:
    return EmbeddingStore(model, as_volume(image), cache_root=cache).plane(0)


def run_fine_tune(
    model: SamModel, data: TrainingData, method: str, settings: object, budget: float, cache: Path
) -> tuple[FineTuneResult, float, list[tuple[float, float]]]:
    """Fine-tune for ``budget`` seconds of ``CLOCK`` (set-up on cached embeddings included). Returns the result,
    the seconds it took from call to return, and (seconds, validation) for each validation in the loop's history."""
    start = CLOCK()
    every = VALIDATE_EVERY[method]
    if CLOCK is time.perf_counter:
        config, stop = TrainConfig(time_budget_s=budget, validate_every=every), lambda: False
    else:  # the loop's own budget is wall time; CPU seconds stop it through cancellation (best weights kept)
        config, stop = TrainConfig(validate_every=every), lambda: CLOCK() - start >= budget
    run = fine_tune(model, data, method, settings, config, should_stop=stop, cache_root=cache)
    seen = {}

    def note(event) -> None:
        if event.validation is not None:
            seen[event.step] = CLOCK() - start

    result = drive(run, note)
    end = CLOCK() - start
    return result, end, [(seen.get(h["step"], end), h["validation"]) for h in result.training.history]


# --- prompted set: one click per nucleus ---------------------------------------------------------------------------


@dataclass
class ClickImage:
    image: np.ndarray
    labels: np.ndarray
    ids: list[int]
    clicks: list[np.ndarray]
    boxes: list[np.ndarray]


def click_images(test: list[Pair]) -> list[ClickImage]:
    out = []
    for p in test:
        ids, areas = np.unique(p.labels[p.labels > 0], return_counts=True)
        ids = [int(i) for i, a in zip(ids, areas) if a >= MIN_NUCLEUS_AREA]
        masks = [p.labels == i for i in ids]
        out.append(ClickImage(p.image, p.labels, ids, [click_row_col(m) for m in masks], [exact_box(m) for m in masks]))
    return out


def click_miou(model: SamModel, tests: list[ClickImage], cache: Path) -> float:
    segmenter = Segmenter(model, cache_root=cache)
    scores = []
    for t in tests:
        segmenter.set_image(t.image)
        pred = segmenter.segment([ObjectPrompt(points=c) for c in t.clicks]).masks
        scores += [iou(p, t.labels == i) for p, i in zip(pred, t.ids)]
    return float(np.mean(scores))


def click_baselines(tests: list[ClickImage]) -> dict[str, float]:
    otsu, ellipse = [], []
    for t in tests:
        for i, c, b in zip(t.ids, t.clicks, t.boxes):
            mask = t.labels == i
            otsu.append(iou(otsu_component(t.image, c), mask))
            ellipse.append(iou(inscribed_ellipse(mask.shape, b), mask))
    return {"otsu": float(np.mean(otsu)), "ellipse": float(np.mean(ellipse))}


def unet_click_miou(unet: SmallUNet, tests: list[ClickImage]) -> float:
    scores = []
    for t in tests:
        components, _ = ndimage.label(predict_unet(unet, t.image) == 1)
        for i, c in zip(t.ids, t.clicks):
            hit = components[int(c[0, 0]), int(c[0, 1])]
            pred = components == hit if hit else np.zeros(t.labels.shape, bool)
            scores.append(iou(pred, t.labels == i))
    return float(np.mean(scores))


# --- prompt-free sets ----------------------------------------------------------------------------------------------


def pooled_miou(preds: list[np.ndarray], truths: list[np.ndarray], n_classes: int) -> float:
    """IoU per class pooled over the images; binary: the foreground's, otherwise the mean over the classes present
    (in prediction or truth), background included."""
    inter, union = np.zeros(n_classes), np.zeros(n_classes)
    for p, t in zip(preds, truths):
        for k in range(n_classes):
            inter[k] += np.count_nonzero((p == k) & (t == k))
            union[k] += np.count_nonzero((p == k) | (t == k))
    ious = inter / np.maximum(union, 1)
    return float(ious[1]) if n_classes == 2 else float(ious[union > 0].mean())


def free_miou(model: SamModel, images: list[np.ndarray], truths: list[np.ndarray], n: int, cache: Path) -> float:
    preds = [segment_automatic(model, embed(model, im, cache)).labels for im in images]
    return pooled_miou(preds, truths, n)


def zero_shot_free_miou(
    model: SamModel, data: TrainingData, images: list[np.ndarray], truths: list[np.ndarray], n: int, cache: Path
) -> float:
    """The prompt-free path before training: BLO's initial prompt tokens on the bundled model."""
    prompts = BLOPromptLearning(model.copy(), data, BLOSettings(), cache_root=cache).prompts().detach()
    preds = [
        logits_to_result(class_logits(model, embed(model, im, cache), prompts), data.classes).labels for im in images
    ]
    return pooled_miou(preds, truths, n)


def otsu_fit(images: list[np.ndarray], classes: list[np.ndarray], n: int) -> np.ndarray:
    """The classes given to the dark and the bright side of each image's own Otsu threshold: ``(2,)`` class indices,
    the pair that scores best on the k training images (which side is the polyp, the membrane…)."""
    sides = [(grey(im) > threshold_otsu(grey(im))).astype(int) for im in images]
    pairs = [np.array([a, b]) for a in range(n) for b in range(n) if a != b]
    return max(pairs, key=lambda m: pooled_miou([m[s] for s in sides], classes, n))


def otsu_predict(image: np.ndarray, mapping: np.ndarray) -> np.ndarray:
    g = grey(image)
    return mapping[(g > threshold_otsu(g)).astype(int)]


def training_items(data: TrainingData) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The images and class maps of the items the weights and prompts were fitted to (validation excluded)."""
    images = [data.volumes[it.image].planes[it.plane] for it in data.train]
    return images, [it.labels.astype(np.int64) for it in data.train]


# --- driver --------------------------------------------------------------------------------------------------------


def time_to_fraction(points: list[tuple[float, float]]) -> dict:
    """From (seconds, validation) of a run: the initial and final (best, what the run returns) values and the first
    time validation reached 95 % of the final value, and 95 % of the gain over the initial value."""
    first, best = points[0][1], max(v for _, v in points)
    return {
        "initial": first,
        "final": best,
        "run_s": points[-1][0],
        "t95_quality_s": next(t for t, v in points if v >= 0.95 * best),
        "t95_gain_s": next(t for t, v in points if v >= first + 0.95 * (best - first)),
        "curve": points,
    }


def evaluate_set(spec: SetSpec, model: SamModel, args, cache: Path, log) -> dict:
    pool, test = load_set(spec, args.crop, spec.quick_test if args.quick else args.limit)
    ks = sorted({min(k, len(pool)) for k in args.k})
    start = CLOCK()
    for p in [*pool[: max(ks)], *test]:
        embed(model, p.image, cache)
    encode_s = CLOCK() - start
    log(f"\n== {spec.folder}: {len(test)} test images, pool {len(pool)}; encoded in {encode_s:.0f} s (excluded)")
    out = {"set": spec.name, "folder": spec.folder, "test_images": len(test), "encode_s": encode_s, "rows": []}
    test_images = [p.image for p in test]
    test_classes = [class_map(spec, p.labels) for p in test]
    if spec.prompted:
        tests = click_images(test)
        out["objects"] = sum(len(t.ids) for t in tests)
        out["zero_shot"] = click_miou(model, tests, cache)
        out.update(click_baselines(tests))
    for k in ks:
        images = [p.image for p in pool[:k]]
        classes = [class_map(spec, p.labels) for p in pool[:k]]
        data = prepare_training_data(
            images,
            [p.labels for p in pool[:k]] if spec.prompted else classes,
            task="instances" if spec.prompted else "semantic",
            all_objects_labeled=True,  # the benchmark sets label every object
        )
        method = "interactive" if spec.prompted else "blo"
        budget = args.curve_budget if spec.prompted and k == CURVE_K else args.budgets[method]
        result, seconds, curve = run_fine_tune(model, data, method, None, budget, cache)
        unet, unet_info = train_unet(images, classes, spec.n_classes, seconds=seconds, seed=k, clock=CLOCK)
        row = {
            "k": k,
            "method": method,
            "train_items": len(data.train),
            "validation_items": len(data.validation),
            "budget_s": budget,
            "seconds": seconds,
            "steps": result.training.steps,
            "stopped": result.training.stopped,
            "unet_steps": unet_info["steps"],
            "unet_s": unet_info["seconds"],
        }
        if spec.prompted:
            row["zero_shot"] = out["zero_shot"]
            row["fine_tuned"] = click_miou(result.model, tests, cache)
            row["otsu"], row["ellipse"], row["majority"] = out["otsu"], out["ellipse"], None
            row["unet"] = unet_click_miou(unet, tests)
        else:
            n = spec.n_classes
            row["zero_shot"] = zero_shot_free_miou(model, data, test_images, test_classes, n, cache)
            row["fine_tuned"] = free_miou(result.model, test_images, test_classes, n, cache)
            mapping = otsu_fit(images, classes, n)
            row["otsu"] = pooled_miou([otsu_predict(im, mapping) for im in test_images], test_classes, n)
            row["ellipse"] = None
            majority = np.bincount(np.concatenate([c.ravel() for c in classes]), minlength=n).argmax()
            row["majority"] = pooled_miou([np.full(t.shape, majority) for t in test_classes], test_classes, n)
            row["unet"] = pooled_miou([predict_unet(unet, im) for im in test_images], test_classes, n)
            if k == GAP_K:
                row["gap"] = gap_rows(spec, model, data, result, budget, test_images, test_classes, cache)
        if spec.prompted and k == CURVE_K:
            row["curve"] = time_to_fraction(curve)
        out["rows"].append(row)
        log(format_row(spec.name, row))
    return out


def gap_rows(spec, model, data, blo, budget, test_images, test_classes, cache) -> dict:
    """Train and test IoU of the BLO model and of single-level training with the same budget."""
    n = spec.n_classes
    single, _, _ = run_fine_tune(model, data, "blo", BLOSettings(single_level=True), budget, cache)
    train_images, train_classes = training_items(data)
    out = {}
    for name, result in (("blo", blo), ("single_level", single)):
        tr = free_miou(result.model, train_images, train_classes, n, cache)
        te = free_miou(result.model, test_images, test_classes, n, cache)
        out[name] = {"train": tr, "test": te, "gap": tr - te, "steps": result.training.steps}
    return out


HEADER = (
    f"{'set':<13} {'k':>3} {'tr/val':>6} {'steps':>6} {'sec':>6} {'zero-shot':>9} {'tuned':>6} {'gain':>6} "
    f"{'otsu':>6} {'ellipse':>7} {'majority':>8} {'unet':>6} {'unet steps':>10}"
)


def format_row(name: str, r: dict) -> str:
    def cell(value: float | None, width: int) -> str:
        return f"{value:>{width}.3f}" if value is not None else f"{'-':>{width}}"

    return (
        f"{name:<13} {r['k']:>3} {r['train_items']:>3}/{r['validation_items']:<2} {r['steps']:>6} {r['seconds']:>6.1f} "
        f"{r['zero_shot']:>9.3f} {r['fine_tuned']:>6.3f} {r['fine_tuned'] - r['zero_shot']:>+6.3f} {r['otsu']:>6.3f} "
        f"{cell(r['ellipse'], 7)} {cell(r['majority'], 8)} {r['unet']:>6.3f} {r['unet_steps']:>10}"
    )


def report(results: list[dict], args, log) -> list[str]:
    log("\n== adaptation (IoU on the held-out test split; nuclei: single-click mIoU per nucleus)")
    log(HEADER)
    for s in results:
        for r in s["rows"]:
            log(format_row(s["set"], r))
    gaps = [(s["set"], r["gap"]) for s in results for r in s["rows"] if "gap" in r]
    if gaps:
        log(f"\n== BLO vs single-level at k = {GAP_K} (same budget): prompt-free IoU on the training items and test")
        log(f"{'set':<13} {'method':<13} {'steps':>6} {'train':>6} {'test':>6} {'gap':>6}")
        for name, g in gaps:
            for method, v in g.items():
                log(f"{name:<13} {method:<13} {v['steps']:>6} {v['train']:>6.3f} {v['test']:>6.3f} {v['gap']:>+6.3f}")
    curves = [(s["set"], r) for s in results for r in s["rows"] if "curve" in r]
    for name, r in curves:
        c = r["curve"]
        log(
            f"\n== time to quality ({name}, k = {r['k']}, {r['steps']} steps in {c['run_s']:.0f} s, set-up included): "
            f"validation {c['initial']:.3f} → {c['final']:.3f}; 95 % of final at {c['t95_quality_s']:.0f} s "
            f"({c['t95_quality_s'] / c['run_s']:.2f} of the run), 95 % of the gain at {c['t95_gain_s']:.0f} s "
            f"({c['t95_gain_s'] / c['run_s']:.2f} of the run)"
        )
        log("   elapsed s → validation: " + ", ".join(f"{t:.0f}:{v:.3f}" for t, v in c["curve"]))
    lines = []
    by_name = {s["set"]: s for s in results}
    for name in ("polyps", "sstem_5class"):
        if name in by_name:
            gain = min(r["fine_tuned"] - r["zero_shot"] for r in by_name[name]["rows"])
            lines.append(target(f"{name}_tuned_minus_zero_shot_min_over_k", gain, ">=", 0.20))
    for s in results:
        margin = min(r["fine_tuned"] - r["unet"] for r in s["rows"])
        lines.append(target(f"{s['set']}_tuned_minus_unet_min_over_k", margin, ">", 0.0))
    for name, g in gaps:
        lines.append(
            target(f"{name}_single_level_gap_minus_blo_gap", g["single_level"]["gap"] - g["blo"]["gap"], ">", 0.0)
        )
    for name, r in curves:
        c = r["curve"]
        if c["run_s"] > 60:
            clock = "cpu" if CLOCK is time.process_time else "wall"
            lines.append(target(f"{name}_k{r['k']}_{clock}_seconds_to_95pct_of_final", c["t95_quality_s"], "<=", 60))
            lines.append(target(f"{name}_k{r['k']}_{clock}_seconds_to_95pct_of_gain", c["t95_gain_s"], "<=", 60))
    if not any(c[1]["curve"]["run_s"] > 60 for c in curves):
        log(f"\n(time to 95 % of final quality: not measured, needs nuclei with k = {CURVE_K} and --curve-budget > 60)")
    return lines


def main() -> None:
    global CLOCK
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="k = 4, a few test images per set, shorter budgets")
    parser.add_argument("--sets", nargs="+", default=None, help="set names or folders (default: all four)")
    parser.add_argument("--k", nargs="+", type=int, default=None, help="training images (default 4 8 16)")
    parser.add_argument("--budget", type=float, default=None, help="seconds per fine-tune, every method")
    parser.add_argument("--curve-budget", type=float, default=None, help=f"seconds for nuclei at k = {CURVE_K} (80)")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu", help="what budgets count (default cpu)")
    parser.add_argument("--crop", type=int, default=512, help="central crop of the 1024² sstem images (0: none)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    add_common_arguments(parser)  # --threads, --limit (test images per set)
    parser.set_defaults(threads=1)  # one thread: a CPU second of budget is then the same work on any machine
    args = parser.parse_args()
    args.k = args.k or ([GAP_K] if args.quick else [4, 8, 16])
    args.budgets = {m: args.budget or b for m, b in (QUICK_BUDGETS if args.quick else BUDGETS).items()}
    args.curve_budget = args.curve_budget or (args.budgets["interactive"] if args.quick else 80.0)
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    wanted = set(args.sets or [s.name for s in SETS])
    sets = [s for s in SETS if s.name in wanted or s.folder in wanted]
    if not sets:
        raise SystemExit(f"no set named {sorted(wanted)}; choose from {[s.name for s in SETS]}")
    set_threads(args.threads)
    logging.getLogger("napari_samtune").setLevel(logging.ERROR)
    model = load_model("samtune_small", device="cpu")
    trained = sum(p.numel() for p in model.sam.mask_decoder.parameters())
    unit = "CPU seconds of this process" if args.clock == "cpu" else "wall seconds"
    print(f"model: {model.name} {model.metadata}")
    print(
        f"sizes: bundled model {n_parameters(model.sam) / 1e6:.2f} M parameters, {trained / 1e6:.2f} M trained (mask "
        f"decoder; BLO adds its prompt tokens); U-Net {n_parameters(SmallUNet(1, 2)) / 1e6:.2f} M, all trained"
    )
    print(
        f"budgets ({unit}) per fine-tune, set-up included, product default settings: interactive "
        f"{args.budgets['interactive']:g} (nuclei k = {CURVE_K}: {args.curve_budget:g}), BLO and single-level "
        f"{args.budgets['blo']:g}; the U-Net gets what its fine-tune used; k = {args.k}; "
        f"threads {args.threads}; sstem crop {args.crop or 'none'}"
    )
    print(HEADER)
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory(prefix="samtune_adapt_") as cache:
        results = [evaluate_set(s, model, args, Path(cache), lambda m: print(m, flush=True)) for s in sets]
    lines = report(results, args, print)
    wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
    print(
        f"\ntotal {wall:.0f} s wall, {cpu:.0f} CPU-s ({cpu / wall:.2f} CPU-s per wall second; "
        f"encoding {sum(s['encode_s'] for s in results):.0f} {'CPU-s' if args.clock == 'cpu' else 's'})"
    )
    for line in lines:
        print(line)
    if args.json:
        summary = {"model": model.metadata, "args": vars(args), "wall_s": wall, "cpu_s": cpu}
        args.json.write_text(json.dumps({**summary, "sets": results, "targets": lines}, indent=2, default=str))


if __name__ == "__main__":
    main()
