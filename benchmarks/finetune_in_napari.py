"""Fine-tuning speed inside napari (the widget's worker thread) against the same ``fine_tune`` in a plain loop, and
how responsive the event loop stays meanwhile.

micro-sam turned napari thread workers off after seeing "massive slowdowns" (micro-sam issue #740). This measures
whether our widget pays for its worker thread. One process, one model (``SMALL_ARCHITECTURE``, the bundled model's
shape, random weights: speed does not depend on them), the 'nuclei' sample and its labels; embeddings are cached by a
warm-up run, so every run trains the same steps from the same cache. Modes alternate, repeat after repeat:

- ``script``: ``services.training.fine_tune_job`` iterated on the main thread, no event loop (what a script does);
- ``worker``: 'Fine-tune on current layers' clicked in a shown viewer, training in its worker thread with the
  progress bar and the live plot, while a 10 ms QTimer counts event-loop turns;
- ``worker_gif``: the same with napari's animated 'in progress' indicator left running (``workers.run_job`` freezes
  it: this mode measures what that saves);
- ``blocking``: the same click with ``SAMTUNE_SYNC_WORKERS=1`` (training on the main thread), for contrast.

Training speed is steps / ``TrainResult.elapsed_s`` (initial and final validation included, the same in every mode),
reported as a ratio to the script's. Responsiveness: timer ticks per second while training, as a ratio to the ticks
per second of the same viewer idling (measured first, in the same run), and the longest gap between two ticks.

Run (needs a display; Xvfb is enough): ``xvfb-run -a python benchmarks/finetune_in_napari.py [--quick] [--steps 10]
[--repeats 2] [--threads 1] [--method interactive|wesam]``. 'interactive' trains the mask decoder on cached embeddings
(many small Python-driven ops: the worst case for sharing the interpreter with the GUI); 'wesam' trains LoRA layers
of the image encoder (few large ops).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time

import numpy as np
import torch

from _common import target
from napari_samtune.core.models import SamModel, build_sam
from napari_samtune.core.models.architecture import SMALL_ARCHITECTURE
from napari_samtune.core.training.loop import TrainConfig


def small_model() -> SamModel:
    torch.manual_seed(0)
    return SamModel(build_sam(SMALL_ARCHITECTURE), "small", SMALL_ARCHITECTURE, "bench", torch.device("cpu"))


def script_run(model: SamModel, image: np.ndarray, labels: np.ndarray, method: str, config: TrainConfig) -> dict:
    from napari_samtune.core.jobs import drive
    from napari_samtune.services.training import TrainingInputs, fine_tune_job

    inputs = TrainingInputs([image], [labels], ["nuclei"], True, [], {})
    job = fine_tune_job(lambda: model, inputs, method, config, "cpu", should_stop=lambda: False)
    start = time.perf_counter()
    training = drive(job)[1].training
    return {"steps_per_s": training.steps / training.elapsed_s, "wall_s": time.perf_counter() - start}


def set_activity_animation(running: bool) -> None:
    """Restart (or freeze) napari's 'in progress' GIF: the lookup of ``workers.freeze_activity_animation``."""
    from qtpy.QtWidgets import QApplication

    for window in QApplication.topLevelWidgets():
        dialog = getattr(window, "_activity_dialog", None)
        if dialog is not None:
            dialog._toggleButton._inProgressIndicator.movie().setPaused(not running)


def idle_ticks_per_s(seconds: float = 3.0, settle: float = 2.0) -> float:
    """Timer ticks per second of the event loop with nothing else to do (after ``settle`` seconds for the first
    draws of a new viewer): the responsiveness baseline."""
    from qtpy.QtCore import QEventLoop, QTimer

    settling = QEventLoop()
    QTimer.singleShot(int(1000 * settle), settling.quit)
    settling.exec_()
    ticks: list[float] = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    loop = QEventLoop()
    QTimer.singleShot(int(1000 * seconds), loop.quit)
    start = time.perf_counter()
    timer.start(10)
    loop.exec_()
    timer.stop()
    return len(ticks) / (time.perf_counter() - start)


