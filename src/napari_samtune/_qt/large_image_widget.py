"""Dock widget: segment a large image (dask / zarr-backed or multiscale) without prompts, block by block.

It translates: ``services.large_image`` runs ``core.batch.segment_large_image`` with the model in use of the viewer's
session (else the bundled model) into a resumable zarr store, and makes the Labels layer that reads it lazily.
"""

# No ``from __future__ import annotations``: napari injects the viewer only for a real ``Viewer`` annotation.

import logging
from functools import partial
from pathlib import Path

from magicgui.widgets import ComboBox, Container, Label, PushButton, SpinBox
from napari.layers import Image, Layer
from napari.utils.notifications import show_error, show_info
from napari.viewer import Viewer

from ..core.errors import SamtuneError
from ..services.large_image import labels_layer, large_image_job
from ..services.session import session_for
from .workers import run_job

log = logging.getLogger(__name__)
RUN = "Segment large image"


class LargeImageWidget(Container):
    """Choose a 2D Image layer and a block size; 'Segment large image' adds '<image> labels' (read lazily from zarr).
    Clicking again while it runs cancels after the current block; the next run resumes from the blocks written."""

    def __init__(self, viewer: Viewer) -> None:
        self._viewer = viewer
        self._image = ComboBox(
            name="image", choices=self._images, tooltip="A 2D image, possibly dask/zarr or multiscale"
        )
        self._block = SpinBox(
            name="block",
            value=2048,
            min=64,
            max=16384,
            step=64,
            tooltip="Block size in pixels: each block is read, segmented and written on its own",
        )
        self._run = PushButton(name="run", text=RUN, tooltip="Segment without prompts; click again to cancel")
        self._status = Label(name="status", value="")
        super().__init__(widgets=[self._image, self._block, self._run, self._status])
        self._session = session_for(viewer)
        self._stop = False
        self._running = False
        self._run.clicked.connect(self._on_run)

    def _images(self, _widget: object) -> list[tuple[str, Layer]]:
        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Image)]

    def _on_run(self) -> None:
        if self._running:  # the button reads "Cancel" while it runs
            self._stop = True
            self._status.value = "cancelling after the current block…"
            return
        image = self._image.value
        if image is None:
            show_error("no image layer: open or choose an image first")
            return
        model = self._session.model
        self._stop, self._running = False, True
        self._run.text = "Cancel"
        self._status.value = "the model in use" if model is not None else "the bundled model"
        run_job(
            partial(large_image_job, image, model, self._block.value, lambda: self._stop),
            description="SAM tune: large image",
            on_yielded=self._show_progress,
            on_returned=partial(self._segmented, image),
            on_error=self._failed,
            on_finished=self._finished,
        )

    def _show_progress(self, progress: dict) -> None:
        done = f" {progress['done']}/{progress['total']} blocks" if "total" in progress else ""
        self._status.value = f"{progress.get('stage', '')}{done}"

    def _segmented(self, image: Image, output: Path | None) -> None:
        if output is None:
            self._status.value = "cancelled: the blocks written are kept, run again to go on"
            return
        layer = self._viewer.add_layer(labels_layer(image, output))
        self._status.value = f"done: '{layer.name}' (stored in {output})"
        show_info(f"segmented {image.name!r} block by block into '{layer.name}'")

    def _failed(self, error: Exception) -> None:
        self._status.value = "failed"
        if isinstance(error, SamtuneError):
            show_error(str(error))
        else:  # a bug: the user still gets a notification, the log gets the traceback
            log.error("large image segmentation failed", exc_info=error)
            show_error(f"large image segmentation failed: {error}")

    def _finished(self) -> None:
        self._running = False
        self._run.text = RUN
