"""Quality of the bundled small model: one click / exact box per object, against trivial baselines in the same run.

Sets: dsb2018_fluo_nuclei (all images, every nucleus; images larger than the model input are tiled exactly as the
predictor does for a user), kvasir_seg_polyps_256 (each polyp), isbi2012_em_membranes (each cell; EM is in no
pretraining source, so it is the out-of-domain set) and a held-out synthetic set (never in pretraining). The nuclei and
polyps come from the same sources as part of v2's pretraining corpus (other images): in-domain zero-shot.
Baselines on exactly the same inputs: click → connected component of a global Otsu threshold (the side of the
threshold the click falls on); box → the inscribed ellipse; "every object" (no prompt) → Otsu + distance-transform
watershed. ``click best`` is the best of the three multimask candidates: its gap to ``click`` (the candidate the IoU
head picks) measures how well the head ranks them.

    python benchmarks/bundled_quality.py                       # the shipped model
    python benchmarks/bundled_quality.py --checkpoint runs/pretrain/checkpoint.pt --quick   # a training checkpoint
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.draw import ellipse
from skimage.feature import peak_local_max
from skimage.filters import threshold_otsu
from skimage.segmentation import watershed

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_common_arguments, click_row_col, data_folder, exact_box, iou, set_threads, target
from napari_samtune.core.automatic import segment_without_prompts
from napari_samtune.core.datasets import load_pairs
from napari_samtune.core.jobs import drive
from napari_samtune.core.metrics import match_instances
from napari_samtune.core.models.registry import load_model
from napari_samtune.core.predictor import ObjectPrompt
from napari_samtune.core.segmenter import Segmenter
from napari_samtune.core.synthetic import make_scenes


def grey(image: np.ndarray) -> np.ndarray:
    return image.mean(-1) if image.ndim == 3 else image.astype(float)


def otsu_component(image: np.ndarray, click: np.ndarray) -> np.ndarray:
    g = grey(image)
    fg = g > threshold_otsu(g)
    r, c = int(click[0, 0]), int(click[0, 1])
    side = fg if fg[r, c] else ~fg
    comp, _ = ndimage.label(side)
    return comp == comp[r, c]


def inscribed_ellipse(shape: tuple[int, int], box: np.ndarray) -> np.ndarray:
    r0, c0, r1, c1 = box
    out = np.zeros(shape, bool)
    rr, cc = ellipse((r0 + r1) / 2, (c0 + c1) / 2, (r1 - r0 + 1) / 2, (c1 - c0 + 1) / 2, shape=shape)
    out[rr, cc] = True
    return out


def objects_of(labels: np.ndarray, instances: bool, min_area: int) -> list[np.ndarray]:
    if not instances:
        labels, _ = ndimage.label(labels > 0)
    ids, areas = np.unique(labels[labels > 0], return_counts=True)
    return [labels == i for i, a in zip(ids, areas) if a >= min_area]


def otsu_watershed(image: np.ndarray, min_distance: int = 4) -> np.ndarray:
    """Instance labels from a global Otsu threshold split by a watershed on its distance transform (the classic
    no-learning nuclei pipeline)."""
    g = grey(image)
    fg = g > threshold_otsu(g)
    distance = ndimage.distance_transform_edt(fg)
    peaks = peak_local_max(distance, min_distance=min_distance, labels=ndimage.label(fg)[0], exclude_border=False)
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-distance, markers, mask=fg)


def evaluate_set(segmenter: Segmenter, pairs, instances: bool, min_area: int) -> dict[str, list[float]]:
    scores = {"click": [], "click_best": [], "box": [], "otsu": [], "ellipse": []}
    for image, labels in pairs:
        masks = objects_of(labels, instances, min_area)
        if not masks:
            continue
        segmenter.set_image(image)
        clicks = [click_row_col(m) for m in masks]
        boxes = [exact_box(m) for m in masks]
        click_prompts = [ObjectPrompt(points=c) for c in clicks]
        by_click = segmenter.segment(click_prompts).masks
        candidates = [segmenter.segment(click_prompts, output=k).masks for k in (1, 2, 3)]
        by_box = segmenter.segment([ObjectPrompt(box=b) for b in boxes]).masks
        for i, (m, c, b, pc, pb) in enumerate(zip(masks, clicks, boxes, by_click, by_box)):
            scores["click"].append(iou(pc, m))
            scores["click_best"].append(max(iou(cand[i], m) for cand in candidates))
            scores["box"].append(iou(pb, m))
            scores["otsu"].append(iou(otsu_component(image, c), m))
            scores["ellipse"].append(iou(inscribed_ellipse(m.shape, b), m))
    return scores


def every_object_f1(segmenter: Segmenter, pairs) -> dict[str, float]:
    """Instance F1 at IoU 0.5 of the prompt-free "every object" mode and of Otsu + watershed, pooled over images."""
    counts = {"model": np.zeros(3), "otsu_watershed": np.zeros(3)}
    for image, labels in pairs:
        segmenter.set_image(image)
        predicted = drive(segment_without_prompts(segmenter))
        for name, pred in (("model", predicted), ("otsu_watershed", otsu_watershed(image))):
            m = match_instances(pred, labels)
            counts[name] += (m.n_matched, m.n_pred, m.n_true)
    return {name: float(2 * c[0] / max(c[1] + c[2], 1)) for name, c in counts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=None, help="a pretraining checkpoint instead of the bundle")
    parser.add_argument("--quick", action="store_true", help="20 nuclei images, 30 polyps, 20 synthetic scenes")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    add_common_arguments(parser)
    args = parser.parse_args()
    set_threads(args.threads)
    if args.checkpoint is not None:
        from napari_samtune.pretraining.evaluation import load_checkpoint_model

        model = load_checkpoint_model(args.checkpoint)
    else:
        model = load_model("samtune_small", device="cpu")
    limit = (20, 30, 20, 4) if args.quick else (args.limit, args.limit, args.limit or 60, args.limit or 10)
    segmenter = Segmenter(model, cache_root=False)
    t0 = time.perf_counter()
    nuclei = load_pairs(data_folder("dsb2018_fluo_nuclei"), limit=limit[0])
    polyps = load_pairs(data_folder("kvasir_seg_polyps_256"), limit=limit[1])
    membranes = load_pairs(data_folder("isbi2012_em_membranes"), limit=limit[3])
    sets = {
        "nuclei": ([(p.image, p.labels) for p in nuclei], True, 5),
        "polyps": ([(p.image, p.labels) for p in polyps], False, 100),
        "em_cells": ([(p.image, p.labels) for p in membranes], False, 100),
        "synthetic": ([(s.image, s.labels) for s in make_scenes(limit[2], seed=777_777)], True, 20),
    }
    results = {}
    print(f"model: {model.name} ({model.metadata})")
    print(f"{'set':<10} {'objects':>8} {'click':>7} {'best':>7} {'otsu':>7} {'box':>7} {'ellipse':>8}")
    for name, (pairs, instances, min_area) in sets.items():
        s = evaluate_set(segmenter, pairs, instances, min_area)
        means = {k: float(np.mean(v)) for k, v in s.items()}
        results[name] = {"objects": len(s["click"]), **means}
        print(
            f"{name:<10} {len(s['click']):>8} {means['click']:>7.3f} {means['click_best']:>7.3f} "
            f"{means['otsu']:>7.3f} {means['box']:>7.3f} {means['ellipse']:>8.3f}"
        )
    f1_images = nuclei[: 8 if args.quick else 20]
    f1 = every_object_f1(segmenter, [(p.image, p.labels) for p in f1_images])
    results["nuclei_every_object_f1"] = f1
    print(
        f"every object (no prompt), nuclei, {len(f1_images)} images: instance F1@0.5 model {f1['model']:.3f}, "
        f"Otsu + watershed {f1['otsu_watershed']:.3f}"
    )
    print(f"evaluated in {time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"model": model.name, "metadata": model.metadata, **results}, indent=2))
    n, p = results["nuclei"], results["polyps"]
    print(target("nuclei_click_miou", n["click"], ">=", 0.75))
    print(target("nuclei_click_head_gap", n["click_best"] - n["click"], "<=", 0.05))
    print(target("nuclei_box_minus_ellipse", n["box"] - n["ellipse"], ">", 0.0))
    print(target("polyp_click_miou", p["click"], ">=", 0.60))
    print(target("polyp_box_miou", p["box"], ">=", 0.85))
    print(target("nuclei_every_object_f1", f1["model"], ">=", 0.70))
    print(target("nuclei_every_object_f1_minus_otsu_watershed", f1["model"] - f1["otsu_watershed"], ">", 0.0))


if __name__ == "__main__":
    main()
