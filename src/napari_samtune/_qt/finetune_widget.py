"""Dock widget: fine-tune SAM on the images and labels open in the viewer, then use, inspect and save the result.

The widget only translates: ``services.training`` reads the layers and runs ``core.training.fine_tune`` as a job
(``workers.run_job``: a worker thread with a progress bar), ``services.automatic`` makes the prompt-free result and
``services.export`` writes a BLO result as a BioImage.IO package.
The adapted model becomes the model of the viewer's ``services.session.Session`` (so 'Segment with prompts' uses
it); a cancelled or failed run changes nothing.
"""

# No ``from __future__ import annotations``: napari injects the viewer only for a real ``Viewer`` annotation.

import logging
from collections.abc import Callable
from functools import partial

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, PushButton, Select, SpinBox
from napari.layers import Image, Labels, Layer, Points, Shapes
from napari.utils.notifications import show_error, show_info
from napari.viewer import Viewer

from ..core.errors import SamtuneError
from ..core.models.registry import BUNDLED_NAME, SamModel, available_devices, default_device, load_model
from ..core.training.adapters import save_adapter
from ..core.training.loop import TrainConfig, headline_loss
from ..core.training.methods import FineTuneResult
from ..services.automatic import automatic_job, describe_prompt_free
from ..services.export import bioimageio_export_job, package_test_image
from ..services.layers import image_data
from ..services.session import session_for
from ..services.training import TrainingPair, fine_tune_job, method_choices, read_training_layers
from .connections import Connections
from .training_plot import TrainingPlot
from .workers import run_job

# ValueError: the core's messages for settings that do not fit the data (e.g. SUM without unlabeled images).
USER_ERRORS = (SamtuneError, ValueError)
log = logging.getLogger(__name__)


