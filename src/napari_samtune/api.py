"""Scripted sessions: drive SAM tune on a napari viewer from Python, with the operations the widgets run.

A ``SamSession`` drives the viewer's one ``services.session.Session`` (the image, the model in use, the last
fine-tune), which the widgets also show: it works on the layers a user would click on ('prompts', 'boxes', 'preview',
'segmentation' and 'uncertainty') through the same layer services and core functions, so a script reproduces a
session exactly. Every call blocks until it is done::

    import napari
    from napari_samtune.api import SamSession

    viewer = napari.Viewer()
    session = SamSession(viewer)                       # the bundled model; or model="vit_b", or a SamModel
    session.open_sample("nuclei")                      # image 'nuclei' and its labels 'nuclei labels'
    session.encode()                                   # embeddings of every plane (cached on disk)
    session.prompt(points=[[60, 60]])                  # preview one object from a positive click
    session.commit()                                   # … and add it to 'segmentation'
    session.fine_tune(method="blo", seconds=60)        # on 'nuclei' + 'nuclei labels'; the model is replaced
    session.segment_automatic()                        # prompt-free, into the new layer 'nuclei prompt-free'
    session.show_uncertainty(source="prompt-free segmentation")   # or "prompt", "tta"… for the prompts on view
    session.next_uncertain_region()                    # centre the view where to look next
    session.save_adapter("nuclei.samtune")
    session.save_labels("nuclei_labels.tif")
    session.screenshot("nuclei.png")

On a stack, ``session.propagate()`` follows the objects prompted on one slice through the others. Coordinates are
the image's data coordinates: (row, col), or (plane, row, col) for a stack.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
from napari.layers import Image, Labels, Layer, Points, Shapes
from napari.viewer import Viewer

from .core.io import write_labels
from .core.jobs import drive
from .core.models.registry import BUNDLED_NAME, SamModel, load_model
from .core.propagation import PropagationSettings
from .core.review import next_uncertain_region
from .core.segmenter import Segmenter
from .core.training.adapters import save_adapter
from .core.training.loop import TrainConfig, TrainEvent
from .core.training.methods import FineTuneResult
from .services import layers
from .services.automatic import automatic_job
from .services.layers import LayerError
from .services.segmenting import follow_objects, ready
from .services.session import SEGMENTATION, Session, session_for
from .services.training import TrainingPair, fine_tune_job, read_training_layers
from .services.uncertainty import PROMPT_SOURCES, UNCERTAINTY, go_to, show_uncertainty, uncertainty_map

__all__ = ["SamSession", "Session", "session_for"]
L = TypeVar("L", bound=Layer)


class SamSession:
    """Segment, fine-tune and review one image at a time on ``viewer`` with ``model`` (a ``SamModel``, or a name
    for ``load_model``). ``cache_root``: the embedding cache (None: the user cache folder, False: memory only).

    ``model`` is the model in use (the adapted one after ``fine_tune``), ``base_model`` the one fine-tuning starts
    from, so that an adapter always applies to a model that can be loaded again. Both live in the viewer's
    ``Session``, so 'Segment with prompts' widgets docked in the viewer use ``model`` too; turn their live preview
    off while a script drives the session, or they segment every prompt a second time."""

    def __init__(
        self, viewer: Viewer, model: SamModel | str = BUNDLED_NAME, *, cache_root: str | Path | bool | None = None
    ) -> None:
        self.viewer = viewer
        self.session: Session = session_for(viewer)
        self.session.cache_root = cache_root
        self.session.use_model(load_model(model) if isinstance(model, str) else model)
        self._visited: list[tuple[int, ...]] = []

    model = property(lambda self: self.session.model, doc="The model in use.")
    base_model = property(lambda self: self.session.base_model, doc="The model the next fine-tune starts from.")
    result = property(lambda self: self.session.result, doc="The last successful fine-tune, or None.")
    image = property(lambda self: self.session.image, doc="The image worked on.")
    labels = property(lambda self: self.session.labels, doc="The image's training labels.")

    def open_sample(self, key: str) -> Image:
        """Open a SAM tune sample ('nuclei', 'polyp', 'em_membranes', 'nuclei_stack') and work on it; its ground
        truth becomes ``labels`` (what ``fine_tune`` learns from unless told otherwise)."""
        added = self.viewer.open_sample("napari-samtune", key)
        image = next(layer for layer in added if isinstance(layer, Image))
        self.use_image(image, next((layer for layer in added if isinstance(layer, Labels)), None))
        return image

    def use_image(self, image: Image | str, labels: Labels | str | None = None) -> None:
        """Work on ``image`` (a layer or its name) from now on, with ``labels`` as its training labels."""
        labels = self._get(labels) if labels is not None else None
        self.session.set_image(self._get(image), labels)
        self.session.labels = labels  # None too: no training labels for this image
        self._visited = []

    def encode(self) -> Segmenter:
        """Compute (or read from the cache) the embeddings of every plane of the image now; returns the segmenter
        (``segmenter.segment(...)`` prompts it directly, without layers)."""
        segmenter = self.session.ready_segmenter(None)
        drive(segmenter.encode())
        return segmenter

    def prompt(
        self,
        points: Sequence[Sequence[float]] = (),
        point_labels: Sequence[int] | None = None,
        boxes: Sequence[Sequence[float]] = (),
    ) -> np.ndarray:
        """Replace the prompts with ``points`` (labels 1 positive / 0 negative; default all positive) and ``boxes``
        (row0, col0, row1, col1, with a leading plane for a stack); show and return the preview ``(N, H, W)`` bool.

        For a stack, the view moves to the plane of the first prompt. Objects as in the widget: each box with the
        points inside it, and each positive point outside boxes (with the negative points outside boxes).
        """
        image = self.session.require_image()
        ndim = len(layers.spatial_shape(image))
        coords = np.asarray(points, float).reshape(-1, ndim)
        box_array = np.asarray(boxes, float).reshape(-1, ndim + 2)
        if ndim == 3 and len(coords) + len(box_array):
            plane = coords[0, 0] if len(coords) else box_array[0, 0]
            self.viewer.dims.set_point(self.viewer.dims.ndim - 3, image.data_to_world([plane, 0, 0])[0])
        points_layer, boxes_layer = self.session.prompt_layers(image)
        layers.clear_prompts(points_layer, boxes_layer)
        polarity = np.ones(len(coords)) if point_labels is None else np.asarray(point_labels)
        for point, positive in zip(coords, polarity):
            points_layer.feature_defaults = {"label": layers.POSITIVE if positive else layers.NEGATIVE}
            points_layer.add([point])
        points_layer.feature_defaults = {"label": layers.POSITIVE}
        for box in box_array:
            lead, (r0, c0, r1, c1) = list(box[:-4]), box[-4:]
            boxes_layer.add_rectangles(np.array([[*lead, r0, c0], [*lead, r1, c1]]))
        masks, plane = self._segment()
        layers.show_preview(self.session.preview_layer(image), masks, plane)
        return masks if masks is not None else np.zeros((0, *layers.spatial_shape(image)[-2:]), bool)

    def commit(self) -> list[int]:
        """Add the prompted objects to 'segmentation' as new labels (one undo step), clear the prompts; returns
        the new label ids."""
        image = self.session.require_image()
        masks, plane = self._segment()
        if masks is None:
            raise LayerError("nothing to commit: call prompt(points=..., boxes=...) first")
        ids = layers.paint_objects(self.session.segmentation_layer(image), masks, plane)
        self.session.clear_prompts(image, plane)
        return ids

    def fine_tune(
        self,
        method: str = "interactive",
        seconds: float = 60.0,
        steps: int = 300,
        *,
        image: Image | str | None = None,
        labels: Labels | str | None = None,
        unlabeled: Sequence[Image | str] = (),
        weak: Sequence[Points | Shapes | str] = (),
        all_objects_labeled: bool = False,
        device: str | None = None,
        on_event: Callable[[TrainEvent], None] | None = None,
    ) -> FineTuneResult:
        """Fine-tune ``base_model`` on ``image`` (default: the session's image) and ``labels`` (default: the
        session's labels, else 'segmentation') within ``seconds`` / ``steps``; the adapted model becomes the
        session's and the prompt widgets' model. ``on_event`` sees every training step (loss, validation, time left).

        method: 'interactive', 'blo' (learns prompts: prompt-free segmentation), 'sum' (with ``unlabeled`` images),
        'wesam' (with ``weak`` Points/Shapes layers) or 'auto'. all_objects_labeled: every object in the image is
        painted (default False: unpainted objects are not learned as background). Raises the core's errors
        (``SamtuneError`` subclasses such as ``DataError`` and ``TrainingError``; ``ValueError`` for settings).
        """
        image = self._get(image) if image is not None else self.session.require_image()
        chosen = labels if labels is not None else self.labels if self.labels is not None else SEGMENTATION
        pair = TrainingPair(image, self._get(chosen), [self._get(layer) for layer in weak])
        inputs = read_training_layers([pair], [self._get(layer) for layer in unlabeled], all_objects_labeled)
        config = TrainConfig(steps=steps, time_budget_s=seconds)
        base = self.base_model
        device = device or base.device.type
        job = fine_tune_job(lambda: base, inputs, method, config, device, should_stop=lambda: False)
        _, result = drive(
            job, lambda progress: on_event(progress["event"]) if on_event and "event" in progress else None
        )
        self.session.use_result(result, base)
        return result

    def set_model(self, model: SamModel) -> None:
        """Use ``model`` from now on, here and in the viewer's 'Segment with prompts' widgets, and fine-tune it
        next time."""
        self.session.use_model(model)

    def show_uncertainty(self, source: str = PROMPT_SOURCES[0]) -> Image:
        """Add or update the 'uncertainty' layer for the objects prompted on the current slice, or for the
        prompt-free segmentation (``source="prompt-free segmentation"``); returns the layer."""
        image = self.session.require_image()
        plane = self.session.current_plane(image)
        segmenter = self.session.ready_segmenter(plane)
        prompts, _ = self.session.current_prompts(image)
        return show_uncertainty(self.viewer, image, uncertainty_map(segmenter, prompts, plane, source), plane)

    def next_uncertain_region(self) -> tuple[int, ...] | None:
        """Move the view to the most uncertain region of the 'uncertainty' layer not visited yet; returns its
        position, or None when none is left."""
        if UNCERTAINTY not in self.viewer.layers:
            raise LayerError("no 'uncertainty' layer: call show_uncertainty() first")
        layer = self.viewer.layers[UNCERTAINTY]
        position = next_uncertain_region(layer.data, self._visited)
        if position is not None:
            self._visited.append(position)
            go_to(self.viewer, layer, position)
        return position

    def propagate(self, settings: PropagationSettings | None = None) -> list[int]:
        """Segment the objects prompted on the current slice of a stack, follow each through the other slices until
        it vanishes or changes too much, and add them to 'segmentation' (one label id per object, one undo step);
        clears the prompts and returns the new label ids."""
        image = self.session.require_image()
        prompts, plane = self.session.current_prompts(image)
        if plane is None:
            raise LayerError(f"image {image.name!r} is 2D: propagate() follows objects through the slices of a stack")
        if not prompts:
            raise LayerError("nothing to propagate: call prompt(points=..., boxes=...) on a slice first")
        segmenter = self.session.ready_segmenter(plane)
        _, objects = drive(follow_objects(lambda: ready(segmenter), prompts, plane, settings=settings))
        ids = layers.paint_stack_objects(self.session.segmentation_layer(image), objects)
        self.session.clear_prompts(image, None)
        return ids

    def segment_automatic(self, name: str | None = None) -> Labels:
        """Segment the whole image without prompts into a new Labels layer (``name``, default '<image>
        prompt-free'): the classes of a model with learned prompts (after ``fine_tune(method="blo")``), else every
        object the model finds from a grid of clicks."""
        image = self.session.require_image()
        labels = drive(
            automatic_job(self.model, layers.image_data(image), image.rgb, cache_root=self.session.cache_root)
        )
        return self.viewer.add_labels(
            labels, name=name or f"{image.name} prompt-free", scale=image.scale, translate=image.translate
        )

    def save_adapter(self, path: str | Path) -> Path:
        """Write the last fine-tune's adapter to ``path``."""
        if self.result is None:
            raise ValueError("nothing to save: call fine_tune() first")
        return save_adapter(self.result.adapter, path)

    def save_labels(self, path: str | Path, layer: Labels | str = SEGMENTATION) -> Path:
        """Write a labels layer (default 'segmentation') to ``path``: TIFF (stacks too) or any format imageio
        writes (e.g. PNG for a 2D image), as uint16 when the ids fit."""
        return write_labels(path, np.asarray(self._get(layer).data))

    def screenshot(self, path: str | Path, canvas_only: bool = True) -> np.ndarray:
        """Save the viewer's canvas (or the whole window) to ``path``; returns the RGBA image."""
        return self.viewer.screenshot(str(path), canvas_only=canvas_only)

    def _get(self, layer: L | str) -> L:
        return self.viewer.layers[layer] if isinstance(layer, str) else layer

    def _segment(self) -> tuple[np.ndarray | None, int | None]:
        """The masks of the objects prompted on the current slice (None: no object) and that slice."""
        prompts, plane = self.session.current_prompts(self.session.require_image())
        if not prompts:
            return None, plane
        return self.session.ready_segmenter(plane).segment(prompts, plane or 0).masks, plane
