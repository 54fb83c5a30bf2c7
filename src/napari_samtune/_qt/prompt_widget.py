"""Dock widget: segment an image from point and box prompts, preview the objects live, commit them as labels.

The widget only translates: it is a view of the viewer's ``services.session.Session`` (the image, the model in use
and its segmenter), ``services.layers`` reads the prompt layers and writes the results, ``core.Segmenter`` does the
segmenting, and model loading, encoding and following objects through a stack run as jobs (``services.segmenting``,
run by ``workers.run_job``).
"""

# No ``from __future__ import annotations``: napari injects the viewer only for a real ``Viewer`` annotation.

from functools import partial

from magicgui.widgets import ComboBox, Container, Label
from napari.layers import Image, Labels, Points, Shapes
from napari.utils.notifications import show_error, show_info
from napari.viewer import Viewer
from superqt.utils import qthrottled

from ..core.errors import SamtuneError
from ..core.models.registry import SamModel
from ..core.predictor import ObjectPrompt
from ..core.segmenter import Segmenter
from ..services import layers, refining
from ..services.layers import LayerError
from ..services.segmenting import ModelRequest, follow_objects, prepare_segmenter
from ..services.session import session_for
from .connections import Connections
from .model_choice import model_fields, model_request, show_model_fields
from .prompt_controls import prompt_buttons
from .workers import run_job

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
        self._model_name, self._checkpoint, self._adapter = model_fields()
        self._state = Label(name="embeddings")
        buttons = prompt_buttons()
        self._encode, self._live, self._segment, self._commit = buttons[:4]
        self._propagate, self._refine, self._clear = buttons[4:]
        models = (self._model_name, self._checkpoint, self._adapter)
        controls = (self._image, *models, self._state, self._encode, self._live)
        super().__init__(widgets=[*controls, self._segment, self._refine, self._commit, self._propagate, self._clear])
        self._session = session_for(viewer)
        self._model_for: ModelRequest | None = None  # the model choice the session's model was taken for
        self._worker = None  # the running job's worker (None when synchronous)
        self._busy = False
        # Segmenting asked for while a job ran: None nothing, False a preview, True a commit (never downgraded).
        self._pending: bool | None = None
        self._mask_source: Labels | None = None  # the Labels layer whose objects are mask prompts ('Refine labels')
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
        self._refine.clicked.connect(self._on_refine)
        self._clear.clicked.connect(self._on_clear)
        self._connections.listen(viewer.dims.events.current_step, self._on_prompts)
        self._connections.listen(self._session.events.model, self._on_session_model)
        self._connections.listen(self._session.events.image, self._on_session_image)
        self._on_image()
        if self._session.model is not None:  # opened after a fine-tune (or a script): use the session's model
            self._on_session_model()

    def set_model(self, model: SamModel) -> None:
        """Use the loaded ``model`` for the current model choice instead of loading it (scripts, tests)."""
        self._session.use_model(model)
        self._on_session_model()

    @property
    def loaded_model(self) -> SamModel | None:
        """The model in use, when it is loaded already."""
        return self._session.model if self._model_for == self._model_request() else None

    def current_object(self) -> tuple[Segmenter, list[ObjectPrompt], int | None] | None:
        """The ready segmenter of the chosen image, the objects prompted on the current slice and that slice (None
        for a 2D image); None when the slice is not encoded yet. Raises ``LayerError`` as segmenting would."""
        if self._image.value is None:
            raise LayerError(NO_IMAGE)
        self._prompt_layers(self._image.value)
        return self._session.current_object()

    def _on_session_model(self, _event: object = None) -> None:
        """The session's model changed (loaded here, fine-tuned, set by a script): it is the current choice's."""
        self._model_for = self._model_request()
        self._show_state()

    def _on_session_image(self, event: object) -> None:
        """Follow an image chosen elsewhere (a script)."""
        if event.value is not None and event.value is not self._image.value:
            self._image.reset_choices()
            self._image.value = event.value

    def _image_choices(self, _widget: ComboBox) -> list[tuple[str, Image]]:
        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Image)]

    def _model_request(self) -> ModelRequest:
        return model_request(self._model_name, self._checkpoint, self._adapter)

    def _current_segmenter(self, image: Image) -> Segmenter | None:
        """The segmenter for this image and model choice, if one is ready."""
        return self._session.segmenter(image) if self.loaded_model is not None else None

    def _prompt_layers(self, image: Image) -> tuple[Points, Shapes, Labels]:
        """The prompt layers and the preview of ``image``, listened to and with their keys bound."""
        points, boxes = self._session.prompt_layers(image)
        preview = self._session.preview_layer(image)
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
                self._session.set_image(image)
                points = self._prompt_layers(image)[0]
            except LayerError as error:
                show_error(str(error))
            else:
                points.mode = "add"
                self._viewer.layers.selection.active = points
        self._on_prompts()

    def _on_model(self) -> None:
        show_model_fields(self._model_name, self._checkpoint, self._adapter)
        self._session.forget_model()  # free the old model's memory now

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
        self._mask_source = None

    def _on_refine(self) -> None:
        if self._image.value is None:
            show_error(NO_IMAGE)
            return
        try:
            self._mask_source = refining.labels_to_refine(self._viewer.layers.selection.active, self._image.value)
        except SamtuneError as error:
            show_error(str(error))
        else:
            self._run()

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
            if self._mask_source is not None:
                prompts += refining.mask_prompts(self._mask_source, plane)
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
                labels = self._session.segmentation_layer(image)
                show_info(layers.commit_objects(labels, (masks, plane), points, boxes, preview))
                self._mask_source = None
        except SamtuneError as error:
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
            self._session.segmentation_layer(image)  # refuse a misfit early
        except SamtuneError as error:
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
        segmenter = self._current_segmenter(image)
        job = partial(
            prepare_segmenter, self.loaded_model, request, segmenter, layers.image_data(image), image.rgb, planes
        )
        on_returned = partial(self._job_returned, request, image)
        if follow is not None:
            job, on_returned = partial(follow_objects, job, *follow), partial(self._propagated, request, image)
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
        if self._busy:  # a progress event delivered after the job finished must not hide the final state
            self._state.value = f"encoded {event['done']}/{event['total']}" if "total" in event else event["stage"]

    def _job_returned(self, request: ModelRequest, image: Image, segmenter: Segmenter) -> None:
        self._session.keep_segmenter(segmenter, image)
        self._model_for = request

    def _propagated(self, request: ModelRequest, image: Image, outcome: tuple[Segmenter, list[dict]]) -> None:
        segmenter, objects = outcome
        self._job_returned(request, image, segmenter)
        try:
            labels = self._session.segmentation_layer(image)
            show_info(layers.commit_objects(labels, objects, *self._prompt_layers(image)))
        except LayerError as error:
            show_error(str(error))

    def _job_failed(self, error: Exception) -> None:
        self._pending = None
        if not isinstance(error, SamtuneError):
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
        if not self._busy:
            image = self._image.value
            segmenter = self._current_segmenter(image) if image is not None else None
            self._state.value = layers.embedding_state(image, segmenter, self._viewer.dims.point)
