"""The prompt widget's jobs: get a segmenter ready (model loaded, planes encoded), and follow objects through a stack.

Jobs are generators for ``workers.run_job``: they yield progress dicts and return their result.
"""

from __future__ import annotations

from collections.abc import Callable, Generator

import numpy as np

from ..core.models.registry import SamModel
from ..core.predictor import ObjectPrompt
from ..core.propagation import PropagationSettings, propagate
from ..core.segmenter import Segmenter
from .models import load_requested_model

ModelRequest = tuple[str, str | None, str | None]  # (model name, checkpoint path, adapter path)


def prepare_segmenter(
    model: SamModel | None,
    request: ModelRequest,
    segmenter: Segmenter | None,
    image: np.ndarray,
    rgb: bool,
    planes: list[int] | None,
) -> Generator[dict, None, Segmenter]:
    """Load the model (unless given) and set the image (unless ``segmenter`` is given), then encode ``planes``
    (None: all). Yields progress dicts; returns the ready ``Segmenter``."""
    if segmenter is None:
        if model is None:
            yield {"stage": f"loading model {request[0]}"}
            model = load_requested_model(*request)
        yield {"stage": "reading image"}
        segmenter = Segmenter(model)
        segmenter.set_image(image, rgb=rgb)
    yield {"stage": "encoding"}
    yield from segmenter.encode(planes)
    return segmenter


def ready(segmenter: Segmenter) -> Generator[dict, None, Segmenter]:
    """A job that returns ``segmenter`` as it is (already encoded where needed), for ``follow_objects``."""
    yield {"stage": "ready"}
    return segmenter


def follow_objects(
    prepare: Callable[[], Generator[dict, None, Segmenter]],
    prompts: list[ObjectPrompt],
    plane: int,
    should_stop: Callable[[], bool] = lambda: False,
    settings: PropagationSettings | None = None,
) -> Generator[dict, None, tuple[Segmenter, list[dict[int, np.ndarray]] | None]]:
    """Get the segmenter ready with ``prepare`` (a ``prepare_segmenter`` job encoding ``plane``), segment the
    ``prompts`` on ``plane``, then follow each object through the stack (``core.propagation.propagate``).

    Returns the segmenter and, per object, ``{plane: (H, W) bool mask}`` (None when ``should_stop`` ended it).
    """
    segmenter = yield from prepare()
    masks = segmenter.segment(prompts, plane).masks
    objects = []
    for i, mask in enumerate(masks):
        if mask.sum() < (settings or PropagationSettings()).min_area:
            continue  # nothing to follow: the object is (almost) empty on this slice already
        yield {"stage": f"propagating object {i + 1}/{len(masks)} through the stack"}
        found = yield from propagate(segmenter, mask, plane, settings, should_stop)
        if found is None:
            return segmenter, None
        objects.append(found)
    return segmenter, objects
