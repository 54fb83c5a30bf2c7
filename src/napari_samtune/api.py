"""Scripted sessions: drive SAM tune on a napari viewer from Python, with the operations the widgets run.

A ``SamSession`` works on the layers a user would click on ('prompts', 'boxes', 'preview', 'segmentation' and
'uncertainty', shared with the widgets) through the same layer services and core functions, so a script reproduces
a session exactly. Every call blocks until it is done::

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

from collections.abc import Callable, Generator, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from napari.layers import Image, Labels, Layer, Points, Shapes
from napari.viewer import Viewer

from ._qt.prompt_widget import BOXES, POINTS, PREVIEW, SEGMENTATION, prompt_widgets
from .core.models.registry import BUNDLED_NAME, SamModel, load_model
from .core.propagation import PropagationSettings
from .core.review import next_uncertain_region
from .core.segmenter import Segmenter
from .core.training.adapters import save_adapter
from .core.training.fine_tune import FineTuneResult
from .core.training.loop import TrainConfig, TrainEvent
from .services import layers
from .services.automatic import automatic_job
from .services.layers import LayerError
from .services.segmenting import follow_objects
from .services.training import TrainingPair, fine_tune_job, read_training_layers
from .services.uncertainty import PROMPT_SOURCES, UNCERTAINTY, go_to, show_uncertainty, uncertainty_map

L = TypeVar("L", bound=Layer)


def _ready(segmenter: Segmenter) -> Generator[dict, None, Segmenter]:
    """A job that returns ``segmenter`` as it is (already encoded where needed)."""
    yield {"stage": "ready"}
    return segmenter


def _run(job: Generator[Any, None, Any]) -> Any:
    """Iterate a job generator to its end; return its return value."""
    while True:
        try:
            next(job)
        except StopIteration as stop:
            return stop.value


class SamSession:
    """Segment, fine-tune and review one image at a time on ``viewer`` with ``model`` (a ``SamModel``, or a name
    for ``load_model``). ``cache_root``: the embedding cache (None: the user cache folder, False: memory only).

    ``model`` is the model in use (the adapted one after ``fine_tune``), ``base_model`` the one fine-tuning starts
    from, so that an adapter always applies to a model that can be loaded again. 'Segment with prompts' widgets
    docked in the viewer are handed ``model`` too; turn their live preview off while a script drives the session,
    or they segment every prompt a second time."""

    def __init__(
        self, viewer: Viewer, model: SamModel | str = BUNDLED_NAME, *, cache_root: str | Path | bool | None = None
    ) -> None:
        self.viewer = viewer
        self.model = load_model(model) if isinstance(model, str) else model
        self.base_model = self.model
        self.cache_root = cache_root
        self.image: Image | None = None
        self.labels: Labels | None = None
        self.result: FineTuneResult | None = None
        self._segmenter: Segmenter | None = None
        self._segmenter_for: tuple | None = None
        self._visited: list[tuple[int, ...]] = []
        self._use(self.model)

    def open_sample(self, key: str) -> Image:
        """Open a SAM tune sample ('nuclei', 'polyp', 'em_membranes', 'nuclei_stack') and work on it; its ground
        truth becomes ``labels`` (what ``fine_tune`` learns from unless told otherwise)."""
        added = self.viewer.open_sample("napari-samtune", key)
        image = next(layer for layer in added if isinstance(layer, Image))
        self.use_image(image, next((layer for layer in added if isinstance(layer, Labels)), None))
        return image

    def use_image(self, image: Image | str, labels: Labels | str | None = None) -> None:
        """Work on ``image`` (a layer or its name) from now on, with ``labels`` as its training labels."""
        self.image = self.viewer.layers[image] if isinstance(image, str) else image
        self.labels = self.viewer.layers[labels] if isinstance(labels, str) else labels
        layers.spatial_shape(self.image)  # refuses layouts SAM tune cannot segment
        self._visited = []

    def encode(self) -> Segmenter:
        """Compute (or read from the cache) the embeddings of every plane of the image now; returns the segmenter
        (``segmenter.segment(...)`` prompts it directly, without layers)."""
        segmenter = self._ready_segmenter(None)
        _run(segmenter.encode())
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
        image = self._require_image()
        ndim = len(layers.spatial_shape(image))
        coords = np.asarray(points, float).reshape(-1, ndim)
        box_array = np.asarray(boxes, float).reshape(-1, ndim + 2)
        if ndim == 3 and len(coords) + len(box_array):
            plane = coords[0, 0] if len(coords) else box_array[0, 0]
            self.viewer.dims.set_point(self.viewer.dims.ndim - 3, image.data_to_world([plane, 0, 0])[0])
        points_layer, boxes_layer = self._prompt_layers(image)
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
        preview = self._layer(PREVIEW, Labels, partial(layers.labels_like, dtype=np.uint16, opacity=0.6))
        layers.show_preview(preview, masks, plane)
        return masks if masks is not None else np.zeros((0, *layers.spatial_shape(image)[-2:]), bool)

    def commit(self) -> list[int]:
        """Add the prompted objects to 'segmentation' as new labels (one undo step), clear the prompts; returns
        the new label ids."""
        image = self._require_image()
        masks, plane = self._segment()
        if masks is None:
            raise LayerError("nothing to commit: call prompt(points=..., boxes=...) first")
        segmentation = self._segmentation_layer()
        ids = layers.paint_objects(segmentation, masks, plane)
        layers.clear_prompts(*self._prompt_layers(image))
        if PREVIEW in self.viewer.layers:
            layers.show_preview(self.viewer.layers[PREVIEW], None, plane)
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
        (``DataError``, ``TrainingError``, ``ValueError``) and ``LayerError``.
        """
        image = self._get(image) if image is not None else self._require_image()
        chosen = labels if labels is not None else self.labels if self.labels is not None else SEGMENTATION
        pair = TrainingPair(image, self._get(chosen), [self._get(layer) for layer in weak])
        inputs = read_training_layers([pair], [self._get(layer) for layer in unlabeled], all_objects_labeled)
        config = TrainConfig(steps=steps, time_budget_s=seconds)
        device = device or self.base_model.device.type
        job = fine_tune_job(lambda: self.base_model, inputs, method, config, device, should_stop=lambda: False)
        while True:
            try:
                progress = next(job)
            except StopIteration as stop:
                _, self.result = stop.value
                break
            if on_event is not None and "event" in progress:
                on_event(progress["event"])
        self._use(self.result.model)
        return self.result

    def set_model(self, model: SamModel) -> None:
        """Use ``model`` from now on, here and in the viewer's 'Segment with prompts' widgets, and fine-tune it
        next time."""
        self.base_model, self.result = model, None
        self._use(model)

    def _use(self, model: SamModel) -> None:
        self.model, self._segmenter = model, None
        for widget in prompt_widgets(self.viewer):
            widget.set_model(model)

    def show_uncertainty(self, source: str = PROMPT_SOURCES[0]) -> Image:
        """Add or update the 'uncertainty' layer for the objects prompted on the current slice, or for the
        prompt-free segmentation (``source="prompt-free segmentation"``); returns the layer."""
        image = self._require_image()
        plane = layers.current_plane(image, self.viewer.dims.point)
        segmenter = self._ready_segmenter(plane)
        prompts = layers.read_prompts(*self._prompt_layers(image), plane)
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
        image = self._require_image()
        plane = layers.current_plane(image, self.viewer.dims.point)
        if plane is None:
            raise LayerError(f"image {image.name!r} is 2D: propagate() follows objects through the slices of a stack")
        prompts = layers.read_prompts(*self._prompt_layers(image), plane)
        if not prompts:
            raise LayerError("nothing to propagate: call prompt(points=..., boxes=...) on a slice first")
        segmenter = self._ready_segmenter(plane)
        _, objects = _run(follow_objects(lambda: _ready(segmenter), prompts, plane, settings=settings))
        segmentation = self._segmentation_layer()
        ids = layers.paint_stack_objects(segmentation, objects)
        layers.clear_prompts(*self._prompt_layers(image))
        if PREVIEW in self.viewer.layers:
            layers.show_preview(self.viewer.layers[PREVIEW], None, None)
        return ids

    def segment_automatic(self, name: str | None = None) -> Labels:
        """Segment the whole image without prompts into a new Labels layer (``name``, default '<image>
        prompt-free'): the classes of a model with learned prompts (after ``fine_tune(method="blo")``), else every
        object the model finds from a grid of clicks."""
        image = self._require_image()
        labels = _run(automatic_job(self.model, image.data, image.rgb, cache_root=self.cache_root))
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
        from .cli import write_labels

        write_labels(path, np.asarray(self._get(layer).data))
        return Path(path)

    def screenshot(self, path: str | Path, canvas_only: bool = True) -> np.ndarray:
        """Save the viewer's canvas (or the whole window) to ``path``; returns the RGBA image."""
        return self.viewer.screenshot(str(path), canvas_only=canvas_only)

    def _require_image(self) -> Image:
        if self.image is None:
            raise LayerError("no image: call open_sample(...) or use_image(...) first")
        return self.image

    def _get(self, layer: L | str) -> L:
        return self.viewer.layers[layer] if isinstance(layer, str) else layer

    def _layer(self, name: str, kind: type[L], make: Callable[[Image, str], L], replace: bool = True) -> L:
        """Layer ``name`` for the image: made when missing; replaced (without ``replace``: refused with a
        ``LayerError``) when it belongs to an image of another shape, as the widgets do."""
        image = self._require_image()
        old = self.viewer.layers[name] if name in self.viewer.layers else None
        if old is not None and layers.fits(old, kind, image):
            return old
        if old is not None:
            if not replace:
                layers.check_fits(old, kind, image)
            self.viewer.layers.remove(old)
        return self.viewer.add_layer(make(image, name))

    def _prompt_layers(self, image: Image) -> tuple[Points, Shapes]:
        return self._layer(POINTS, Points, layers.prompt_points), self._layer(BOXES, Shapes, layers.prompt_boxes)

    def _segmentation_layer(self) -> Labels:
        return self._layer(SEGMENTATION, Labels, layers.labels_like, replace=False)

    def _ready_segmenter(self, plane: int | None) -> Segmenter:
        """The segmenter of the current image and model, with ``plane`` encoded (None: none yet)."""
        image = self._require_image()
        key = (id(self.model), id(image), id(image.data))
        if self._segmenter is None or self._segmenter_for != key:
            self._segmenter = Segmenter(self.model, cache_root=self.cache_root)
            self._segmenter.set_image(image.data, rgb=image.rgb)
            self._segmenter_for = key
        if plane is not None or not self._segmenter.store.volume.is_stack:
            _run(self._segmenter.encode([plane or 0]))
        return self._segmenter

    def _segment(self) -> tuple[np.ndarray | None, int | None]:
        """The masks of the objects prompted on the current slice (None: no object) and that slice."""
        image = self._require_image()
        plane = layers.current_plane(image, self.viewer.dims.point)
        prompts = layers.read_prompts(*self._prompt_layers(image), plane)
        if not prompts:
            return None, plane
        return self._ready_segmenter(plane).segment(prompts, plane or 0).masks, plane
