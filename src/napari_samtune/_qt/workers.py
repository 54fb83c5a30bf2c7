"""Running core generators (encoding, training…) off the GUI thread, with a napari progress bar.

A job is a generator function taking no arguments (bind them with ``functools.partial``) that yields progress dicts
and returns a result. The callbacks always run on the main thread, so they may touch layers. With
``SAMTUNE_SYNC_WORKERS=1`` the same job runs synchronously, callbacks included, which lets tests drive a widget
without waiting on threads.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator
from typing import Any

from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils import progress
from qtpy.QtWidgets import QApplication

from ..core.jobs import drive

Job = Callable[[], Generator[dict, None, Any]]


def sync_workers() -> bool:
    """Whether jobs run synchronously (environment variable ``SAMTUNE_SYNC_WORKERS=1``)."""
    return os.environ.get("SAMTUNE_SYNC_WORKERS") == "1"


def freeze_activity_animation() -> None:
    """Stop napari's animated 'in progress' indicator (it stays shown) in every napari window.

    Why: in a window holding the OpenGL canvas, each frame of that GIF makes Qt recompose the whole window through
    OpenGL. With software OpenGL (remote desktops, virtual machines, Xvfb) this took two CPU cores and made training
    in a worker thread 2-3x slower than in a script; frozen, it runs at script speed
    (``benchmarks/finetune_in_napari.py``). napari offers no setting for it, hence the guarded private lookup.
    """
    for window in QApplication.topLevelWidgets():
        dialog = getattr(window, "_activity_dialog", None)
        indicator = getattr(getattr(dialog, "_toggleButton", None), "_inProgressIndicator", None)
        movie = indicator.movie() if indicator is not None else None
        if movie is not None:
            movie.setPaused(True)


def run_job(
    job: Job,
    *,
    description: str,
    on_yielded: Callable[[dict], None],
    on_returned: Callable[[Any], None],
    on_error: Callable[[Exception], None],
    on_finished: Callable[[], None],
) -> GeneratorWorker | None:
    """Run ``job`` with a progress bar; return its started worker, or None when it already ran synchronously.

    Yielded dicts with ``done``/``total`` move the bar, one with ``stage`` renames it. ``on_finished`` runs last,
    after ``on_returned`` or ``on_error``, and also after the worker was quit.
    """
    bar = progress(desc=description)
    freeze_activity_animation()

    def show(event: dict) -> None:
        if "stage" in event:
            bar.set_description(event["stage"])
        if "total" in event:
            bar.total = event["total"]
            bar.update(event["done"] - bar.n)
        on_yielded(event)

    def finish() -> None:
        bar.close()
        on_finished()

    if sync_workers():
        try:
            result = drive(job(), show)
        except Exception as error:
            on_error(error)
        else:
            on_returned(result)
        finally:
            finish()
        return None
    # _ignore_errors: on_error handles them; otherwise napari would also re-raise each one in the main thread.
    worker = create_worker(job, _start_thread=False, _worker_class=GeneratorWorker, _ignore_errors=True)
    worker.yielded.connect(show)
    worker.returned.connect(on_returned)
    worker.errored.connect(on_error)
    worker.finished.connect(finish)
    worker.start()
    return worker
