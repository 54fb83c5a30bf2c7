"""napari sample data: synthetic scenes from ``core.synthetic``, each an image layer with its ground-truth labels.

Fixed seeds, so every user (and every test) gets the same pictures; they are made in well under a second.
"""

from __future__ import annotations

import numpy as np
from napari.types import LayerDataTuple

from .core.synthetic import make_scene

_SIZE = 256
# Scenes ``default_rng([7, i])`` that happen to be dark-background fluorescence, so the planes look alike.
_STACK_SEEDS = (3, 31, 43, 48, 57, 58, 59, 64)


def _scene_layers(kind: str, seed: int, name: str) -> list[LayerDataTuple]:
    scene = make_scene(np.random.default_rng(seed), _SIZE, kind)
    return [
        (scene.image, {"name": name, "rgb": True}, "image"),
        (scene.labels, {"name": f"{name} labels", "opacity": 0.4}, "labels"),
    ]


def nuclei() -> list[LayerDataTuple]:
    """Fluorescent nuclei, many touching: (256, 256, 3) uint8 image and (256, 256) int32 labels."""
    return _scene_layers("nuclei", seed=5, name="nuclei")


def polyp() -> list[LayerDataTuple]:
    """Endoscopy-like colour frame with one polyp: (256, 256, 3) uint8 image and (256, 256) int32 labels."""
    return _scene_layers("lesion", seed=6, name="polyp")


def em_membranes() -> list[LayerDataTuple]:
    """EM-like tissue, cells separated by membranes: (256, 256, 3) uint8 image and (256, 256) int32 labels
    (cell interiors and organelles)."""
    return _scene_layers("membranes", seed=1, name="em membranes")


def nuclei_stack() -> list[LayerDataTuple]:
    """A grey (8, 256, 256) uint8 stack of nuclei scenes and its (8, 256, 256) int32 labels, ids unique in the stack.

    The planes are independent fluorescence scenes (``core.synthetic`` draws 2D scenes only): a stack to try
    slice-by-slice segmentation on, not a 3D-consistent volume.
    """
    scenes = [make_scene(np.random.default_rng([7, i]), _SIZE, "nuclei") for i in _STACK_SEEDS]
    image = np.stack([s.image.mean(axis=-1).round().astype(np.uint8) for s in scenes])
    offsets = np.cumsum([0] + [int(s.labels.max()) for s in scenes[:-1]])
    labels = np.stack([np.where(s.labels > 0, s.labels + o, 0) for s, o in zip(scenes, offsets)]).astype(np.int32)
    return [
        (image, {"name": "nuclei stack"}, "image"),
        (labels, {"name": "nuclei stack labels", "opacity": 0.4}, "labels"),
    ]
