"""Label part of an image, segment the rest: does adaptation learn what the objects look like, or where they were?

The plugin's headline workflow, measured on each set of ../shared/data: per image, the bundled model is fine-tuned on
the **left half** only (the crop a user would label, every object in it labeled) and scored on the **right half**,
which training never saw, beside the left half it was trained on and an Otsu baseline fitted on the left half.

- prompt-free (BLO prompt learning; nuclei, polyps, EM membranes, sstem 5 classes): foreground IoU pooled over the
  images (mean class IoU for sstem).
- one click per nucleus (interactive fine-tuning, nuclei): mIoU over the nuclei of each half; baseline: the clicked
  Otsu component.
- partial labels (nuclei): BLO on the whole image with 20 % of its nuclei labeled (``all_objects_labeled=False``:
  unpainted pixels are not taught as background) vs with all of them labeled; prompt-free instance F1 at IoU 0.5 on
  the nuclei left unlabeled in the 20 % run (connected components of the prediction; components lying mostly on a
  labeled nucleus are left out of both runs).

Budgets count CPU seconds of this process (one thread by default), as in ``adapt.py``.

    python benchmarks/generalize.py            # ~12 minutes on one thread
    python benchmarks/generalize.py --quick    # fewer images, shorter budgets (~5 minutes)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_common_arguments, data_folder, set_threads, target
from adapt import (
    SETS,
    SetSpec,
    _centre,
    class_map,
    click_baselines,
    click_images,
    click_miou,
    embed,
    otsu_fit,
    otsu_predict,
    pooled_miou,
    run_fine_tune,
)
from napari_samtune.core.automatic import segment_automatic
from napari_samtune.core.datasets import Pair, load_pairs
from napari_samtune.core.metrics import match_instances
from napari_samtune.core.models.registry import SamModel, load_model
from napari_samtune.core.training.blo import BLOSettings
from napari_samtune.core.training.data import prepare_training_data

IMAGES = {"nuclei": 4, "polyps": 4, "em_membranes": 2, "sstem_5class": 2}
QUICK_IMAGES = {"nuclei": 2, "polyps": 2, "em_membranes": 1, "sstem_5class": 1}
BUDGET = {"blo": 20.0, "interactive": 30.0}
QUICK_BUDGET = {"blo": 10.0, "interactive": 15.0}


def halves(pair: Pair) -> tuple[Pair, Pair]:
    w = pair.image.shape[1] // 2
    return (
        Pair(pair.name + " left", pair.image[:, :w], pair.labels[:, :w]),
        Pair(pair.name + " right", pair.image[:, w:], pair.labels[:, w:]),
    )


def pick_images(spec: SetSpec, n: int) -> list[Pair]:
    """The first ``n`` images (sorted by name) wide enough for two halves of at least 128 pixels."""
    pairs = [p for p in load_pairs(data_folder(spec.folder)) if p.image.shape[1] >= 256]
    if spec.crop:
        pairs = [Pair(p.name, _centre(p.image, 512), _centre(p.labels, 512)) for p in pairs]
    return pairs[:n]


def prompt_free(spec: SetSpec, model: SamModel, pairs: list[Pair], budget: float, cache: Path) -> dict[str, float]:
    """BLO on each image's left half; pooled IoU on the left and right halves, and Otsu's on the right half."""
    preds = {"left": [], "right": [], "otsu": []}
    truths = {"left": [], "right": []}
    for pair in pairs:
        left, right = halves(pair)
        classes = list(range(1, spec.n_classes))
        data = prepare_training_data(
            [left.image], [class_map(spec, left.labels)], classes=classes, all_objects_labeled=True
        )
        result, _, _ = run_fine_tune(model, data, "blo", BLOSettings(), budget, cache)
        for side, half in (("left", left), ("right", right)):
            preds[side].append(segment_automatic(result.model, embed(result.model, half.image, cache)).labels)
            truths[side].append(class_map(spec, half.labels))
        mapping = otsu_fit([left.image], [class_map(spec, left.labels)], spec.n_classes)
        preds["otsu"].append(otsu_predict(right.image, mapping))
    n = spec.n_classes
    return {
        "left": pooled_miou(preds["left"], truths["left"], n),
        "right": pooled_miou(preds["right"], truths["right"], n),
        "otsu_right": pooled_miou(preds["otsu"], truths["right"], n),
    }


def one_click(model: SamModel, pairs: list[Pair], budget: float, cache: Path) -> dict[str, float]:
    """Interactive fine-tuning on each nuclei image's left half; click mIoU on each half, Otsu on the right."""
    scores = {"left": [], "right": [], "otsu_right": []}
    for pair in pairs:
        left, right = halves(pair)
        data = prepare_training_data([left.image], [left.labels], task="instances", all_objects_labeled=True)
        result, _, _ = run_fine_tune(model, data, "interactive", None, budget, cache)
        tests = {"left": click_images([left]), "right": click_images([right])}
        for side, clicks in tests.items():
            scores[side].append(click_miou(result.model, clicks, cache))
        scores["otsu_right"].append(click_baselines(tests["right"])["otsu"])
    return {k: float(np.mean(v)) for k, v in scores.items()}


