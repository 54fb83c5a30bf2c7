"""Prompt-free segmentation: with a model's learned prompts (from BLO prompt learning), or of every object.

Learned prompts: each class has a few learned prompt tokens. On every tile the decoder turns each class's tokens into
one logit map (its single-mask output); the maps are brought to the plane's own resolution the way the predictor does
it, tiles are blended where they overlap, and the classes compete through a softmax against a fixed background logit
of 0.

Every object (``segment_instances``, any model): SAM's automatic mask generation in short. A grid of single clicks
covers the plane; each click's mask is kept when its predicted IoU and stability are high enough and no better mask
overlaps it too much; the kept masks become instance labels.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from .decoder import decode_tokens, dense_positional_encoding, embed_dense
from .embeddings import PlaneEmbedding
from .models.registry import SamModel
from .predictor import ObjectPrompt, Predictor
from .segmenter import Segmenter

_CLICKS_PER_CALL = 32  # bounds the (N, H, W) float32 logits of one predictor call


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


@dataclass(frozen=True)
class InstanceSettings:
    """Automatic instance segmentation. points_per_side: clicks per side of one encoder tile (of the whole plane when
    it is not tiled); min_score: predicted IoU a mask needs; min_stability: IoU of the mask thresholded at logit +1
    and −1; nms_iou: a mask overlapping a better kept one by more is a duplicate; min_area: smallest object in
    pixels (after overlaps are resolved); max_area_fraction: masks covering more of their tile are background.

    ``min_score``/``min_stability`` None: the model's own calibrated values (``for_model``), since how high a model's
    predicted IoU and how sharp its logits are depends on the model (the bundled one is calibrated when exported)."""

    points_per_side: int = 16
    min_score: float | None = None
    min_stability: float | None = None
    nms_iou: float = 0.7
    min_area: int = 16
    max_area_fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.points_per_side < 1:
            raise ValueError(f"points_per_side must be ≥ 1, got {self.points_per_side}")
        if not 0 < self.nms_iou <= 1 or not 0 < self.max_area_fraction <= 1:
            raise ValueError("nms_iou and max_area_fraction must be in (0, 1]")

    def for_model(self, model: SamModel) -> InstanceSettings:
        """These settings with unset thresholds taken from ``model.metadata["automatic"]`` (written by the
        calibration of the bundled model), else SAM-like defaults (predicted IoU 0.7, stability 0.8)."""
        calibrated = model.metadata.get("automatic", {})
        return replace(
            self,
            min_score=self.min_score if self.min_score is not None else calibrated.get("min_score", DEFAULT_MIN_SCORE),
            min_stability=(
                self.min_stability
                if self.min_stability is not None
                else calibrated.get("min_stability", DEFAULT_MIN_STABILITY)
            ),
        )


DEFAULT_MIN_SCORE = 0.7
DEFAULT_MIN_STABILITY = 0.8


def click_grid(embedding: PlaneEmbedding, points_per_side: int) -> np.ndarray:
    """``(N, 2)`` float (row, col) clicks on a regular grid over the plane, centred in their cells, about
    ``points_per_side`` per side of one encoder tile (the whole plane when it is not tiled)."""
    return grid_points(embedding.plane_shape, embedding.input_size / embedding.scale / points_per_side)


def grid_points(shape: tuple[int, int], spacing: float) -> np.ndarray:
    """``(N, 2)`` (row, col) centres of a grid of cells about ``spacing`` pixels wide that tiles ``shape`` exactly."""

    def centres(side: int) -> np.ndarray:
        n = max(1, round(side / spacing))
        return (np.arange(n) + 0.5) * side / n

    rows, cols = (centres(side) for side in shape)
    return np.stack(np.meshgrid(rows, cols, indexing="ij"), -1).reshape(-1, 2)


def segment_instances(
    predictor: Predictor,
    embedding: PlaneEmbedding,
    settings: InstanceSettings | None = None,
    clicks: np.ndarray | None = None,
) -> np.ndarray:
    """Every object of one encoded plane without user prompts: ``(H, W)`` int32 labels, ids 1… by mask quality.

    Masks are painted largest first, so a smaller object inside a larger one stays visible. ``clicks`` ``(N, 2)``
    (row, col) replaces the plane's own click grid (block-wise work passes the whole image's grid).
    """
    s = (settings or InstanceSettings()).for_model(predictor.model)
    candidates = instance_candidates(predictor, embedding, s, clicks)
    return select_instances(candidates, embedding.plane_shape, s)


@dataclass(frozen=True)
class Candidate:
    """One click's mask with what the filters look at: predicted IoU, stability, and the area of its tile."""

    mask: _Mask
    score: float
    stability: float
    tile_area: int


