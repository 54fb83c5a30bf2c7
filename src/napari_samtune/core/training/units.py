"""Training units: the encoder-input frames (whole small planes, or tiles of large ones) that training sees.

A unit is exactly what the predictor sees at inference: the same tiling, resizing and normalisation, so a model
fine-tuned on units behaves the same when prompted. With a frozen image encoder a unit carries its cached embedding
(the fast path: a training step then costs decoder passes only); otherwise it carries the encoder input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..decoder import normalize_pixels
from ..embeddings import EmbeddingStore, Tiling, tile_inputs
from ..models.registry import SamModel
from .data import Item, TrainingData


@dataclass
class Unit:
    """labels: ``(S, S)`` int32 in the encoder-input frame (0 on padding); valid: ``(S, S)`` bool (not padding);
    embedding: ``(C, h, w)`` (fast path) or None; inputs: ``(1, 3, h', w')`` in [0, 255] (encoder path) or None."""

    item: Item
    tile: int
    labels: np.ndarray
    valid: np.ndarray
    embedding: torch.Tensor | None = None
    inputs: torch.Tensor | None = None


def build_units(
    model: SamModel,
    data: TrainingData,
    items: list[Item],
    *,
    with_embeddings: bool,
    keep_empty: bool = False,
    cache_root: str | Path | bool | None = None,
    tiling: Tiling | None = None,
) -> list[Unit]:
    """Cut ``items`` into units. ``with_embeddings``: read/compute cached embeddings (frozen encoder); otherwise
    keep the encoder inputs. Units without any label are dropped unless ``keep_empty``."""
    size = model.img_size
    stores: dict[int, EmbeddingStore] = {}
    units = []
    for item in items:
        volume = data.volumes[item.image]
        if item.image not in stores:
            stores[item.image] = EmbeddingStore(model, volume, tiling=tiling, cache_root=cache_root)
        store = stores[item.image]
        features = store.plane(item.plane).features if with_embeddings else None
        inputs = None if with_embeddings else tile_inputs(volume.plane(item.plane), store.tiles, store.scale)
        for t, (r0, c0, r1, c1) in enumerate(store.tiles):
            labels, valid = _to_input_frame(item.labels[r0:r1, c0:c1], store.scale, size)
            if not labels.any() and not keep_empty:
                continue
            units.append(
                Unit(
                    item=item,
                    tile=t,
                    labels=labels,
                    valid=valid,
                    embedding=features[t] if features is not None else None,
                    inputs=inputs[t] if inputs is not None else None,
                )
            )
    return units


def _to_input_frame(labels: np.ndarray, scale: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    h, w = labels.shape
    if scale != 1.0:
        new = (round(h * scale), round(w * scale))
        labels = F.interpolate(torch.from_numpy(labels.astype(np.float32))[None, None], size=new, mode="nearest")
        labels = labels[0, 0].numpy().astype(np.int32)
    out = np.zeros((size, size), np.int32)
    valid = np.zeros((size, size), bool)
    out[: labels.shape[0], : labels.shape[1]] = labels
    valid[: labels.shape[0], : labels.shape[1]] = True
    return out, valid


def unit_embeddings(model: SamModel, units: list[Unit]) -> torch.Tensor:
    """``(B, C, h, w)`` embeddings of ``units``: cached ones, or the encoder run now (with gradients if enabled)."""
    if units[0].embedding is not None:
        return torch.stack([u.embedding for u in units]).to(model.device)
    size = model.img_size
    batch = [
        F.pad(
            normalize_pixels(model.sam, u.inputs.to(model.device)),
            (0, size - u.inputs.shape[-1], 0, size - u.inputs.shape[-2]),
        )
        for u in units
    ]
    return model.sam.image_encoder(torch.cat(batch))
