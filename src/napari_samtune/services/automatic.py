"""Prompt-free segmentation of a whole image (every plane of a stack) as a job.

A model with learned prompts (BLO prompt learning, or an adapter made by it) labels its classes; any other model
labels every object it finds from a grid of clicks (``core.automatic.segment_without_prompts``).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from pathlib import Path

import numpy as np

from ..core.automatic import InstanceSettings, segment_without_prompts
from ..core.models.registry import SamModel
from ..core.segmenter import Segmenter


def describe_prompt_free(model: SamModel) -> str:
    """What a prompt-free segmentation with ``model`` gives, for buttons and messages."""
    if model.prompt_embeddings is not None:
        return "class labels from the learned prompts"
    return "every object found from a grid of clicks"


def automatic_job(
    model: SamModel,
    image: np.ndarray,
    rgb: bool,
    *,
    cache_root: str | Path | bool | None = None,
    settings: InstanceSettings | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> Generator[dict, None, np.ndarray | None]:
    """Encode every plane, then segment it without prompts; yields progress dicts for ``workers.run_job``.

    Returns int32 labels of the image's spatial shape (``(H, W)`` or ``(Z, H, W)``): class values with learned
    prompts, object ids otherwise; None when ``should_stop`` ended it.
    """
    segmenter = Segmenter(model, cache_root=cache_root)
    segmenter.set_image(image, rgb=rgb)
    yield {"stage": "encoding"}
    yield from segmenter.encode(should_stop=should_stop)
    yield {"stage": f"segmenting without prompts: {describe_prompt_free(model)}"}
    return (yield from segment_without_prompts(segmenter, settings, should_stop))
