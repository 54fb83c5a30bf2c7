"""Promptable prediction: points, boxes and masks in, masks at the plane's own resolution out.

Coordinates in this public API are (row, col) pixel positions, as in numpy and napari; boxes are
(row0, col0, row1, col1). Many objects are decoded in one batched call per tile. The predictor holds no global state:
it can live inside a dask or torch.distributed worker.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .decoder import (
    PreparedImage,
    decode,
    decode_prepared,
    dense_positional_encoding,
    pack_prompts,
    prepare_image,
)
from .embeddings import PlaneEmbedding
from .errors import SamtuneError
from .models.registry import SamModel


class PromptError(SamtuneError, ValueError):
    """A prompt that cannot be used; the message says which object and why."""


@dataclass(frozen=True)
class ObjectPrompt:
    """The prompts for one object.

    points: ``(K, 2)`` (row, col); labels: ``(K,)`` 1 = positive, 0 = negative (default all positive);
    box: ``(4,)`` (row0, col0, row1, col1); mask: ``(H, W)`` coarse mask or probability in [0, 1] at plane size.
    """

    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    box: np.ndarray | None = None
    mask: np.ndarray | None = None


@dataclass(frozen=True)
class Prediction:
    """masks ``(N, H, W)`` bool; scores ``(N,)`` predicted IoU; logits ``(N, H, W)`` float32 (only when asked);
    low_res_logits ``(N, 1, 4h, 4w)`` in the tile's input frame; tile_index ``(N,)``."""

    masks: np.ndarray
    scores: np.ndarray
    tile_index: np.ndarray
    low_res_logits: torch.Tensor
    logits: np.ndarray | None = None


class Predictor:
    """Turns prompts into masks on encoded planes, for one model.

    The prompt-independent part of decoding a tile (``decoder.prepare_image``) is kept for the most recently used
    tiles of the last plane (``max_prepared_tiles``; about 10 MB each for ViT-B), so that repeated clicks skip it.
    """

    max_prepared_tiles = 8
    # Objects per decoder call: SAM's decoder copies the image embedding once per object, so an unbounded batch
    # (thousands of clicks) needs gigabytes. Batches of this size give the same masks with bounded memory.
    max_objects_per_call = 64

    def __init__(self, model: SamModel) -> None:
        self.model = model
        self._pe: torch.Tensor | None = None
        self._prepared: OrderedDict[int, PreparedImage] = OrderedDict()
        self._prepared_for: weakref.ref | None = None

    @property
    def image_pe(self) -> torch.Tensor:
        # The positional encoding of the embedding grid never changes for a model: compute it once, not per click.
        if self._pe is None:
            with torch.inference_mode():
                self._pe = dense_positional_encoding(self.model.sam)
        return self._pe

    def _prepared_tile(self, embedding: PlaneEmbedding, tile: int) -> PreparedImage:
        # Keyed by the features tensor itself (weakly): another plane, or the same one read again, starts afresh.
        if self._prepared_for is None or self._prepared_for() is not embedding.features:
            self._prepared.clear()
            self._prepared_for = weakref.ref(embedding.features)
        if tile not in self._prepared:
            feats = embedding.features[tile : tile + 1].to(self.model.device)
            self._prepared[tile] = prepare_image(self.model.sam, feats, self.image_pe)
            if len(self._prepared) > self.max_prepared_tiles:
                self._prepared.popitem(last=False)
        self._prepared.move_to_end(tile)
        return self._prepared[tile]

    @torch.inference_mode()
    def predict(
        self,
        embedding: PlaneEmbedding,
        prompts: Sequence[ObjectPrompt],
        *,
        multimask: bool | None = None,
        output: int | None = None,
        return_logits: bool = False,
        overview: Callable[[], PlaneEmbedding] | None = None,
    ) -> Prediction:
        """Segment one object per prompt. ``multimask=None`` uses SAM's three candidate masks (best predicted IoU)
        for a lone positive click, where one click is ambiguous, and the single-mask output otherwise.
        ``output`` forces one mask token for every object (0: single-mask output, 1–3: the candidates).

        overview: on a tiled plane, gives the embedding of the whole plane resized to the model input (called only
        when needed). An object larger than a tile is cut at the tile's edge, so an object whose box leaves its tile
        or whose mask reaches an inner edge of its tile is decoded again on the overview (``tile_index`` -1)."""
        if len(prompts) == 0:
            raise PromptError("no prompts given: add at least one point or box")
        h, w = embedding.plane_shape
        checked = [_check_prompt(p, i, (h, w)) for i, p in enumerate(prompts)]
        tile_of = np.array([_choose_tile(p, embedding.tiles) for p in checked])
        n = len(checked)
        masks = np.zeros((n, h, w), dtype=bool)
        logits_full = np.zeros((n, h, w), dtype=np.float32) if return_logits else None
        scores = np.zeros(n, dtype=np.float32)
        grid = embedding.features.shape[-1] * 4
        low_res = torch.zeros(n, 1, grid, grid)
        # Padding tokens and a blank mask input change SAM's output, so only objects with the same prompt layout
        # share a decoder call: each object gets the mask it would get on its own.
        batches: dict[tuple, list[int]] = {}
        for i, p in enumerate(checked):
            batches.setdefault((tile_of[i], *_layout(p)), []).append(i)
        step = self.max_objects_per_call
        calls = [(key, ids[i : i + step]) for key, ids in batches.items() for i in range(0, len(ids), step)]
        for (t, _, has_mask), indices in calls:
            members = np.array(indices)
            r0, c0, r1, c1 = embedding.tiles[t]
            frame = _Frame(r0, c0, embedding.scale)
            objects = [checked[i] for i in members]
            coords, labels = pack_prompts(
                [frame.points(p.points) for p in objects],
                [p.labels for p in objects],
                [frame.box(p.box) for p in objects],
                device=self.model.device,
            )
            if has_mask:
                masks_in = [frame.mask_logits(p.mask, (r1, c1), embedding.input_size, grid) for p in objects]
                mask_in = torch.stack(masks_in).to(self.model.device)
                feats = embedding.features[t : t + 1].to(self.model.device)
                out, iou = decode(self.model.sam, feats, self.image_pe, coords, labels, mask_in)
            else:
                out, iou = decode_prepared(self.model.sam, self._prepared_tile(embedding, t), coords, labels)
            choice = (
                _choose_outputs(objects, iou, multimask)
                if output is None
                else torch.full_like(iou[:, 0], output).long()
            )
            rows = torch.arange(len(members))
            best = out[rows, choice][:, None].float().cpu()
            low_res[members] = best
            scores[members] = iou[rows, choice].float().cpu().numpy()
            # One interpolation of the chosen mask only: low-res grid → the padded input square in plane pixels.
            side = round(embedding.input_size / embedding.scale)
            full = F.interpolate(best, size=(side, side), mode="bilinear", align_corners=False)
            full = full[:, 0, : r1 - r0, : c1 - c0]
            masks[members, r0:r1, c0:c1] = (full > 0).numpy()
            if logits_full is not None:
                logits_full[members, r0:r1, c0:c1] = full.numpy()
        cut = [
            i for i in range(n) if overview is not None and _cut_by_tile(checked[i], masks[i], embedding, tile_of[i])
        ]
        if cut:
            whole = self.predict(
                overview(), [checked[i] for i in cut], multimask=multimask, output=output, return_logits=return_logits
            )
            masks[cut], scores[cut], tile_of[cut] = whole.masks, whole.scores, -1
            low_res[cut] = F.interpolate(whole.low_res_logits, size=(grid, grid), mode="bilinear", align_corners=False)
            if logits_full is not None:
                logits_full[cut] = whole.logits
        return Prediction(masks, scores, tile_of, low_res, logits_full)


