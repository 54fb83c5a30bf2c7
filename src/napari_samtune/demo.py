"""The main job as a scripted napari session (``napari_samtune.api``), headless under a virtual display.

    xvfb-run -a python -m napari_samtune.demo --output demo_output      # `make demo` does this

On the 'nuclei' sample: encode it, prompt a few nuclei with one click each and commit them, segment the whole image
without prompts, fine-tune on the labels of the left half for about a minute, segment without prompts again, and show
where the adapted model is unsure. The right half is never trained on: the IoU measured there says how well the
adaptation carries over to nuclei the model has not seen. Writes viewer screenshots (PNG), ``report.json`` and
``report.md`` into the output folder.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from .core.mask_geometry import interior_point
from .core.metrics import iou, match_instances
from .core.models.registry import ModelError

SAMPLE = "nuclei"
SPLIT = 128  # columns [0, SPLIT) are trained on, [SPLIT, end) only evaluated
WINDOW = (1400, 860)


def clicks_on_objects(truth: np.ndarray, count: int) -> tuple[list[int], np.ndarray]:
    """The ``count`` largest objects of ``truth`` and one click on each at its interior point: ``(count, 2)`` (row,
    col)."""
    ids, areas = np.unique(truth[truth > 0], return_counts=True)
    chosen = [int(i) for i in ids[np.argsort(-areas)][:count]]
    points = [interior_point(truth == i)[::-1] for i in chosen]
    return chosen, np.array(points, float)


def foreground_iou(labels: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """IoU of objects vs background on the unseen right half and on the trained left half."""
    return {
        "unseen_right_half": round(iou(labels[:, SPLIT:] > 0, truth[:, SPLIT:] > 0), 4),
        "trained_left_half": round(iou(labels[:, :SPLIT] > 0, truth[:, :SPLIT] > 0), 4),
    }


def caption(viewer, text: str) -> None:
    overlay = viewer.canvas.overlays["text"]
    overlay.visible, overlay.text = bool(text), text
    overlay.font_size, overlay.color, overlay.position = 13, "white", "top_left"


def show_only(viewer, names: list[str]) -> None:
    for layer in viewer.layers:
        layer.visible = layer.name in names


def run_demo(output: Path, model_name: str, method: str, seconds: float) -> dict:
    """The session; returns the report (also written to ``output``)."""
    import imageio.v3 as iio
    from qtpy.QtWidgets import QApplication, QWidget

    import napari

    from .api import SamSession
    from .services.uncertainty import PROMPT_FREE, UNCERTAINTY

    started = time.perf_counter()
    output.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(title="napari-samtune demo")
    viewer.window.resize(*WINDOW)
    _, prompt_widget = viewer.window.add_plugin_dock_widget("napari-samtune", "Segment with prompts")
    prompt_widget.live_preview.value = False  # the session segments; the widget only shows its model and state
    viewer.window.add_plugin_dock_widget("napari-samtune", "Uncertainty")
    session = SamSession(viewer, model_name, cache_root=False)
    image = session.open_sample(SAMPLE)
    truth = np.asarray(session.labels.data)
    session.labels.contour, session.labels.visible = 1, False
    viewer.add_shapes(
        [[[0, SPLIT], [truth.shape[0] - 1, SPLIT]]],
        shape_type="line",
        edge_color="yellow",
        edge_width=1.5,
        name="trained ← | → unseen",
    )
    screenshots: dict[str, str] = {}

    def screenshot(name: str, canvas_only: bool = True) -> np.ndarray:
        viewer.reset_view()
        QApplication.processEvents()  # lay out the docked widgets and draw the canvas before grabbing them
        for popup in viewer.window._qt_window.findChildren(QWidget):  # napari's notices (e.g. on PyQt5) pop up
            if type(popup).__name__ == "NapariQtNotification":
                popup.close()
        picture = viewer.screenshot(str(output / name), canvas_only=canvas_only)
        screenshots[name] = str(output / name)
        return picture

    t0 = time.perf_counter()
    session.encode()
    encode_s = time.perf_counter() - t0
    print(f"encoded '{SAMPLE}' in {encode_s:.2f} s", flush=True)

    ids, points = clicks_on_objects(truth, 4)
    t0 = time.perf_counter()
    masks = session.prompt(points=points)
    click_s = time.perf_counter() - t0
    click_ious = [round(iou(mask, truth == i), 4) for mask, i in zip(masks, ids)]
    print(f"4 clicks → 4 masks in {click_s:.2f} s, IoU {click_ious}", flush=True)
    show_only(viewer, [SAMPLE, "prompts", "preview", "trained ← | → unseen"])
    caption(viewer, f"one click per nucleus, zero-shot: mean IoU {np.mean(click_ious):.2f}")
    screenshot("1_prompting.png")
    session.commit()

    t0 = time.perf_counter()
    before = np.asarray(session.segment_automatic(name="prompt-free before").data)
    before_s = time.perf_counter() - t0
    print(f"prompt-free before adaptation: {int(before.max())} objects in {before_s:.1f} s", flush=True)

    left = viewer.add_image(image.data[:, :SPLIT], name=f"{SAMPLE} left half", rgb=image.rgb, visible=False)
    left_labels = viewer.add_labels(truth[:, :SPLIT], name=f"{SAMPLE} left half labels", visible=False)

    def progress(event) -> None:
        if event.validation is not None:
            print(f"fine-tuning step {event.step}/{event.total}: validation {event.validation:.3f}", flush=True)

    result = session.fine_tune(
        method=method,
        seconds=seconds,
        steps=10_000,
        image=left,
        labels=left_labels,
        all_objects_labeled=True,  # every nucleus of the left half is labeled
        on_event=progress,
    )
    training = result.training
    viewer.layers.remove(left)
    viewer.layers.remove(left_labels)
    print(f"fine-tuned ({method}): {training.steps} steps in {training.elapsed_s:.0f} s", flush=True)

    t0 = time.perf_counter()
    after = np.asarray(session.segment_automatic(name="prompt-free after").data)
    after_s = time.perf_counter() - t0
    scores = {"before": foreground_iou(before, truth), "after": foreground_iou(after, truth)}
    print(f"prompt-free foreground IoU before {scores['before']}, after {scores['after']}", flush=True)

    for name in ("before", "after"):
        layer = viewer.layers[f"prompt-free {name}"]
        layer.opacity = 0.55
        show_only(viewer, [SAMPLE, layer.name, "trained ← | → unseen"])
        caption(
            viewer,
            f"{name} adaptation: IoU {scores[name]['unseen_right_half']:.2f}, unseen right half",
        )
        screenshot(f"2_prompt_free_{name}.png")
    pair = [iio.imread(output / f"2_prompt_free_{name}.png") for name in ("before", "after")]
    gap = np.full((pair[0].shape[0], 8, pair[0].shape[2]), 255, np.uint8)
    iio.imwrite(output / "2_before_after.png", np.concatenate([pair[0], gap, pair[1]], axis=1))
    screenshots["2_before_after.png"] = str(output / "2_before_after.png")

    if session.model.prompt_embeddings is None:  # a method without learned prompts: the clicked objects' map
        session.prompt(points=points)
    uncertainty = session.show_uncertainty(
        source=PROMPT_FREE if session.model.prompt_embeddings is not None else "prompt"
    )
    values = np.asarray(uncertainty.data)
    wrong = (after > 0) != (truth > 0)
    region = session.next_uncertain_region()
    show_only(viewer, [SAMPLE, UNCERTAINTY, "nuclei labels"])
    caption(viewer, "uncertainty after adaptation (bright: unsure)")
    screenshot("3_uncertainty.png")

    show_only(viewer, [SAMPLE, "prompt-free after", "segmentation", "trained ← | → unseen"])
    caption(viewer, "")
    viewer.layers.selection.active = viewer.layers["prompt-free after"]
    screenshot("4_napari_window.png", canvas_only=False)

    adapter = session.save_adapter(output / f"{SAMPLE}_{method}.samtune")
    session.save_labels(output / "prompt_free_after.tif", "prompt-free after")
    report = {
        "sample": SAMPLE,
        "model": session.base_model.name,
        "model_sha256": session.base_model.weights_sha256[:12],
        "encode_seconds": round(encode_s, 3),
        "clicked_objects": len(ids),
        "click_iou_zero_shot": click_ious,
        "click_seconds": round(click_s, 3),
        "fine_tune": {
            "method": method,
            "trained_on": f"columns 0-{SPLIT - 1} of '{SAMPLE}' and their labels",
            "steps": training.steps,
            "seconds": round(training.elapsed_s, 1),
            "stopped": training.stopped,
            "validation_first": round(training.history[0]["validation"], 4),
            "validation_best": round(training.best_validation, 4),
        },
        "prompt_free_foreground_iou": scores,
        "prompt_free_seconds": {"before": round(before_s, 2), "after": round(after_s, 2)},
        "instances_unseen_half": {
            "before": _instances(before[:, SPLIT:], truth[:, SPLIT:]),
            "after": _instances(after[:, SPLIT:], truth[:, SPLIT:]),
        },
        "uncertainty_mean": {
            "on_wrong_pixels": round(float(values[wrong].mean()), 4) if wrong.any() else None,
            "on_right_pixels": round(float(values[~wrong].mean()), 4),
        },
        "most_uncertain_region": list(region) if region is not None else None,
        "adapter": str(adapter),
        "screenshots": screenshots,
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    (output / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (output / "report.md").write_text(markdown(report))
    viewer.close()
    return report


def _instances(labels: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Objects found and instance scores; class labels (one value for all nuclei) count as their connected parts."""
    from skimage.measure import label

    scores = match_instances(label(labels > 0) if labels.max() <= 1 else labels, truth)
    return {
        "objects_found": scores.n_pred,
        "true_objects": scores.n_true,
        "f1_at_iou_0.5": round(scores.f1, 4),
        "mean_true_iou": round(scores.mean_true_iou, 4),
    }