def partial_labels(model: SamModel, pairs: list[Pair], budget: float, cache: Path, seed: int = 0) -> dict[str, float]:
    """Instance F1 on the unlabeled nuclei after BLO with 20 % of the nuclei labeled vs all of them."""
    counts = {"partial": np.zeros(3), "all": np.zeros(3)}
    rng = np.random.default_rng(seed)
    for pair in pairs:
        ids = np.unique(pair.labels[pair.labels > 0])
        labeled = rng.choice(ids, size=max(1, round(0.2 * len(ids))), replace=False)
        painted = np.isin(pair.labels, labeled)
        unlabeled_truth = np.where(painted, 0, pair.labels)
        runs = {
            "partial": (np.where(painted, 1, 0), False),
            "all": ((pair.labels > 0).astype(np.int64), True),
        }
        for name, (labels, complete) in runs.items():
            data = prepare_training_data([pair.image], [labels], classes=[1], all_objects_labeled=complete)
            result, _, _ = run_fine_tune(model, data, "blo", BLOSettings(), budget, cache)
            foreground = segment_automatic(result.model, embed(result.model, pair.image, cache)).labels > 0
            components, _ = ndimage.label(foreground)
            on_labeled = ndimage.mean(painted, components, index=np.arange(1, components.max() + 1)) > 0.5
            components[np.isin(components, np.flatnonzero(on_labeled) + 1)] = 0
            m = match_instances(components, unlabeled_truth)
            counts[name] += (m.n_matched, m.n_pred, m.n_true)
    return {name: float(2 * c[0] / max(c[1] + c[2], 1)) for name, c in counts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer images, shorter budgets")
    add_common_arguments(parser)
    parser.set_defaults(threads=1)
    args = parser.parse_args()
    set_threads(args.threads)
    images, budget = (QUICK_IMAGES, QUICK_BUDGET) if args.quick else (IMAGES, BUDGET)
    model = load_model("samtune_small", device="cpu")
    print(f"model: {model.name} {model.metadata}; budgets (CPU-s) {budget}; images per set {images}")
    lines = []
    with tempfile.TemporaryDirectory() as folder:
        cache = Path(folder)
        free = {}
        for spec in SETS:
            pairs = pick_images(spec, images[spec.name])
            free[spec.name] = prompt_free(spec, model, pairs, budget["blo"], cache)
            r = free[spec.name]
            print(
                f"prompt-free {spec.name:<13} left {r['left']:.3f}  right {r['right']:.3f}  "
                f"right/left {r['right'] / max(r['left'], 1e-9):.2f}  Otsu right {r['otsu_right']:.3f}",
                flush=True,
            )
            lines.append(target(f"{spec.name}_right_over_left", r["right"] / max(r["left"], 1e-9), ">=", 0.9))
        nuclei = pick_images(SETS[0], images["nuclei"])
        click = one_click(model, nuclei, budget["interactive"], cache)
        print(
            f"one click nuclei     left {click['left']:.3f}  right {click['right']:.3f}  "
            f"Otsu right {click['otsu_right']:.3f}",
            flush=True,
        )
        partial = partial_labels(model, nuclei, budget["blo"], cache)
        print(
            f"partial labels (nuclei): F1 on unlabeled nuclei, 20 % labeled {partial['partial']:.3f}, "
            f"all labeled {partial['all']:.3f}"
        )
    for name in ("nuclei", "polyps"):
        lines.append(target(f"{name}_right_minus_otsu", free[name]["right"] - free[name]["otsu_right"], ">", 0.0))
    lines.append(target("nuclei_click_right_over_left", click["right"] / max(click["left"], 1e-9), ">=", 0.9))
    lines.append(target("nuclei_click_right_minus_otsu", click["right"] - click["otsu_right"], ">", 0.0))
    lines.append(target("partial_over_all_f1", partial["partial"] / max(partial["all"], 1e-9), ">=", 0.8))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