class FineTuneWidget(Container):
    """Fine-tune the model of 'Segment with prompts' (or the bundled one) on image + labels pairs of the viewer.

    Choose an image and its labels (optionally Points/Shapes as weak labels); 'Add pair' to train on several
    images. Unlabeled images feed the uncertainty-aware method. Training stops at the time budget, after the steps,
    or on Cancel, and keeps the weights that validated best.
    """

    def __init__(self, viewer: Viewer) -> None:
        self._viewer = viewer
        self._image = ComboBox(name="image", choices=self._choices(Image), tooltip="An image with labels")
        self._labels_layer = ComboBox(
            name="labels_layer", label="labels", choices=self._choices(Labels), tooltip="Its labels (0: background)"
        )
        self._weak = Select(
            name="weak_labels",
            choices=self._choices(Points, Shapes),
            tooltip="Optional: points (positive/negative) and boxes drawn on this image, for weak self-training",
        )
        self._add_pair = PushButton(name="add_pair", text="Add pair", tooltip="Train on this pair and more")
        self._clear_pairs = PushButton(name="clear_pairs", text="Clear pairs")
        self._pairs_label = Label(name="pairs")
        self._unlabeled = Select(
            name="unlabeled", choices=self._choices(Image), tooltip="Optional: images without labels (SUM)"
        )
        self._all_labeled = CheckBox(
            name="all_objects_labeled",
            text="every object in these images is labeled",
            value=False,
            tooltip="Ticked: unlabeled pixels are background. Unticked: only the painted objects (and the pixels "
            "right around them) are known, so objects you did not paint are not learned as background",
        )
        self._method = ComboBox(name="method", choices=method_choices(), value="interactive")
        self._seconds = SpinBox(name="seconds", value=60, min=1, max=24 * 3600, tooltip="Time budget")
        self._steps = SpinBox(name="steps", value=300, min=1, max=100_000, tooltip="Length of the schedule")
        devices = available_devices()
        device = default_device().type
        self._device = ComboBox(name="device", choices=devices, value=device if device in devices else "cpu")
        self._train = PushButton(name="fine_tune", text="Fine-tune", tooltip="Click again to cancel")
        self._status = Label(name="status", value="not trained yet")
        self._automatic = PushButton(
            name="prompt_free",
            text="Prompt-free result",
            enabled=False,
            tooltip="Segment the chosen image without prompts with the fine-tuned model, into a new labels layer: "
            "classes after BLO prompt learning, every object found from a grid of clicks after the other methods",
        )
        self._adapter_file = FileEdit(name="adapter_file", mode="w", filter="*.samtune *.pt", nullable=True)
        self._save = PushButton(name="save_adapter", text="Save adapter", enabled=False)
        self._package_file = FileEdit(name="package_file", mode="w", filter="*.zip", nullable=True)
        self._export = PushButton(
            name="export_bioimageio",
            text="Export for BioImage.IO…",
            enabled=False,
            tooltip="Write the prompt-free model of a BLO fine-tune as a BioImage.IO package (.zip) that other tools "
            "run; its test image is the centre of the chosen image",
        )
        pair_buttons = Container(
            name="pair_buttons", widgets=[self._add_pair, self._clear_pairs], layout="horizontal", labels=False
        )
        pair_controls = [self._image, self._labels_layer, self._weak, pair_buttons, self._pairs_label, self._unlabeled]
        pair_controls.append(self._all_labeled)
        run_controls = [self._method, self._seconds, self._steps, self._device, self._train, self._status]
        super().__init__(widgets=[*pair_controls, *run_controls])
        self.plot = TrainingPlot()
        self.native.layout().addWidget(self.plot)
        self.extend([self._automatic, self._adapter_file, self._save, self._package_file, self._export])

        self._pairs: list[TrainingPair] = []
        self._session = session_for(viewer)
        self._stop = False
        self._running = False
        self._connections = Connections()
        self.native.destroyed.connect(self._connections.close)
        self._connections.listen(viewer.layers.events.removed, self._on_layer_removed)
        self._connections.listen(self._session.events.result, self._show_result)
        self._add_pair.clicked.connect(self._on_add_pair)
        self._clear_pairs.clicked.connect(self._on_clear_pairs)
        self._train.clicked.connect(self._on_train)
        self._automatic.clicked.connect(self._on_automatic)
        self._save.clicked.connect(self._on_save)
        self._export.clicked.connect(self._on_export)
        self._show_pairs()
        if self._session.result is not None:
            self._show_result()

    @property
    def result(self) -> FineTuneResult | None:
        """The last successful fine-tune of this viewer's session (its ``model`` and ``adapter``), or None."""
        return self._session.result

    def set_model(self, model: SamModel) -> None:
        """Fine-tune ``model`` from now on: it becomes the session's model (scripts, tests)."""
        self._session.use_model(model)

    def _choices(self, *kinds: type[Layer]) -> Callable[[object], list[tuple[str, Layer]]]:
        def choices(_widget: object) -> list[tuple[str, Layer]]:
            return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, kinds)]

        return choices

    def _current_pair(self) -> TrainingPair | None:
        if self._image.value is None or self._labels_layer.value is None:
            return None
        return TrainingPair(self._image.value, self._labels_layer.value, list(self._weak.value))

    def _on_add_pair(self) -> None:
        if (pair := self._current_pair()) is None:
            show_error("choose an image and its labels first")
        elif all(p.image is not pair.image for p in self._pairs):
            self._pairs.append(pair)
        self._show_pairs()

    def _on_clear_pairs(self) -> None:
        self._pairs = []
        self._show_pairs()

    def _on_layer_removed(self, event: object) -> None:
        gone = event.value
        self._pairs = [p for p in self._pairs if gone not in (p.image, p.labels, *p.weak)]
        self._show_pairs()

    def _show_pairs(self) -> None:
        names = [f"{p.image.name} + {p.labels.name}" for p in self._pairs]
        self._pairs_label.value = "pairs: " + ("; ".join(names) if names else "the image and labels above")

    def _base_model(self) -> tuple[SamModel | None, str]:
        """The model to fine-tune (None: load the bundled one in the job) and where it comes from."""
        base = self._session.base_model
        if base is None:
            return None, f"the bundled model {BUNDLED_NAME}"
        # After a fine-tune, again from what its model was trained from, so the adapter stays valid.
        return base, "the base of the last fine-tune" if base is not self._session.model else "the model in use"

    def _on_train(self) -> None:
        if self._running:  # the button reads "Cancel" while training
            self._stop = True
            self._status.value = "cancelling…"
            return
        try:
            pairs = self._pairs or [p for p in [self._current_pair()] if p is not None]
            inputs = read_training_layers(pairs, list(self._unlabeled.value), self._all_labeled.value)
            config = TrainConfig(steps=self._steps.value, time_budget_s=float(self._seconds.value))
        except USER_ERRORS as error:
            show_error(str(error))
            return
        base, source = self._base_model()
        load_base = (lambda: base) if base is not None else partial(load_model, BUNDLED_NAME)
        method = self._method.value
        job = partial(fine_tune_job, load_base, inputs, method, config, self._device.value, lambda: self._stop)
        self._stop, self._running = False, True
        self._train.text = "Cancel"
        self._status.value = f"fine-tuning {source}…"
        self.plot.clear()
        run_job(
            job,
            description="SAM tune: fine-tuning",
            on_yielded=self._show_progress,
            on_returned=self._trained,
            on_error=self._training_failed,
            on_finished=self._training_finished,
        )

    def _show_progress(self, progress: dict) -> None:
        if (event := progress.get("event")) is not None:
            self.plot.add(event.step, event.total, headline_loss(event.losses), event.validation)
        self._status.value = progress["stage"]

    def _trained(self, outcome: tuple[SamModel, FineTuneResult]) -> None:
        base, result = outcome
        if result.cancelled:
            self._status.value = "cancelled: nothing changed"
            show_info("fine-tuning cancelled: the model and the layers are unchanged")
            return
        history = result.training.history
        self._session.use_result(result, base)
        summary = (
            f"validation {history[0]['validation']:.3f} → {result.training.best_validation:.3f} after "
            f"{result.training.steps} steps ({result.training.stopped}, {result.training.elapsed_s:.0f} s)"
        )
        self._status.value = "done: " + summary
        show_info(f"fine-tuned: {summary}; it is the model in use ('Segment with prompts') now")

    def _show_result(self, _event: object = None) -> None:
        """A fine-tune succeeded (here or in a script): its model can segment without prompts, its adapter be saved."""
        model = self._session.result.model
        self._automatic.enabled = True
        self._automatic.tooltip = f"Segment the chosen image without prompts: {describe_prompt_free(model)}"
        self._save.enabled = True
        self._export.enabled = model.prompt_embeddings is not None

    def _training_failed(self, error: Exception) -> None:
        self._status.value = "failed: nothing changed"
        self._failed("fine-tuning", error)

    def _failed(self, what: str, error: Exception) -> None:
        if isinstance(error, USER_ERRORS):
            show_error(str(error))
        else:  # a bug: the user still gets a notification, the log gets the traceback
            log.error("%s failed", what, exc_info=error)
            show_error(f"{what} failed ({type(error).__name__}: {error}); nothing was changed")

    def _training_finished(self) -> None:
        self._running, self._stop = False, False
        self._train.text = "Fine-tune"

    def _on_automatic(self) -> None:
        image, result = self._image.value, self._session.result
        if result is None or image is None:
            show_error("choose the image to segment, and fine-tune first")
            return
        self._automatic.enabled = False
        run_job(
            partial(automatic_job, result.model, image_data(image), image.rgb),
            description="SAM tune: prompt-free segmentation",
            on_yielded=lambda progress: None,
            on_returned=partial(self._add_automatic, image),
            on_error=partial(self._failed, "prompt-free segmentation"),
            on_finished=lambda: setattr(self._automatic, "enabled", True),
        )

    def _add_automatic(self, image: Image, labels: np.ndarray) -> None:
        name = f"{image.name} prompt-free"
        self._viewer.add_labels(labels, name=name, scale=image.scale, translate=image.translate)

    def _on_save(self) -> None:
        if self._session.result is None:
            show_error("nothing to save yet: fine-tune first")
        elif self._adapter_file.value is None:
            show_error("choose where to save the adapter under 'adapter file'")
        else:
            try:
                path = save_adapter(self._session.result.adapter, self._adapter_file.value)
            except OSError as error:
                show_error(f"could not save the adapter: {error}")
            else:
                show_info(f"adapter saved to {path}; load it with model 'adapter file…' in 'Segment with prompts'")

    def _on_export(self) -> None:
        result, base = self._session.result, self._session.result_base
        if result is None or base is None or self._package_file.value is None:
            show_error("fine-tune with BLO prompt learning, then choose the package file (.zip) under 'package file'")
            return
        try:
            test_image, rgb = package_test_image(self._image.value, base.img_size)
        except USER_ERRORS as error:
            show_error(str(error))
            return
        self._export.enabled = False
        run_job(
            partial(bioimageio_export_job, base, result.adapter, self._package_file.value, test_image, rgb),
            description="SAM tune: BioImage.IO export",
            on_yielded=lambda progress: None,
            on_returned=lambda done: show_info(
                f"BioImage.IO package written to {done.path} ({done.size_bytes / 1e6:.1f} MB)"
            ),
            on_error=partial(self._failed, "BioImage.IO export"),
            on_finished=lambda: setattr(self._export, "enabled", self.result.model.prompt_embeddings is not None),
        )
