"""What one pretraining step trains on: the step's frames (scene pool and corpus, by source weight), their
augmentation, and one click or box per chosen object — a pure function of (pool, corpus, config, step)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..core.image import as_volume
from ..core.training.prompts import jittered_box, random_click
from .corpus import Corpus, cut_frame
from .scenes import ScenePool, augment

if TYPE_CHECKING:
    from .recipe import PretrainConfig


@dataclass
class Batch:
    """One step's training data: normalised images, and per object its image index, mask and first prompt."""

    images: torch.Tensor  # (B, 3, S, S) float in [0, 255]
    image_index: np.ndarray  # (N,)
    masks: np.ndarray  # (N, S, S) bool
    points: list[np.ndarray | None]
    point_labels: list[np.ndarray | None]
    boxes: list[np.ndarray | None]
    is_click: np.ndarray  # (N,) bool


def _frames(pool: ScenePool, config: PretrainConfig, rng: np.random.Generator, corpus: Corpus | None):
    """The step's ``images_per_step`` (image, labels) frames, before augmentation."""
    if config.source_weights is None:
        picks = rng.choice(len(pool.images), size=config.images_per_step, replace=False)
        return [(pool.images[p], pool.labels[p]) for p in picks]
    if corpus is None:
        raise ValueError("this recipe mixes in the pretraining corpus: pass corpus=load_corpus(...)")
    names = sorted(config.source_weights)
    weights = np.array([config.source_weights[n] for n in names], float)
    frames = []
    for source in rng.choice(names, size=config.images_per_step, p=weights / weights.sum()):
        if source == "synthetic":
            p = int(rng.integers(len(pool.images)))
            frames.append((pool.images[p], pool.labels[p]))
        else:
            items = corpus.train[source]
            item = items[int(rng.integers(len(items)))]
            size = pool.images.shape[1]
            frames.append(cut_frame(item, size, rng, config.downscale_probability))
    return frames


def sample_batch(pool: ScenePool, config: PretrainConfig, step: int, corpus: Corpus | None = None) -> Batch:
    """The batch of ``step``: a pure function of (pool, corpus, config, step).

    If no frame holds an object of ``min_object_area`` pixels (a downscaled view can lose them all), the scene-pool
    frame ``step % pool size`` is added, so that a long run never stops on an empty batch.
    """
    rng = np.random.default_rng([config.seed, step])
    images, index, masks, points, plabels, boxes, clicks = [], [], [], [], [], [], []

    def add(image: np.ndarray, labels: np.ndarray) -> None:
        image, labels = augment(image, labels, rng)
        b = len(images)
        images.append(as_volume(image, rgb=True).plane(0))
        ids, areas = np.unique(labels[labels > 0], return_counts=True)
        ids = ids[areas >= config.min_object_area]
        chosen = rng.choice(ids, size=min(len(ids), config.objects_per_image), replace=False)
        for obj in chosen:
            mask = labels == obj
            index.append(b)
            masks.append(mask)
            if rng.random() < config.click_fraction:
                points.append(np.array([random_click(mask, rng)], np.float32))
                plabels.append(np.ones(1, np.float32))
                boxes.append(None)
                clicks.append(True)
            else:
                points.append(None)
                plabels.append(None)
                boxes.append(jittered_box(mask, rng, config.box_jitter))
                clicks.append(False)

    for image, labels in _frames(pool, config, rng, corpus):
        add(image, labels)
    if not masks:
        add(pool.images[step % len(pool.images)], pool.labels[step % len(pool.images)])
    tensor = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return Batch(tensor, np.array(index), np.stack(masks), points, plabels, boxes, np.array(clicks))
