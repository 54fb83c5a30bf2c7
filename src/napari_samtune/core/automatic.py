"""Prompt-free segmentation with a model's learned prompts (from BLO prompt learning).

Each class has a few learned prompt tokens. On every tile the decoder turns each class's tokens into one logit map
(its single-mask output); the maps are brought to the plane's own resolution the way the predictor does it, tiles are
blended where they overlap, and the classes compete through a softmax against a fixed background logit of 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .decoder import decode_tokens, dense_positional_encoding, embed_dense
from .embeddings import PlaneEmbedding
from .models.registry import SamModel


@dataclass(frozen=True)
class AutomaticResult:
    """probabilities: ``(K + 1, H, W)`` float32, index 0 background, index k the k-th of ``classes`` (sums to 1 per
    pixel); labels: ``(H, W)`` int32 of class values (0 background); classes: the K class values."""

    probabilities: np.ndarray
    labels: np.ndarray
    classes: tuple[int, ...]


def segment_automatic(model: SamModel, embedding: PlaneEmbedding) -> AutomaticResult:
    """Segment every class of ``model.classes`` in one encoded plane, without user prompts."""
    prompts = model.prompt_embeddings
    if prompts is None:
        raise ValueError(
            f"model '{model.name}' has no learned prompts: fine-tune it with BLO prompt learning first "
            "(or load an adapter made by it)"
        )
    classes = tuple(model.classes) or tuple(range(1, len(prompts) + 1))
    if len(classes) != len(prompts):
        raise ValueError(f"model '{model.name}' has {len(prompts)} learned prompts but {len(classes)} class values")
    return logits_to_result(class_logits(model, embedding, prompts), classes)


@torch.inference_mode()
def class_logits(model: SamModel, embedding: PlaneEmbedding, prompts: torch.Tensor) -> torch.Tensor:
    """``(K, H, W)`` float32 logit maps at plane resolution from ``(K, T, C)`` prompt tokens (CPU tensor).

    Overlapping tiles are averaged with a window that fades towards each tile's edges, where a tile sees the least
    context, so seams do not show.
    """
    sam = model.sam
    prompts = prompts.to(model.device, torch.float32)
    k = len(prompts)
    h, w = embedding.plane_shape
    total = torch.zeros(k, h, w)
    weight = torch.zeros(h, w)
    pe = dense_positional_encoding(sam)
    dense = embed_dense(sam, None, 1)
    side = round(embedding.input_size / embedding.scale)
    for t, (r0, c0, r1, c1) in enumerate(embedding.tiles):
        feats = embedding.features[t : t + 1].to(model.device)
        low, _ = decode_tokens(sam, feats, pe, prompts, dense)
        # One interpolation of the single-mask output: low-res grid → the padded input square in plane pixels.
        full = F.interpolate(low[:, :1].float().cpu(), size=(side, side), mode="bilinear", align_corners=False)
        window = _window(r1 - r0, c1 - c0)
        total[:, r0:r1, c0:c1] += full[:, 0, : r1 - r0, : c1 - c0] * window
        weight[r0:r1, c0:c1] += window
    return total / weight


def _window(h: int, w: int, ramp: int = 32) -> torch.Tensor:
    """``(h, w)`` weights rising linearly from the tile's edges to 1 at ``ramp`` pixels inside (never 0)."""

    def edge(n: int) -> torch.Tensor:
        i = torch.arange(n, dtype=torch.float32)
        return (torch.minimum(i + 1, n - i) / ramp).clamp(max=1.0)

    return edge(h)[:, None] * edge(w)[None, :]


def logits_to_result(logits: torch.Tensor, classes: tuple[int, ...]) -> AutomaticResult:
    """Probabilities and labels from ``(K, H, W)`` class logits: sigmoid for one class, otherwise a softmax over
    ``[0 (background), l_1 … l_K]`` (for K = 1 both are the same)."""
    logits = logits.float()
    if len(logits) == 1:
        fg = torch.sigmoid(logits)
        probabilities = torch.cat([1 - fg, fg])
    else:
        probabilities = torch.softmax(torch.cat([torch.zeros_like(logits[:1]), logits]), dim=0)
    values = np.array([0, *classes], np.int32)
    labels = values[probabilities.argmax(0).numpy()]
    return AutomaticResult(probabilities.numpy().astype(np.float32), labels, tuple(classes))
