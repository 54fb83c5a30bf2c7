"""Dock widget: segment an image from point and box prompts, preview the objects live, commit them as labels.

The widget only translates: ``services.layers`` reads the prompt layers and writes the results, ``core.Segmenter``
does the segmenting, and model loading, encoding and following objects through a stack run as jobs
(``services.segmenting``, run by ``workers.run_job``).
"""

# No ``from __future__ import annotations``: napari injects the viewer only for a real ``Viewer`` annotation.

from collections.abc import Callable
from functools import partial

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, PushButton
from napari.layers import Image, Labels, Layer, Points, Shapes
from napari.utils.notifications import show_error, show_info
from napari.viewer import Viewer
from superqt.utils import qthrottled

from ..core.embeddings import CacheError
from ..core.image import ImageError
from ..core.models.registry import BUNDLED_NAME, MODEL_SOURCES, ModelError, SamModel, available_models, model_purpose
from ..core.predictor import ObjectPrompt, PromptError
from ..core.segmenter import Segmenter
from ..core.training.adapters import AdapterError
from ..services import layers
from ..services.layers import LayerError
from ..services.models import ADAPTER
from ..services.segmenting import ModelRequest, follow_objects, prepare_segmenter
from .connections import Connections
from .workers import run_job

CHECKPOINT_FILE = "checkpoint file…"
ADAPTER_FILE = "adapter file…"
USER_ERRORS = (AdapterError, CacheError, ImageError, LayerError, ModelError, PromptError)
POINTS, BOXES, PREVIEW, SEGMENTATION = "prompts", "boxes", "preview", "segmentation"
NO_IMAGE = "no image to segment: open one (e.g. File > Open Sample > SAM tune) and choose it under 'image'"


