"""The main job, headless: segment a sample image by prompting, adapt the model to it, and report the gain.

    python -m napari_samtune.demo --output demo_output

Writes the masks, overlays (PNG) and a short report with the measured IoU into the output folder.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from .core.metrics import match_instances
from .core.models.registry import ModelError, load_model
from .core.predictor import ObjectPrompt
from .core.segmenter import Segmenter, masks_to_labels
from .core.synthetic import make_scenes
from .core.training.prompts import interior_point


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 image with each label id tinted in its own colour and outlined."""
    from skimage.color import label2rgb
    from skimage.segmentation import find_boundaries

    rgb = label2rgb(labels, image=image, alpha=alpha, bg_label=0, image_alpha=1.0)
    rgb[find_boundaries(labels, mode="outer")] = (1.0, 1.0, 0.0)
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def click_segmentation(segmenter: Segmenter, truth: np.ndarray) -> np.ndarray:
    """One click at the interior point of every true object → label image (what a user's clicks would give)."""
    prompts = []
    for obj in np.unique(truth[truth > 0]):
        x, y = interior_point(truth == obj)
        prompts.append(ObjectPrompt(points=np.array([[y, x]])))
    return masks_to_labels(segmenter.segment(prompts).masks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("demo_output"))
    parser.add_argument("--model", default="samtune_small")
    parser.add_argument("--seconds", type=float, default=60.0, help="fine-tuning time budget")
    args = parser.parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    import imageio.v3 as iio

    try:
        model = load_model(args.model)
    except ModelError as error:
        print(f"error: {error}")
        return 2
    scenes = make_scenes(6, seed=2024, kind="nuclei")
    test = scenes[-1]
    segmenter = Segmenter(model, cache_root=args.output / "cache")
    segmenter.set_image(test.image)
    t0 = time.perf_counter()
    list(segmenter.encode())
    encode_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    before = click_segmentation(segmenter, test.labels)
    click_s = time.perf_counter() - t0
    scores_before = match_instances(before, test.labels)

    from .core.training.data import prepare_training_data
    from .core.training.fine_tune import fine_tune
    from .core.training.loop import TrainConfig

    data = prepare_training_data([s.image for s in scenes[:-1]], [s.labels for s in scenes[:-1]])
    run = fine_tune(model, data, config=TrainConfig(steps=400, time_budget_s=args.seconds), cache_root=False)
    try:
        while True:
            event = next(run)
            if event.validation is not None:
                print(f"fine-tune step {event.step}: validation click mIoU {event.validation:.3f}", flush=True)
    except StopIteration as stop:
        result = stop.value
    tuned = Segmenter(result.model, cache_root=args.output / "cache")
    tuned.set_image(test.image)
    after = click_segmentation(tuned, test.labels)
    scores_after = match_instances(after, test.labels)

    iio.imwrite(args.output / "image.png", test.image)
    iio.imwrite(args.output / "overlay_zero_shot.png", overlay(test.image, before))
    iio.imwrite(args.output / "overlay_fine_tuned.png", overlay(test.image, after))
    iio.imwrite(args.output / "labels_fine_tuned.png", after.astype(np.uint16))
    report = {
        "model": model.name,
        "objects": int(len(np.unique(test.labels)) - 1),
        "encode_seconds": round(encode_s, 3),
        "click_to_masks_seconds": round(click_s, 3),
        "zero_shot_mean_iou": round(scores_before.mean_true_iou, 4),
        "fine_tuned_mean_iou": round(scores_after.mean_true_iou, 4),
        "fine_tune_steps": result.training.steps,
        "fine_tune_seconds": round(result.training.elapsed_s, 1),
    }
    (args.output / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