def instance_candidates(
    predictor: Predictor, embedding: PlaneEmbedding, settings: InstanceSettings, clicks: np.ndarray | None = None
) -> list[Candidate]:
    """The masks of a grid of single clicks (``settings.points_per_side``, or ``clicks``) that pass the thresholds
    of ``settings`` (resolved with ``for_model``; pass 0 to keep every non-empty mask, e.g. to calibrate them)."""
    tile_area = (embedding.tiles[:, 2] - embedding.tiles[:, 0]) * (embedding.tiles[:, 3] - embedding.tiles[:, 1])
    clicks = click_grid(embedding, settings.points_per_side) if clicks is None else clicks
    candidates: list[Candidate] = []
    for start in range(0, len(clicks), _CLICKS_PER_CALL):
        prompts = [ObjectPrompt(points=c[None]) for c in clicks[start : start + _CLICKS_PER_CALL]]
        out = predictor.predict(embedding, prompts, return_logits=True)
        stability = (out.logits > 1).sum((1, 2)) / np.maximum((out.logits > -1).sum((1, 2)), 1)
        area = out.masks.sum((1, 2))
        ok = (out.scores >= settings.min_score) & (stability >= settings.min_stability) & (area >= settings.min_area)
        ok &= area <= settings.max_area_fraction * tile_area[out.tile_index]
        candidates += [
            Candidate(
                _Mask.of(out.masks[i], float(out.scores[i])),
                float(out.scores[i]),
                float(stability[i]),
                int(tile_area[out.tile_index[i]]),
            )
            for i in np.flatnonzero(ok)
        ]
    return candidates


def select_instances(candidates: list[Candidate], shape: tuple[int, int], settings: InstanceSettings) -> np.ndarray:
    """Labels from the candidates that pass ``settings``' thresholds (resolved), duplicates removed by NMS."""
    s = settings
    passing = [
        c
        for c in candidates
        if c.score >= s.min_score
        and c.stability >= s.min_stability
        and s.min_area <= c.mask.area <= s.max_area_fraction * c.tile_area
    ]
    kept: list[_Mask] = []
    for c in sorted(passing, key=lambda c: -c.score):
        if all(c.mask.iou(other) <= s.nms_iou for other in kept):
            kept.append(c.mask)
    labels = np.zeros(shape, np.int32)
    for index in sorted(range(len(kept)), key=lambda i: -kept[i].area):
        kept[index].paint(labels, index + 1)
    ids, areas = np.unique(labels[labels > 0], return_counts=True)
    labels[np.isin(labels, ids[areas < s.min_area])] = 0
    return renumber_labels(labels)


@dataclass(frozen=True)
class _Mask:
    """A mask kept as its bounding box ``(r0, c0, r1, c1)`` and the crop inside it."""

    box: tuple[int, int, int, int]
    crop: np.ndarray
    score: float

    @classmethod
    def of(cls, mask: np.ndarray, score: float) -> _Mask:
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        return cls((int(r0), int(c0), int(r1), int(c1)), mask[r0:r1, c0:c1].copy(), score)

    @property
    def area(self) -> int:
        return int(self.crop.sum())

    def iou(self, other: _Mask) -> float:
        r0, c0 = max(self.box[0], other.box[0]), max(self.box[1], other.box[1])
        r1, c1 = min(self.box[2], other.box[2]), min(self.box[3], other.box[3])
        if r0 >= r1 or c0 >= c1:
            return 0.0
        a = self.crop[r0 - self.box[0] : r1 - self.box[0], c0 - self.box[1] : c1 - self.box[1]]
        b = other.crop[r0 - other.box[0] : r1 - other.box[0], c0 - other.box[1] : c1 - other.box[1]]
        inter = int((a & b).sum())
        return inter / (self.area + other.area - inter)

    def paint(self, labels: np.ndarray, value: int) -> None:
        r0, c0, r1, c1 = self.box
        labels[r0:r1, c0:c1][self.crop] = value


def renumber_labels(labels: np.ndarray) -> np.ndarray:
    ids = np.unique(labels)
    ids = ids[ids > 0]
    lookup = np.zeros(int(labels.max(initial=0)) + 1, np.int32)
    lookup[ids] = np.arange(1, len(ids) + 1)
    return lookup[labels]


def segment_without_prompts(
    segmenter: Segmenter,
    settings: InstanceSettings | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> Generator[dict, None, np.ndarray | None]:
    """Label every plane of the segmenter's image without prompts; yields ``{"done", "total", "plane"}`` per plane.

    With learned prompts (``model.prompt_embeddings``) the labels are class values (``segment_automatic``), otherwise
    object ids (``segment_instances`` with ``settings``). Returns int32 labels of the image's spatial shape (``(H, W)``
    or ``(Z, H, W)``), or None when ``should_stop`` ended it.
    """
    model, store = segmenter.model, segmenter.store
    if store is None:
        raise ValueError("no image set: call segmenter.set_image(image) first")
    planes = []
    for index in range(segmenter.n_planes):
        if should_stop():
            return None
        embedding = store.plane(index)
        if model.prompt_embeddings is not None:
            planes.append(segment_automatic(model, embedding).labels)
        else:
            planes.append(segment_instances(segmenter.predictor, embedding, settings))
        yield {"done": index + 1, "total": segmenter.n_planes, "plane": index}
    labels = np.stack(planes).astype(np.int32)
    return labels if store.volume.is_stack else labels[0]
