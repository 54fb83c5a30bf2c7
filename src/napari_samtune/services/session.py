"""One session per viewer: what SAM tune is working on, shared by the widgets and by scripts.

A ``Session`` holds the image being segmented (and its training labels), the model in use, the model a fine-tune
starts from, the last fine-tune's result (with its adapter) and the segmenter of the image (its embeddings). It
emits ``events.image``, ``events.model`` and ``events.result`` when they change. The three widgets are views that
read it and listen to it (napari-animation's ``Animation`` model held by its widgets is the pattern);
``napari_samtune.api.SamSession`` drives it from Python. Nothing here imports Qt.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np
from napari.components import ViewerModel
from napari.layers import Image, Labels, Layer, Points, Shapes
from napari.utils.events import EmitterGroup

from ..core.jobs import drive
from ..core.models.registry import SamModel
from ..core.predictor import ObjectPrompt
from ..core.segmenter import Segmenter
from ..core.training.methods import FineTuneResult
from . import layers
from .layers import LayerError

POINTS, BOXES, PREVIEW, SEGMENTATION = "prompts", "boxes", "preview", "segmentation"
L = TypeVar("L", bound=Layer)
_SESSIONS: dict[int, Session] = {}


def session_for(viewer: ViewerModel) -> Session:
    """The session of ``viewer``, made on first use; every widget and script on that viewer shares it."""
    viewer = getattr(viewer, "__wrapped__", viewer)  # napari hands plugin widgets the viewer behind a proxy
    session = _SESSIONS.get(id(viewer))
    if session is None or session.viewer is not viewer:
        session = _SESSIONS[id(viewer)] = Session(viewer)
        weakref.finalize(viewer, _SESSIONS.pop, id(viewer), None)
    return session


class Session:
    """The state of SAM tune on one viewer. ``model`` is the model in use (None: not loaded yet); ``base_model`` the
    one a fine-tune starts from (the last fine-tune's base while its adapted model is in use, so that an adapter
    always applies to a model that can be loaded again); ``result`` the last successful fine-tune."""

    def __init__(self, viewer: ViewerModel) -> None:
        self._viewer = weakref.ref(viewer)
        self.events = EmitterGroup(source=self, image=None, model=None, result=None)
        self.image: Image | None = None
        self.labels: Labels | None = None
        self.model: SamModel | None = None
        self.result: FineTuneResult | None = None
        self.cache_root: str | Path | bool | None = None  # the embedding cache (None: the user cache folder)
        self._base: SamModel | None = None
        self._segmenter: Segmenter | None = None
        self._segmenter_for: tuple | None = None

    @property
    def viewer(self) -> ViewerModel | None:
        return self._viewer()

    @property
    def base_model(self) -> SamModel | None:
        if self.result is not None and self.model is self.result.model:
            return self._base
        return self.model

    @property
    def result_base(self) -> SamModel | None:
        """The model the last fine-tune started from (its adapter applies to it), or None before one."""
        return self._base if self.result is not None else None

    def set_image(self, image: Image | None, labels: Labels | None = None) -> None:
        """Work on ``image`` (its training ``labels``: given, else kept when the image stays the same)."""
        if image is not None:
            layers.spatial_shape(image)  # refuses layouts SAM tune cannot segment
        changed = image is not self.image
        self.labels = labels if labels is not None or changed else self.labels
        self.image = image
        if changed:
            self.events.image(value=image)

    def use_model(self, model: SamModel) -> None:
        """Use ``model`` from now on (a later fine-tune starts from it)."""
        if model is not self.model:
            self.model, self._segmenter = model, None
            self.events.model(value=model)

    def forget_model(self) -> None:
        """No model in use (another one is chosen and not loaded yet): frees the old one's memory now."""
        self.model, self._segmenter = None, None
        self.events.model(value=None)

    def use_result(self, result: FineTuneResult, base: SamModel) -> None:
        """Use the adapted model of ``result`` from now on; the next fine-tune starts from ``base`` again."""
        self.result, self._base = result, base
        self.use_model(result.model)
        self.events.result(value=result)

    def segmenter(self, image: Image) -> Segmenter | None:
        """The segmenter of ``image`` with the model in use, when one was made (its planes may not be encoded)."""
        key = (id(self.model), id(image), id(image.data))
        return self._segmenter if self.model is not None and self._segmenter_for == key else None

    def keep_segmenter(self, segmenter: Segmenter, image: Image) -> None:
        """Remember ``segmenter`` (of ``image``, with its model, which becomes the model in use)."""
        self.use_model(segmenter.model)
        self._segmenter, self._segmenter_for = segmenter, (id(segmenter.model), id(image), id(image.data))

    def ready_segmenter(self, plane: int | None) -> Segmenter:
        """The segmenter of the image and the model in use, with ``plane`` encoded now (None: none of a stack)."""
        image, model = self.require_image(), self.model
        if model is None:
            raise LayerError("no model loaded yet: choose one and click Encode in 'Segment with prompts'")
        segmenter = self.segmenter(image)
        if segmenter is None:
            segmenter = Segmenter(model, cache_root=self.cache_root)
            segmenter.set_image(layers.image_data(image), rgb=image.rgb)
            self.keep_segmenter(segmenter, image)
        if plane is not None or not segmenter.store.volume.is_stack:
            drive(segmenter.encode([plane or 0]))
        return segmenter

    def require_image(self) -> Image:
        if self.image is None:
            raise LayerError("no image: call open_sample(...) or use_image(...) first")
        return self.image

    def layer(self, name: str, kind: type[L], make: Callable[[Image, str], L], image: Image, replace: bool = True) -> L:
        """Layer ``name`` for ``image``: made when missing; replaced (without ``replace``: refused with a
        ``LayerError``) when it belongs to an image of another shape."""
        viewer = self.viewer
        old = viewer.layers[name] if name in viewer.layers else None
        if old is not None and layers.fits(old, kind, image):
            return old
        if old is not None:
            if not replace:
                layers.check_fits(old, kind, image)
            viewer.layers.remove(old)
        return viewer.add_layer(make(image, name))

    def prompt_layers(self, image: Image) -> tuple[Points, Shapes]:
        """The 'prompts' (points) and 'boxes' layers of ``image``."""
        return self.layer(POINTS, Points, layers.prompt_points, image), self.layer(
            BOXES, Shapes, layers.prompt_boxes, image
        )

    def preview_layer(self, image: Image) -> Labels:
        return self.layer(PREVIEW, Labels, partial(layers.labels_like, dtype=np.uint16, opacity=0.6), image)

    def segmentation_layer(self, image: Image) -> Labels:
        """'segmentation' for ``image``; a 'segmentation' of another shape is refused, never replaced."""
        return self.layer(SEGMENTATION, Labels, layers.labels_like, image, replace=False)

    def current_plane(self, image: Image) -> int | None:
        return layers.current_plane(image, self.viewer.dims.point)

    def current_prompts(self, image: Image) -> tuple[list[ObjectPrompt], int | None]:
        """The objects prompted on the current slice of ``image`` and that slice (None for a 2D image)."""
        plane = self.current_plane(image)
        return layers.read_prompts(*self.prompt_layers(image), plane), plane

    def current_object(self) -> tuple[Segmenter, list[ObjectPrompt], int | None] | None:
        """The segmenter of the image, the objects prompted on the current slice and that slice; None when the
        slice is not encoded yet. Raises ``LayerError`` for unusable layers."""
        if self.image is None:
            raise LayerError("open 'Segment with prompts' (Plugins > SAM tune) and choose the image first")
        prompts, plane = self.current_prompts(self.image)
        segmenter = self.segmenter(self.image)
        if segmenter is None or not segmenter.is_encoded(plane or 0):
            return None
        return segmenter, prompts, plane

    def clear_prompts(self, image: Image, plane: int | None) -> None:
        """Remove every prompt and empty the preview (of ``plane`` of a stack; None: all of it)."""
        layers.clear_prompts(*self.prompt_layers(image))
        if PREVIEW in self.viewer.layers:
            layers.show_preview(self.viewer.layers[PREVIEW], None, plane)