@dataclass(frozen=True)
class _Frame:
    """Maps plane (row, col) coordinates into a tile's encoder-input (x, y) frame."""

    row0: int
    col0: int
    scale: float

    def points(self, points: np.ndarray | None) -> np.ndarray | None:
        if points is None:
            return None
        return np.stack([(points[:, 1] - self.col0) * self.scale, (points[:, 0] - self.row0) * self.scale], -1)

    def box(self, box: np.ndarray | None) -> np.ndarray | None:
        if box is None:
            return None
        r0, c0, r1, c1 = box
        s = self.scale
        return np.array([(c0 - self.col0) * s, (r0 - self.row0) * s, (c1 - self.col0) * s, (r1 - self.row0) * s])

    def mask_logits(self, mask: np.ndarray, end: tuple[int, int], input_size: int, low: int) -> torch.Tensor:
        """A plane-sized mask/probability → ``(1, low, low)`` logits in this tile's padded input frame, where
        ``low`` is the decoder's low-resolution side (4x the embedding grid)."""
        crop = torch.from_numpy(np.asarray(mask[self.row0 : end[0], self.col0 : end[1]], np.float32))[None, None]
        factor = self.scale * low / input_size
        h, w = round(crop.shape[-2] * factor), round(crop.shape[-1] * factor)
        small = F.interpolate(crop, size=(max(h, 1), max(w, 1)), mode="area")
        small = F.pad(small, (0, low - small.shape[-1], 0, low - small.shape[-2]))[0]
        p = small.clamp(1e-3, 1 - 1e-3)
        return torch.log(p / (1 - p))


