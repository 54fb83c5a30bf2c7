"""Dock widget: show where the model is unsure, and walk the view through the most uncertain regions.

It works on the viewer's ``services.session.Session`` (the image chosen in 'Segment with prompts', its encoded slice,
the prompts on it): ``services.uncertainty`` computes the map and writes the 'uncertainty' layer, ``core.review``
finds the regions not visited yet.
"""

# No ``from __future__ import annotations``: napari injects the viewer only for a real ``Viewer`` annotation.

from collections.abc import Generator
from functools import partial

import numpy as np
from magicgui.widgets import ComboBox, Container, Label, PushButton
from napari.layers import Image
from napari.utils.notifications import show_error, show_info
from napari.viewer import Viewer

from ..core.errors import SamtuneError
from ..core.predictor import ObjectPrompt
from ..core.review import next_uncertain_region
from ..core.segmenter import Segmenter
from ..services.session import session_for
from ..services.uncertainty import PROMPT_FREE, PROMPT_SOURCES, UNCERTAINTY, go_to, show_uncertainty, uncertainty_map
from .workers import run_job

SOURCE_TIPS = (
    "prompt: jittered clicks and boxes disagree; tta: flipped/rotated views disagree (slower); multimask: SAM's "
    "three candidate masks disagree; entropy: the probability is near 0.5; prompt-free segmentation: the classes "
    "of a model from BLO prompt learning compete (no prompts needed)"
)


def uncertainty_job(
    segmenter: Segmenter, prompts: list[ObjectPrompt], plane: int | None, source: str
) -> Generator[dict, None, np.ndarray]:
    """The map as a job for ``workers.run_job``: ``(H, W)`` float32 in [0, 1]."""
    yield {"stage": f"uncertainty ({source})"}
    return uncertainty_map(segmenter, prompts, plane, source)


class UncertaintyWidget(Container):
    """Add or update the 'uncertainty' layer for the objects prompted on the current slice (or for the prompt-free
    segmentation of an adapted model), and move the view to the next most uncertain region."""

    def __init__(self, viewer: Viewer) -> None:
        self._viewer = viewer
        self._source = ComboBox(
            name="source", choices=[*PROMPT_SOURCES, PROMPT_FREE], value=PROMPT_SOURCES[0], tooltip=SOURCE_TIPS
        )
        self._show = PushButton(
            name="show_uncertainty",
            text="Show uncertainty",
            tooltip="Compute the map on the current slice of the image chosen in 'Segment with prompts'",
        )
        self._next = PushButton(
            name="next_region",
            text="Next uncertain region",
            tooltip="Centre the view on the most uncertain region not visited yet",
        )
        self._state = Label(name="state", value="no uncertainty shown yet")
        super().__init__(widgets=[self._source, self._show, self._next, self._state])
        self._session = session_for(viewer)
        self._visited: list[tuple[int, ...]] = []
        self._visited_on: Image | None = None  # the image the visited regions belong to
        self._busy = False
        self._show.clicked.connect(self._on_show)
        self._next.clicked.connect(self._on_next)

    def _on_show(self) -> None:
        if self._busy:
            return
        try:
            ready = self._session.current_object()
        except SamtuneError as error:
            show_error(str(error))
            return
        if ready is None:
            show_error("the current slice is not encoded yet: click Encode (or Segment) in 'Segment with prompts'")
            return
        image = self._session.image
        self._busy = True
        run_job(
            partial(uncertainty_job, *ready, self._source.value),
            description="SAM tune: uncertainty",
            on_yielded=lambda progress: None,
            on_returned=partial(self._show_map, image, ready[2]),
            on_error=self._failed,
            on_finished=partial(setattr, self, "_busy", False),
        )

    def _show_map(self, image: Image, plane: int | None, values: np.ndarray) -> None:
        layer = show_uncertainty(self._viewer, image, values, plane)
        if self._visited_on is not image:
            self._visited, self._visited_on = [], image
        where = "" if plane is None else f" on slice {plane}"
        self._state.value = f"{self._source.value}{where}: max {values.max():.2f}, mean {values.mean():.3f}"
        self._viewer.layers.selection.active = layer

    def _failed(self, error: Exception) -> None:
        if not isinstance(error, (SamtuneError, ValueError)):  # ValueError: e.g. a model without learned prompts
            raise error  # a bug: let napari show the traceback
        show_error(str(error))

    def _on_next(self) -> None:
        layer = self._viewer.layers[UNCERTAINTY] if UNCERTAINTY in self._viewer.layers else None
        if not isinstance(layer, Image):
            show_error("no 'uncertainty' layer: click 'Show uncertainty' first")
            return
        position = next_uncertain_region(layer.data, self._visited)
        if position is None:
            show_info("no uncertain region left that was not visited: recompute the uncertainty after correcting")
            return
        self._visited.append(position)
        go_to(self._viewer, layer, position)
        value = float(layer.data[position])
        self._state.value = f"region {len(self._visited)} at {position} (uncertainty {value:.2f})"