def markdown(report: dict) -> str:
    """The report as a short Markdown page."""
    tune, iou_ = report["fine_tune"], report["prompt_free_foreground_iou"]
    lines = [
        f"# napari-samtune demo: '{report['sample']}' with {report['model']} ({report['model_sha256']})",
        "",
        f"- encoding: {report['encode_seconds']} s; {report['clicked_objects']} clicks → masks in "
        f"{report['click_seconds']} s, zero-shot IoU {report['click_iou_zero_shot']}",
        f"- fine-tuning ({tune['method']}) on {tune['trained_on']}: {tune['steps']} steps in {tune['seconds']} s "
        f"({tune['stopped']}), validation {tune['validation_first']} → {tune['validation_best']}",
        "",
        "| prompt-free segmentation | IoU, unseen right half | IoU, trained left half | objects found / true, "
        "F1 (unseen half) |",
        "|---|---|---|---|",
    ]
    for when in ("before", "after"):
        scores, objects = iou_[when], report["instances_unseen_half"][when]
        found = f"{objects['objects_found']} / {objects['true_objects']}, {objects['f1_at_iou_0.5']}"
        lines.append(f"| {when} adaptation | {scores['unseen_right_half']} | {scores['trained_left_half']} | {found} |")
    uncertainty = report["uncertainty_mean"]
    lines += [
        "",
        "IoU: nuclei vs background. Before adaptation the model has no learned prompts and segments every object it "
        "finds from a grid of clicks; after BLO prompt learning it labels the class it learned (touching nuclei then "
        "count as one object for F1).",
        f"Uncertainty of the adapted model: mean {uncertainty['on_wrong_pixels']} on wrongly segmented pixels, "
        f"{uncertainty['on_right_pixels']} on the others.",
        "",
        *[f"![{name}]({Path(path).name})" for name, path in report["screenshots"].items()],
        "",
        f"Total: {report['total_seconds']} s.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("demo_output"))
    parser.add_argument("--model", default="samtune_small")
    parser.add_argument("--method", default="blo", help="fine-tuning method (blo learns prompts: prompt-free)")
    parser.add_argument("--seconds", type=float, default=60.0, help="fine-tuning time budget")
    args = parser.parse_args(argv)
    try:
        report = run_demo(args.output, args.model, args.method, args.seconds)
    except ModelError as error:
        print(f"error: {error}")
        return 2
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