def _check_prompt(prompt: ObjectPrompt, index: int, shape: tuple[int, int]) -> ObjectPrompt:
    h, w = shape
    points = labels = box = mask = None
    if prompt.points is not None and len(prompt.points):
        points = np.asarray(prompt.points, dtype=np.float64).reshape(-1, 2)
        if not np.isfinite(points).all():
            raise PromptError(f"object {index}: a point coordinate is NaN or infinite")
        # Pixel i spans i - 0.5 .. i + 0.5 (napari's convention): a click on the outer half of an edge pixel is inside.
        outside = ((points < -0.5) | (points > np.array([h, w]) - 0.5)).any(axis=1)
        if outside.any():
            raise PromptError(
                f"object {index}: point {tuple(points[outside][0].round(1).tolist())} (row, col) is outside the "
                f"image of shape {(h, w)}"
            )
        points = np.clip(points, 0, [h - 1, w - 1])
        labels = np.ones(len(points)) if prompt.labels is None else np.asarray(prompt.labels, np.float64).ravel()
        if labels.shape != (len(points),) or not np.isin(labels, (0, 1)).all():
            raise PromptError(f"object {index}: point labels must be one 1 (positive) or 0 (negative) per point")
    if prompt.box is not None:
        box = np.asarray(prompt.box, dtype=np.float64).ravel()
        if box.shape != (4,) or not np.isfinite(box).all():
            raise PromptError(f"object {index}: a box needs 4 finite numbers (row0, col0, row1, col1)")
        if box[2] < box[0] or box[3] < box[1]:
            raise PromptError(f"object {index}: box {tuple(box.tolist())} has row1 < row0 or col1 < col0")
        box = np.clip(box, 0, [h - 1, w - 1, h - 1, w - 1])
    if prompt.mask is not None:
        mask = np.asarray(prompt.mask)
        if mask.shape != (h, w):
            raise PromptError(f"object {index}: mask prompt has shape {mask.shape} but the image plane has {(h, w)}")
    if points is None and box is None and mask is None:
        raise PromptError(f"object {index} has no prompt: give at least one point, a box or a mask")
    if points is not None and box is None and mask is None and not (labels == 1).any():
        raise PromptError(f"object {index} has only negative points: add a positive point or a box")
    return ObjectPrompt(points, labels, box, mask)


def _cut_by_tile(prompt: ObjectPrompt, mask: np.ndarray, embedding: PlaneEmbedding, tile: int, band: int = 2) -> bool:
    """Whether an object decoded in ``tile`` may be cut by it: its box leaves the tile, or its mask touches a tile
    edge inside the plane (within ``band`` pixels). Never on an untiled plane."""
    if len(embedding.tiles) == 1:
        return False
    r0, c0, r1, c1 = embedding.tiles[tile]
    h, w = embedding.plane_shape
    if prompt.box is not None:
        b = prompt.box
        if b[0] < r0 or b[1] < c0 or b[2] > r1 - 1 or b[3] > c1 - 1:
            return True
    inner = mask[r0:r1, c0:c1]
    edges = [
        (r0 > 0, inner[:band]),
        (r1 < h, inner[-band:]),
        (c0 > 0, inner[:, :band]),
        (c1 < w, inner[:, -band:]),
    ]
    return any(inside and part.any() for inside, part in edges)


def _layout(prompt: ObjectPrompt) -> tuple[int, bool]:
    """(number of sparse tokens, has a mask): objects decoded together must agree on both."""
    n_points = 0 if prompt.points is None else len(prompt.points)
    return n_points + (2 if prompt.box is not None else 1), prompt.mask is not None


def _choose_tile(prompt: ObjectPrompt, tiles: np.ndarray) -> int:
    """The tile that holds the object's prompts with the widest margin (objects are best seen away from edges)."""
    if len(tiles) == 1:
        return 0
    parts = []
    if prompt.points is not None:
        parts.append(prompt.points[prompt.labels == 1] if (prompt.labels == 1).any() else prompt.points)
    if prompt.box is not None:
        parts.append(prompt.box.reshape(2, 2))
    if not parts:
        ys, xs = np.nonzero(prompt.mask)
        parts.append(np.stack([ys, xs], -1) if len(ys) else np.zeros((1, 2)))
    pts = np.concatenate(parts)
    lo, hi = pts.min(0), pts.max(0)
    margin = np.minimum.reduce(
        [lo[0] - tiles[:, 0], lo[1] - tiles[:, 1], tiles[:, 2] - 1 - hi[0], tiles[:, 3] - 1 - hi[1]]
    )
    return int(np.argmax(margin))


def _choose_outputs(
    objects: list[ObjectPrompt], iou: torch.Tensor, multimask: bool | None, output: int | None = None
) -> torch.Tensor:
    if output is not None:
        return torch.full((len(objects),), output, dtype=torch.long, device=iou.device)
    if multimask is False:
        return torch.zeros(len(objects), dtype=torch.long)
    best_multi = iou[:, 1:].argmax(1) + 1
    if multimask is True:
        return best_multi
    lone_click = torch.tensor(
        [p.box is None and p.mask is None and p.points is not None and len(p.points) == 1 for p in objects]
    )
    return torch.where(lone_click.to(iou.device), best_multi, torch.zeros_like(best_multi))