class PromptWidget(Container):
    """Segment the chosen image from prompts on the current slice and commit the objects as new labels.

    Points on 'prompts' (t or n toggles positive/negative) and rectangles on 'boxes' are the prompts: each box is
    one object with the points inside it, and each positive point outside boxes one more object (negative points
    outside boxes apply to all of those). 'preview' shows the objects; Commit adds them to 'segmentation' (one undo
    step).
    """

    def __init__(self, viewer: Viewer) -> None:
        self._viewer = viewer
        self._image = ComboBox(name="image", choices=self._image_choices, tooltip="The image layer to segment")
        self._model_name = ComboBox(
            name="model",
            choices=[*available_models(), CHECKPOINT_FILE, ADAPTER_FILE],
            value=BUNDLED_NAME,
            tooltip=model_purpose(BUNDLED_NAME),
        )
        self._checkpoint = FileEdit(
            name="checkpoint",
            filter="*.pt *.pth",
            visible=False,
            nullable=True,
            tooltip="A SAM checkpoint; with an adapter, only needed when its base model was a checkpoint file",
        )
        self._adapter = FileEdit(name="adapter", filter="*.samtune *.pt", visible=False, nullable=True)
        self._state = Label(name="embeddings")
        self._encode = PushButton(
            name="encode",
            text="Encode",
            tooltip="Compute the embeddings of every plane now (cached on disk); click again to cancel",
        )
        self._live = CheckBox(
            name="live_preview", text="live preview", value=True, tooltip="Segment whenever the prompts change"
        )
        self._segment = PushButton(
            name="segment",
            text="Segment",
            tooltip="Preview the objects prompted on the current slice (encodes it first if needed). Click points "
            "on 'prompts' (t or n: toggle positive/negative), draw rectangles on 'boxes': one object per box, and "
            "per positive point outside boxes",
        )
        self._commit = PushButton(
            name="commit",
            text="Commit",
            tooltip=f"Add the objects to '{SEGMENTATION}' as new labels and clear the prompts [c]",
        )
        self._propagate = PushButton(
            name="propagate",
            text="Propagate",
            tooltip=f"Stacks: segment the objects prompted on this slice, follow each one up and down the stack until "
            f"it vanishes or changes too much, and add them to '{SEGMENTATION}' as new labels; click again to cancel",
        )
        self._clear = PushButton(name="clear_prompts", text="Clear", tooltip="Remove all prompts and the preview")
        models = (self._model_name, self._checkpoint, self._adapter)
        controls = (self._image, *models, self._state, self._encode, self._live)
        super().__init__(widgets=[*controls, self._segment, self._commit, self._propagate, self._clear])
        self._model: SamModel | None = None
        self._model_for: ModelRequest | None = None
        self._segmenter: Segmenter | None = None
        self._segmenter_for: tuple | None = None
        self._worker = None  # the running job's worker (None when synchronous)
        self._busy = False
        # Segmenting asked for while a job ran: None nothing, False a preview, True a commit (never downgraded).
        self._pending: bool | None = None
        self._preview_soon = qthrottled(self._run, timeout=150, leading=False)
        self._connections = Connections()
        self.native.destroyed.connect(self._connections.close)
        self.native.destroyed.connect(self._preview_soon.cancel)

        self._image.changed.connect(self._on_image)
        self._model_name.changed.connect(self._on_model)
        self._checkpoint.changed.connect(self._on_model)
        self._adapter.changed.connect(self._on_model)
        self._encode.clicked.connect(self._on_encode)
        self._segment.clicked.connect(lambda: self._run())
        self._commit.clicked.connect(lambda: self._run(commit=True))
        self._propagate.clicked.connect(self._on_propagate)
        self._clear.clicked.connect(self._on_clear)
        self._connections.listen(viewer.dims.events.current_step, self._on_prompts)
        self._on_image()
        if (adapted := adapted_model(viewer)) is not None:  # opened after a fine-tune: use what it produced
            self.set_model(adapted)

    def set_model(self, model: SamModel) -> None:
        """Use the loaded ``model`` for the current model choice instead of loading it (scripts, tests)."""
        self._model, self._model_for = model, self._model_request()
        self._segmenter = None
        self._show_state()

    @property
    def loaded_model(self) -> SamModel | None:
        """The model in use, when it is loaded already."""
        return self._model if self._model_for == self._model_request() else None

    def current_object(self) -> tuple[Segmenter, list[ObjectPrompt], int | None] | None:
        """The ready segmenter of the chosen image, the objects prompted on the current slice and that slice (None
        for a 2D image); None when the slice is not encoded yet. Raises ``LayerError`` as segmenting would."""
        if (image := self._image.value) is None:
            raise LayerError(NO_IMAGE)
        points, boxes, _ = self._prompt_layers(image)
        plane = layers.current_plane(image, self._viewer.dims.point)
        segmenter = self._current_segmenter(image)
        if segmenter is None or not segmenter.is_encoded(plane or 0):
            return None
        return segmenter, layers.read_prompts(points, boxes, plane), plane

    def _image_choices(self, _widget: ComboBox) -> list[tuple[str, Image]]:
        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Image)]

    def _model_request(self) -> ModelRequest:
        checkpoint = None if self._checkpoint.value is None else str(self._checkpoint.value)
        if self._model_name.value == CHECKPOINT_FILE:
            return "custom", checkpoint, None
        if self._model_name.value == ADAPTER_FILE:
            return ADAPTER, checkpoint, None if self._adapter.value is None else str(self._adapter.value)
        return self._model_name.value, checkpoint if _needs_file(self._model_name.value) else None, None

    def _current_segmenter(self, image: Image) -> Segmenter | None:
        """The segmenter for this image and model choice, if one is ready."""
        key = (self._model_request(), id(image), id(image.data))
        return self._segmenter if self._segmenter_for == key else None

    def _layer(self, name: str, kind: type[Layer], make: Callable, image: Image, replace: bool = True) -> Layer:
        """Layer ``name`` for ``image``: made when missing; replaced (or, without ``replace``, refused) when it
        belongs to another image."""
        old = self._viewer.layers[name] if name in self._viewer.layers else None
        if old is not None and layers.fits(old, kind, image):
            return old
        if old is not None:
            if not replace:
                layers.check_fits(old, kind, image)
            self._viewer.layers.remove(old)
        return self._viewer.add_layer(make(image, name))

    def _prompt_layers(self, image: Image) -> tuple[Points, Shapes, Labels]:
        points = self._layer(POINTS, Points, layers.prompt_points, image)
        boxes = self._layer(BOXES, Shapes, layers.prompt_boxes, image)
        preview = self._layer(PREVIEW, Labels, partial(layers.labels_like, dtype=np.uint16, opacity=0.6), image)
        for layer in (points, boxes):
            self._connections.listen(layer.events.data, self._on_prompts)
            self._connections.bind_key(layer, "c", lambda _layer: self._run(commit=True))
        for key in ("t", "n"):
            self._connections.bind_key(points, key, self._toggle_polarity)
        return points, boxes, preview

    def _on_image(self) -> None:
        """Make the prompt layers for the chosen image, ready for clicking."""
        if (image := self._image.value) is not None:
            try:
                points = self._prompt_layers(image)[0]
            except LayerError as error:
                show_error(str(error))
            else:
                points.mode = "add"
                self._viewer.layers.selection.active = points
        self._on_prompts()

    def _on_model(self) -> None:
        name = self._model_name.value
        self._checkpoint.visible = name in (CHECKPOINT_FILE, ADAPTER_FILE) or _needs_file(name)
        self._adapter.visible = name == ADAPTER_FILE
        self._model_name.tooltip = model_purpose(name) or {
            CHECKPOINT_FILE: "any SAM checkpoint file (official, micro-sam or MedSAM layout)",
            ADAPTER_FILE: "an adapter file (from 'Fine-tune on current layers'), applied to the model it was made on",
        }.get(name, "")
        self._model = self._segmenter = None  # free the old model's memory now
        self._show_state()

    def _on_prompts(self, _event: object = None) -> None:
        self._show_state()
        if self._live.value and self._image.value is not None:
            self._preview_soon()

    def _toggle_polarity(self, points: Points) -> None:
        layers.toggle_polarity(points)
        self._on_prompts()

    def _on_clear(self) -> None:
        if (image := self._image.value) is not None:
            points, boxes, preview = self._prompt_layers(image)
            layers.clear_prompts(points, boxes)
            layers.show_preview(preview, None, None)

    def _on_encode(self) -> None:
        if self._worker is not None:  # the button reads "Cancel" while a job runs
            self._pending = None
            self._worker.quit()
        elif (image := self._image.value) is None:
            show_error(NO_IMAGE)
        else:
            self._start_job(image, None)

    def _run(self, commit: bool = False) -> None:
        """Segment the objects prompted on the current slice; show them in the preview, or commit them."""
        if (image := self._image.value) is None:
            show_error(NO_IMAGE)
            return
        try:
            points, boxes, preview = self._prompt_layers(image)
            plane = layers.current_plane(image, self._viewer.dims.point)
            prompts = layers.read_prompts(points, boxes, plane)
            segmenter = self._current_segmenter(image)
            # One thing at a time (a job may be writing the embedding store): segment once it has ended.
            if self._busy or (prompts and (segmenter is None or not segmenter.is_encoded(plane or 0))):
                self._pending = commit or bool(self._pending)
                self._start_job(image, [plane or 0])
                return
            masks = segmenter.segment(prompts, plane or 0).masks if prompts else None
            if not commit:
                layers.show_preview(preview, masks, plane)
            elif masks is None:
                show_info("nothing to commit: click points or draw boxes first")
            else:
                labels = self._layer(SEGMENTATION, Labels, layers.labels_like, image, replace=False)
                ids = layers.paint_objects(labels, masks, plane)
                layers.clear_prompts(points, boxes)
                layers.show_preview(preview, None, plane)
                show_info(f"added {len(ids)} object(s) to '{labels.name}' as label(s) {ids}")
        except USER_ERRORS as error:
            show_error(str(error))

    def _on_propagate(self) -> None:
        if self._worker is not None:  # the button reads "Cancel" while a job runs
            self._on_encode()
            return
        if (image := self._image.value) is None:
            show_error(NO_IMAGE)
            return
        try:
            points, boxes, _ = self._prompt_layers(image)
            plane = layers.current_plane(image, self._viewer.dims.point)
            if plane is None:
                raise LayerError(f"image {image.name!r} is 2D: Propagate follows objects through the slices of a stack")
            prompts = layers.read_prompts(points, boxes, plane)
            self._layer(SEGMENTATION, Labels, layers.labels_like, image, replace=False)  # refuse a misfit early
        except USER_ERRORS as error:
            show_error(str(error))
            return
        if not prompts:
            show_info("nothing to propagate: click points or draw boxes on this slice first")
        else:
            self._start_job(image, [plane], follow=(prompts, plane))

    def _start_job(
        self, image: Image, planes: list[int] | None, follow: tuple[list[ObjectPrompt], int] | None = None
    ) -> None:
        """Load the model, set the image and encode ``planes`` in a worker; then segment, if that is pending. With
        ``follow`` (the prompts of a slice and that slice), then propagate those objects and commit them."""
        if self._busy:  # a sync job can re-enter here too, when a progress update runs Qt events
            return
        self._busy = True
        request = self._model_request()
        model = self._model if self._model_for == request else None
        key = (request, id(image), id(image.data))
        job = partial(prepare_segmenter, model, request, self._current_segmenter(image), image.data, image.rgb, planes)
        on_returned = partial(self._job_returned, key)
        if follow is not None:
            job, on_returned = partial(follow_objects, job, *follow), partial(self._propagated, key, image)
        (self._encode if follow is None else self._propagate).text = "Cancel"
        self._worker = run_job(
            job,
            description="SAM tune: propagating" if follow else "SAM tune: preparing embeddings",
            on_yielded=self._show_progress,
            on_returned=on_returned,
            on_error=self._job_failed,
            on_finished=self._job_finished,
        )

    def _show_progress(self, event: dict) -> None:
        self._state.value = f"encoded {event['done']}/{event['total']}" if "total" in event else event["stage"]

    def _job_returned(self, key: tuple, segmenter: Segmenter) -> None:
        self._segmenter, self._segmenter_for = segmenter, key
        self._model, self._model_for = segmenter.model, key[0]

    def _propagated(self, key: tuple, image: Image, outcome: tuple[Segmenter, list[dict]]) -> None:
        segmenter, objects = outcome
        self._job_returned(key, segmenter)
        try:
            labels = self._layer(SEGMENTATION, Labels, layers.labels_like, image, replace=False)
            ids = layers.paint_stack_objects(labels, objects)
        except LayerError as error:
            show_error(str(error))
            return
        points, boxes, preview = self._prompt_layers(image)
        layers.clear_prompts(points, boxes)
        layers.show_preview(preview, None, None)
        planes = sorted({plane for found in objects for plane in found})
        where = f" on slices {planes[0]} to {planes[-1]}" if planes else ""
        show_info(f"added {len(ids)} object(s) to '{labels.name}'{where} as label(s) {ids}")

    def _job_failed(self, error: Exception) -> None:
        self._pending = None
        if not isinstance(error, USER_ERRORS):
            raise error  # a bug: let napari show the traceback
        show_error(str(error))

    def _job_finished(self) -> None:
        self._worker, self._busy = None, False
        self._encode.text, self._propagate.text = "Encode", "Propagate"
        self._show_state()
        pending, self._pending = self._pending, None
        if pending is not None:
            self._run(commit=pending)

    def _show_state(self) -> None:
        """Say whether the current slice's embeddings are ready (cached) or still to compute."""
        if self._busy:
            return
        image = self._image.value
        segmenter = self._current_segmenter(image) if image is not None else None
        if segmenter is None:
            self._state.value = "not computed yet" if image is not None else "no image"
            return
        try:
            plane = layers.current_plane(image, self._viewer.dims.point)
        except LayerError:
            self._state.value = "slice outside the image"
            return
        where = "" if plane is None else f"slice {plane}: "
        self._state.value = where + ("cached" if segmenter.is_encoded(plane or 0) else "not computed yet")


def _needs_file(name: str) -> bool:
    """Named models without a download address (MedSAM): the user points to the file."""
    return name in MODEL_SOURCES and MODEL_SOURCES[name].url is None


def prompt_widgets(viewer: Viewer) -> list[PromptWidget]:
    """The prompt widgets docked in ``viewer``'s window (other widgets hand them models and read their prompts)."""
    return [widget for widget in viewer.window.dock_widgets.values() if isinstance(widget, PromptWidget)]


def adapted_model(viewer: Viewer) -> SamModel | None:
    """The model of the last successful fine-tune in ``viewer``'s window, if a fine-tune widget holds one."""
    from .finetune_widget import FineTuneWidget  # imports this module

    for widget in viewer.window.dock_widgets.values():
        if isinstance(widget, FineTuneWidget) and widget.result is not None:
            return widget.result.model
    return None
