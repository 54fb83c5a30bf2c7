"""Quality of the bundled small model: one click / exact box per object, against trivial baselines in the same run.

Sets: dsb2018_fluo_nuclei (all images, every nucleus; images larger than the model input are tiled exactly as the
predictor does for a user), kvasir_seg_polyps_256 (each polyp), and a held-out synthetic set (never in pretraining).
Baselines on exactly the same inputs: click → connected component of a global Otsu threshold (the side of the
threshold the click falls on); box → the inscribed ellipse.

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
from skimage.filters import threshold_otsu

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_common_arguments, click_row_col, data_folder, exact_box, iou, set_threads, target
from napari_samtune.core.datasets import load_pairs
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


def evaluate_set(segmenter: Segmenter, pairs, instances: bool, min_area: int) -> dict[str, list[float]]:
    scores = {"click": [], "box": [], "otsu": [], "ellipse": []}
    for image, labels in pairs:
        masks = objects_of(labels, instances, min_area)
        if not masks:
            continue
        segmenter.set_image(image)
        clicks = [click_row_col(m) for m in masks]
        boxes = [exact_box(m) for m in masks]
        by_click = segmenter.segment([ObjectPrompt(points=c) for c in clicks]).masks
        by_box = segmenter.segment([ObjectPrompt(box=b) for b in boxes]).masks
        for m, c, b, pc, pb in zip(masks, clicks, boxes, by_click, by_box):
            scores["click"].append(iou(pc, m))
            scores["box"].append(iou(pb, m))
            scores["otsu"].append(iou(otsu_component(image, c), m))
            scores["ellipse"].append(iou(inscribed_ellipse(m.shape, b), m))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=None, help="a pretraining checkpoint instead of the bundle")
    parser.add_argument("--quick", action="store_true", help="20 nuclei images, 30 polyps, 20 synthetic scenes")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    add_common_arguments(parser)
    args = parser.parse_args()
    set_threads(args.threads)
    if args.checkpoint is not None:
        from napari_samtune.pretraining.recipe import load_checkpoint_model

        model = load_checkpoint_model(args.checkpoint)
    else:
        model = load_model("samtune_small", device="cpu")
    limit = (20, 30, 20) if args.quick else (args.limit, args.limit, args.limit or 60)
    segmenter = Segmenter(model, cache_root=False)
    t0 = time.perf_counter()
    nuclei = load_pairs(data_folder("dsb2018_fluo_nuclei"), limit=limit[0])
    polyps = load_pairs(data_folder("kvasir_seg_polyps_256"), limit=limit[1])
    sets = {
        "nuclei": ([(p.image, p.labels) for p in nuclei], True, 5),
        "polyps": ([(p.image, p.labels) for p in polyps], False, 100),
        "synthetic": ([(s.image, s.labels) for s in make_scenes(limit[2], seed=777_777)], True, 20),
    }
    results = {}
    print(f"model: {model.name} ({model.metadata})")
    print(f"{'set':<10} {'objects':>8} {'click':>7} {'otsu':>7} {'box':>7} {'ellipse':>8}")
    for name, (pairs, instances, min_area) in sets.items():
        s = evaluate_set(segmenter, pairs, instances, min_area)
        means = {k: float(np.mean(v)) for k, v in s.items()}
        results[name] = {"objects": len(s["click"]), **means}
        print(
            f"{name:<10} {len(s['click']):>8} {means['click']:>7.3f} {means['otsu']:>7.3f} {means['box']:>7.3f} "
            f"{means['ellipse']:>8.3f}"
        )
    print(f"evaluated in {time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"model": model.name, "metadata": model.metadata, **results}, indent=2))
    n, p = results["nuclei"], results["polyps"]
    print(target("nuclei_click_miou", n["click"], ">=", 0.70))
    print(target("nuclei_click_minus_otsu", n["click"] - n["otsu"], ">", 0.0))
    print(target("polyp_click_miou", p["click"], ">=", 0.40))
    print(target("polyp_click_minus_otsu", p["click"] - p["otsu"], ">", 0.0))
    print(target("nuclei_box_minus_ellipse", n["box"] - n["ellipse"], ">", 0.0))
    print(target("polyp_box_miou", p["box"], ">=", 0.75))


if __name__ == "__main__":
    main()