def widget_run(viewer, widget, threaded: bool, animation: bool = False) -> dict:
    """Click 'Fine-tune' and run the event loop until it is done, counting 10 ms timer ticks."""
    from qtpy.QtCore import QEventLoop, QTimer

    os.environ["SAMTUNE_SYNC_WORKERS"] = "0" if threaded else "1"
    ticks: list[float] = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    loop = QEventLoop()
    poll = QTimer()
    poll.timeout.connect(lambda: loop.quit() if widget.fine_tune.text == "Fine-tune" else None)
    timer.start(10)
    start = time.perf_counter()
    widget.fine_tune.native.click()
    set_activity_animation(animation)
    poll.start(20)
    loop.exec_()
    wall = time.perf_counter() - start
    timer.stop()
    poll.stop()
    training = widget.result.training
    gaps = np.diff([start, *ticks, time.perf_counter()])
    return {
        "steps_per_s": training.steps / training.elapsed_s,
        "wall_s": wall,
        "ticks_per_s": len(ticks) / wall,
        "max_gap_ms": 1000 * float(gaps.max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--method", choices=("interactive", "wesam"), default="interactive")
    parser.add_argument("--quick", action="store_true", help="5 steps, 1 repeat: checks that it runs, noisy figures")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.repeats = 5, 1
    torch.set_num_threads(args.threads)
    os.environ["SAMTUNE_CACHE_DIR"] = tempfile.mkdtemp(prefix="samtune-bench-")
    os.environ["SAMTUNE_DEVICE"] = "cpu"

    import napari
    from napari_samtune._sample_data import nuclei

    (image, _, _), (labels, _, _) = nuclei()
    model = small_model()
    config = TrainConfig(steps=args.steps, time_budget_s=3600)
    script_run(model, image, labels, args.method, TrainConfig(steps=1))  # warm-up: caches the embeddings
    worker_threads: list[int] = []
    reader = threading.Thread(target=lambda: worker_threads.append(torch.get_num_threads()))
    reader.start()
    reader.join()

    viewer = napari.Viewer()
    viewer.open_sample("napari-samtune", "nuclei")
    _, widget = viewer.window.add_plugin_dock_widget("napari-samtune", "Fine-tune on current layers")
    widget.set_model(model)
    widget.steps.value, widget.seconds.value, widget.method.value = args.steps, 3600, args.method
    idle = idle_ticks_per_s()
    results: dict[str, list[dict]] = {"script": [], "worker": [], "worker_gif": [], "blocking": []}
    for _ in range(args.repeats):
        results["script"].append(script_run(model, image, labels, args.method, config))
        results["worker"].append(widget_run(viewer, widget, threaded=True))
        results["worker_gif"].append(widget_run(viewer, widget, threaded=True, animation=True))
        results["blocking"].append(widget_run(viewer, widget, threaded=False))

    print(f"{args.method}, {args.steps} steps, torch threads: main {torch.get_num_threads()}, other {worker_threads}")
    for mode, runs in results.items():
        line = [f"{mode:9s}"]
        for key in ("steps_per_s", "wall_s", "ticks_per_s", "max_gap_ms"):
            if key in runs[0]:
                values = [r[key] for r in runs]
                line.append(f"{key} median {statistics.median(values):.3g} ({', '.join(f'{v:.3g}' for v in values)})")
        print("  ".join(line))
    script = statistics.median(r["steps_per_s"] for r in results["script"])
    ratios = {}
    for mode in ("worker", "worker_gif", "blocking"):
        speed = statistics.median(r["steps_per_s"] for r in results[mode])
        ticks = statistics.median(r["ticks_per_s"] for r in results[mode])
        ratios[mode] = speed / script, ticks / idle
        print(f"{mode}: training speed / script {speed / script:.3f}, event-loop ticks / idle {ticks / idle:.3f}")
    print(f"idle event loop: {idle:.1f} ticks per second (10 ms timer)")
    viewer.close()
    print(target("training speed in napari's worker / plain script", ratios["worker"][0], ">=", 0.9))
    print(target("event-loop ticks while training in the worker / idle", ratios["worker"][1], ">=", 0.8))


if __name__ == "__main__":
    main()
