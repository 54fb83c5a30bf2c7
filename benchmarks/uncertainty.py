"""How well each uncertainty source points at the model's wrong pixels, and how calibrated its probabilities are.

Per object of a held-out split: one click at the object's interior point; each source gives a map U in [0, 1]. Over
the pixels of the object's box enlarged by half its size on each side (so easy far background does not dominate):
AUROC of U for "the predicted mask is wrong here", and the expected calibration error (10 bins) of the probability.
The refinement head is trained on the training split of the same set (never on test objects).

    python benchmarks/uncertainty.py                 # 12 training images for the head, 15 test images per set
    python benchmarks/uncertainty.py --quick         # 4 and 5 images, 4 objects each, a shorter head training
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scipy import ndimage

from _common import add_common_arguments, click_row_col, data_folder, set_threads, target
from napari_samtune.core.datasets import load_pairs, split_pairs
from napari_samtune.core.models.registry import load_model
from napari_samtune.core.predictor import ObjectPrompt
from napari_samtune.core.segmenter import Segmenter
from napari_samtune.core.uncertainty import SOURCES, prompted_uncertainty, train_refinement


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve via the Mann–Whitney statistic (ties averaged); NaN if one class is absent."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def ece(prob: np.ndarray, truth: np.ndarray, bins: int = 10) -> float:
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(prob, edges) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            total += sel.mean() * abs(prob[sel].mean() - truth[sel].mean())
    return float(total)


def objects(labels: np.ndarray, instances: bool, min_area: int, limit: int) -> list[np.ndarray]:
    if not instances:
        labels, _ = ndimage.label(labels > 0)
    ids, areas = np.unique(labels[labels > 0], return_counts=True)
    return [labels == i for i, a in zip(ids, areas) if a >= min_area][:limit]


def region(mask: np.ndarray) -> tuple[slice, slice]:
    rows, cols = np.nonzero(mask)
    h, w = mask.shape
    dr, dc = (rows.max() - rows.min()) // 2 + 4, (cols.max() - cols.min()) // 2 + 4
    return slice(max(0, rows.min() - dr), min(h, rows.max() + dr + 1)), slice(
        max(0, cols.min() - dc), min(w, cols.max() + dc + 1)
    )


def refinement_examples(segmenter: Segmenter, pairs, instances, min_area, per_image) -> list:
    examples = []
    for pair in pairs:
        segmenter.set_image(pair.image)
        image = segmenter.store.volume.plane(0)
        for m in objects(pair.labels, instances, min_area, per_image):
            pred = segmenter.segment([ObjectPrompt(points=click_row_col(m))], return_logits=True)
            examples.append((image, pred.logits[0], m))
    return examples


def evaluate(segmenter, pairs, instances, min_area, per_image, refiner, sources) -> dict[str, dict[str, float]]:
    collected = {s: ([], []) for s in sources}
    probs, truths = [], []
    for pair in pairs:
        segmenter.set_image(pair.image)
        for m in objects(pair.labels, instances, min_area, per_image):
            prompt = ObjectPrompt(points=click_row_col(m))
            box = region(m)
            for source in sources:
                result = prompted_uncertainty(
                    segmenter.predictor, segmenter.store, prompt, source=source, refiner=refiner
                )
                wrong = (result.probability > 0.5) != m
                collected[source][0].append(result.uncertainty[box].ravel())
                collected[source][1].append(wrong[box].ravel())
            probs.append(result.probability[box].ravel())
            truths.append(m[box].ravel())
    out = {}
    for source, (u, w) in collected.items():
        out[source] = {"auroc": auroc(np.concatenate(u), np.concatenate(w))}
    out["_calibration"] = {
        "ece": ece(np.concatenate(probs), np.concatenate(truths).astype(float)),
        "objects": len(probs),
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-image", type=int, default=None, help="objects per image at most (default 6, quick 4)")
    parser.add_argument("--quick", action="store_true", help="fewer images and objects (about 3 minutes)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    add_common_arguments(parser)
    args = parser.parse_args()
    set_threads(args.threads)
    n_train, n_test, head_steps = (4, 5, 100) if args.quick else (12, 15, 200)
    per_image = args.per_image or (4 if args.quick else 6)
    model = load_model("samtune_small", device="cpu")
    # A throw-away disk cache: the test-time augmentation views of an image are then encoded once, not per object.
    cache = tempfile.TemporaryDirectory()
    segmenter = Segmenter(model, cache_root=cache.name)
    sets = {"nuclei": ("dsb2018_fluo_nuclei", True, 20), "polyps": ("kvasir_seg_polyps_256", False, 100)}
    print(f"model: {model.name} {model.metadata}")
    print(f"head trained on {n_train} images ({head_steps} steps); {n_test} test images, {per_image} objects each")
    best, results, t0 = {}, {}, time.perf_counter()
    print(f"{'set':<8} {'objects':>7} " + " ".join(f"{s:>11}" for s in SOURCES) + f" {'ECE':>7}")
    for name, (folder, instances, min_area) in sets.items():
        train, test = split_pairs(load_pairs(data_folder(folder), limit=args.limit), test_fraction=0.3, seed=0)
        examples = refinement_examples(segmenter, train[:n_train], instances, min_area, per_image)
        refiner = train_refinement(examples, steps=head_steps)
        scores = evaluate(segmenter, test[:n_test], instances, min_area, per_image, refiner, SOURCES)
        row = " ".join(f"{scores[s]['auroc']:>11.3f}" for s in SOURCES)
        print(f"{name:<8} {scores['_calibration']['objects']:>7} {row} {scores['_calibration']['ece']:>7.3f}")
        best[name] = max((scores[s]["auroc"], s) for s in SOURCES)
        results[name] = {"auroc": {s: scores[s]["auroc"] for s in SOURCES}, **scores["_calibration"]}
    print(f"ran in {(time.perf_counter() - t0) / 60:.1f} min ({time.process_time() / 60:.1f} CPU min)")
    if args.json:
        args.json.write_text(json.dumps({"model": model.name, "metadata": model.metadata, **results}, indent=2))
    for name, (value, source) in best.items():
        print(f"best source on {name}: {source}")
        print(target(f"{name}_best_uncertainty_auroc", value, ">=", 0.80))


if __name__ == "__main__":
    main()
