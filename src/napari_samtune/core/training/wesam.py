"""Weakly supervised self-training (WeSAM; Zhang et al., CVPR 2024): adapt SAM with cheap prompts only.

Each training unit comes with weak prompts from ``TrainingData.weak``: boxes, positive points (each with the nearest
negative point of the unit, if any) and coarse masks (used through their bounding box); planes without weak labels
use the boxes of their labeled objects. A step decodes the same prompts three ways:

- the *teacher*: the model being trained, on the unit's own pixels (weak view), without gradients; its thresholded
  masks are the pseudo-labels;
- the *student*: the same model on a strong photometric view of the same pixels (brightness, contrast, gamma, noise,
  blur; the geometry is unchanged, so prompts and masks stay aligned), with gradients;
- the *anchor*: a frozen copy of the starting model on the weak view. It never changes, so its masks are computed
  once per unit and cached.

Losses: self-training (focal + Dice + IoU-head MSE of the student against the teacher's masks), anchor (Dice of the
student against the anchor's masks, which keeps the model near what it knew) and contrastive (InfoNCE between the
student's and the teacher's mask-pooled image embeddings: the same object in both views attracts, other objects
repel). By default only LoRA layers on the image encoder are trained, as in the paper.

Unlike the reference code, which passes the number of masks where the focal loss's α and the Dice smoothing go, α =
0.25, γ = 2 and the smoothing (1) are constants here (``losses.mask_losses``/``dice_loss`` defaults).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..decoder import decode, dense_positional_encoding, pack_prompts
from ..embeddings import Tiling, tile_grid
from ..image import Volume
from ..mask_geometry import mask_box
from ..models.registry import SamModel
from .data import Item, TrainingData, WeakLabels, instances_of
from .interactive import LabeledObjects, box_ious, module_state, trainable_parameters
from .loop import Level
from .lora import LoraSettings, lora_state
from .losses import dice_loss, mask_losses
from .units import Unit, build_units, unit_embeddings

_DECODE_CHUNK = 64  # prompts per anchor decoder call: bounds the (N, C, h, w) memory of a shared embedding


@dataclass(frozen=True)
class WeSAMSettings:
    """What is trained, the loss weights and the strong augmentation.

    strength: scale of the photometric augmentation (0: the student sees the teacher's view); anchor / contrastive:
    switch those losses off for the ablation; temperature: of the InfoNCE loss.
    """

    lora: LoraSettings | None = field(default_factory=lambda: LoraSettings(rank=4))
    train_decoder: bool = False
    lr: float = 3e-4
    weight_decay: float = 1e-4
    units_per_step: int = 2
    objects_per_unit: int = 8
    strength: float = 1.0
    anchor: bool = True
    anchor_weight: float = 1.0
    contrastive: bool = True
    contrastive_weight: float = 1.0
    temperature: float = 0.3
    loss_size: int = 128
    max_validation_objects: int = 48

    def __post_init__(self) -> None:
        if not (self.lora or self.train_decoder):
            raise ValueError("nothing to train: enable LoRA on the image encoder or the mask decoder")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.strength < 0 or self.anchor_weight < 0 or self.contrastive_weight < 0:
            raise ValueError("augmentation strength and loss weights must be ≥ 0")


@dataclass
class UnitPrompts:
    """Weak prompts of one unit in its encoder-input frame, one entry per object: points ``(P, 2)`` (x, y) with
    labels ``(P,)`` 1/0, or None; box ``(4,)`` (x0, y0, x1, y1), or None."""

    points: list[np.ndarray | None]
    labels: list[np.ndarray | None]
    boxes: list[np.ndarray | None]

    def __len__(self) -> int:
        return len(self.boxes)

    def take(self, index: np.ndarray) -> UnitPrompts:
        return UnitPrompts(
            [self.points[i] for i in index], [self.labels[i] for i in index], [self.boxes[i] for i in index]
        )

    @staticmethod
    def concat(parts: list[UnitPrompts]) -> UnitPrompts:
        return UnitPrompts(*([e for p in parts for e in getattr(p, name)] for name in ("points", "labels", "boxes")))


def weak_prompts(weak: WeakLabels, plane: int, is_stack: bool, tile: np.ndarray, scale: float) -> UnitPrompts:
    """The weak labels of ``plane`` that fall in ``tile`` (row0, col0, row1, col1), mapped into the tile's
    encoder-input frame (x = (col − col0) × scale, as the predictor does).

    An object belongs to the tile whose area holds its centre (box, point) and is clipped to it. Boxes and points
    without a plane index belong to plane 0; coarse masks are ``(K, *spatial)`` like the image.
    """
    r0, c0, r1, c1 = (float(v) for v in tile)

    def inside(r: float, c: float) -> bool:
        return r0 <= r < r1 and c0 <= c < c1

    def to_xy(r: float, c: float) -> np.ndarray:
        return np.array([(c - c0) * scale, (r - r0) * scale], np.float32)

    limit = np.array([(c1 - c0) * scale - 1, (r1 - r0) * scale - 1] * 2, np.float32)
    out = UnitPrompts([], [], [])
    boxes = []
    if weak.boxes is not None:
        boxes += list(np.asarray(weak.boxes, float)[_plane_mask(weak.box_planes, plane, len(weak.boxes))])
    if weak.masks is not None:
        for mask in weak.masks:
            mask = mask[plane] if is_stack else mask
            if mask.any():
                rows, cols = np.nonzero(mask)
                boxes.append(np.array([rows.min(), cols.min(), rows.max(), cols.max()], float))
    for br0, bc0, br1, bc1 in boxes:
        if inside((br0 + br1) / 2, (bc0 + bc1) / 2):
            box = np.concatenate([to_xy(br0, bc0), to_xy(br1, bc1)])
            out.points.append(None)
            out.labels.append(None)
            out.boxes.append(np.clip(box, 0, limit))
    if weak.points is not None:
        labels = np.ones(len(weak.points)) if weak.point_labels is None else np.asarray(weak.point_labels)
        points = np.asarray(weak.points, float)
        keep = np.array([inside(r, c) for r, c in points], bool) & _plane_mask(weak.point_planes, plane, len(points))
        xy = np.array([to_xy(r, c) for r, c in points[keep]], np.float32).reshape(-1, 2)
        positive, negative = xy[labels[keep] > 0], xy[labels[keep] <= 0]
        for p in positive:
            if len(negative):
                # The nearest negative click says where this object ends.
                n = negative[np.argmin(((negative - p) ** 2).sum(1))]
                out.points.append(np.stack([p, n]))
                out.labels.append(np.array([1, 0], np.float32))
            else:
                out.points.append(p[None])
                out.labels.append(np.ones(1, np.float32))
            out.boxes.append(None)
    return out


def _plane_mask(planes: np.ndarray | None, plane: int, n: int) -> np.ndarray:
    return np.full(n, plane == 0) if planes is None else np.asarray(planes) == plane


def _weak_planes(weak: WeakLabels, volume: Volume) -> set[int]:
    """The planes that hold any weak label."""
    planes: set[int] = set()
    for values, index in ((weak.boxes, weak.box_planes), (weak.points, weak.point_planes)):
        if values is not None and len(values):
            planes |= {0} if index is None else {int(z) for z in index}
    if weak.masks is not None:
        masks = np.asarray(weak.masks)
        planes |= {int(z) for z in np.nonzero(masks.any(axis=(0, 2, 3)))[0]} if volume.is_stack else {0}
    return planes


def label_boxes(labels: np.ndarray, task: str) -> UnitPrompts:
    """Weak prompts derived from full labels ``(S, S)``: the tight box of each object."""
    instances, ids = instances_of(labels, task)
    boxes = [mask_box(instances == i) for i in ids]
    return UnitPrompts([None] * len(boxes), [None] * len(boxes), boxes)


def strong_view(pixels: torch.Tensor, rng: np.random.Generator, strength: float = 1.0) -> torch.Tensor:
    """A random photometric augmentation of ``(B, 3, h, w)`` pixels in [0, 255], the same geometry: brightness,
    contrast, gamma, Gaussian noise and Gaussian blur, each scaled by ``strength`` (0 returns the pixels)."""
    if strength == 0:
        return pixels
    x = pixels.float() / 255
    mean = x.mean((-3, -2, -1), keepdim=True)
    contrast = 1 + rng.uniform(-0.4, 0.4) * strength
    x = (x - mean) * contrast + mean + rng.uniform(-0.15, 0.15) * strength
    x = x.clamp(0, 1) ** float(np.exp(rng.uniform(-0.4, 0.4) * strength))
    sigma = rng.uniform(0, 1.5) * strength
    if sigma > 0.3:
        x = _blur(x, sigma)
    generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
    noise = torch.randn(x.shape, generator=generator) * rng.uniform(0, 0.05) * strength
    return ((x + noise.to(x.device)).clamp(0, 1) * 255).to(pixels.dtype)


def _resize(logits: torch.Tensor, size: int) -> torch.Tensor:
    """``(N, 1, h, w)`` logits → ``(N, 1, size, size)`` float32 (the loss resolution)."""
    return F.interpolate(logits.float(), size=(size, size), mode="bilinear", align_corners=False)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(B, C, h, w)`` (edges replicated, so any tile size works)."""
    radius, channels = int(np.ceil(3 * sigma)), x.shape[1]
    kernel = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device) / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = F.pad(x, (radius,) * 4, mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)


def contrastive_loss(
    student: torch.Tensor, teacher: torch.Tensor, masks: torch.Tensor, temperature: float
) -> torch.Tensor:
    """InfoNCE between mask-pooled embeddings of N objects.

    student, teacher: ``(N, C, h, w)`` image embeddings (one per object); masks ``(N, 1, H, W)`` in [0, 1], resized to
    h × w by area. Object i's pooled student feature must pick its own teacher feature among all N (cosine
    similarity / ``temperature``). Objects whose mask misses the grid are left out; fewer than two objects give 0.
    """
    weights = F.adaptive_avg_pool2d(masks.to(student.dtype), student.shape[-2:])
    area = weights.sum((-2, -1))
    keep = area[:, 0] > 1e-6
    if keep.sum() < 2:
        return student.new_zeros(())
    pooled = [F.normalize(((e * weights).sum((-2, -1)) / area)[keep], dim=1) for e in (student, teacher)]
    logits = pooled[0] @ pooled[1].T / temperature
    return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))


class WeakSelfTraining:
    """The WeSAM method object for the training loop. ``model`` is trained in place: pass a copy."""

    name = "wesam"

    def __init__(
        self,
        model: SamModel,
        data: TrainingData,
        settings: WeSAMSettings | None = None,
        cache_root: str | Path | bool | None = None,
    ) -> None:
        self.model, self.data = model, data
        self.settings = s = settings or WeSAMSettings()
        # Copied before LoRA goes into the model: the anchor is the starting model, frozen for good.
        self.anchor = model.copy() if s.anchor else None
        if self.anchor is not None:
            self.anchor.sam.requires_grad_(False)
            self.anchor.sam.eval()
        self.params = trainable_parameters(model, s.train_decoder, False, s.lora)
        self.loss_size = min(s.loss_size, model.img_size)
        self.units, self.prompts = self._training_units(cache_root)
        if not self.units:
            raise ValueError("no weak prompt and no labeled object to train on: add boxes, points or labels")
        self.val_units = build_units(model, data, data.validation, with_embeddings=False, cache_root=cache_root)
        self.val_objects = [LabeledObjects(*instances_of(u.labels, data.task)) for u in self.val_units]
        with torch.no_grad():
            self.image_pe = dense_positional_encoding(model.sam)
        self._anchor_masks: dict[int, torch.Tensor] = {}

    def _training_units(self, cache_root: str | Path | bool | None) -> tuple[list[Unit], list[UnitPrompts]]:
        """Units of the training planes and of every other plane with weak labels (validation planes excluded),
        with their prompts: weak labels where the plane has any, else the boxes of its labeled objects."""
        data = self.data
        items = list(data.train)
        taken = {(it.image, it.plane) for it in [*data.train, *data.validation]}
        weak_planes = {i: _weak_planes(w, data.volumes[i]) for i, w in data.weak.items()}
        for image, planes in weak_planes.items():
            shape = data.volumes[image].plane_shape
            items += [Item(image, z, np.zeros(shape, np.int32)) for z in sorted(planes) if (image, z) not in taken]
        units = build_units(self.model, data, items, with_embeddings=False, keep_empty=True, cache_root=cache_root)
        prompts = []
        for unit in units:
            image, plane = unit.item.image, unit.item.plane
            if plane in weak_planes.get(image, ()):
                volume = data.volumes[image]
                tiles, scale = tile_grid(volume.plane_shape, self.model.img_size, Tiling())
                prompts.append(weak_prompts(data.weak[image], plane, volume.is_stack, tiles[unit.tile], scale))
            else:
                prompts.append(label_boxes(unit.labels, data.task))
        keep = [i for i, p in enumerate(prompts) if len(p)]
        return [units[i] for i in keep], [prompts[i] for i in keep]

    def levels(self) -> list[Level]:
        return [Level("model", self.params, self._backward, self.settings.lr, self.settings.weight_decay)]

    def _backward(self, step: int, rng: np.random.Generator) -> dict[str, float]:
        s, sam, device, size = self.settings, self.model.sam, self.model.device, self.loss_size
        picks = rng.choice(len(self.units), size=min(s.units_per_step, len(self.units)), replace=False)
        units = [self.units[i] for i in picks]
        strong = [replace(u, inputs=strong_view(u.inputs, rng, s.strength)) for u in units]
        chosen = [
            rng.choice(len(self.prompts[i]), size=min(s.objects_per_unit, len(self.prompts[i])), replace=False)
            for i in picks
        ]
        index = torch.as_tensor(np.repeat(np.arange(len(units)), [len(c) for c in chosen]), device=device)
        prompts = UnitPrompts.concat([self.prompts[i].take(c) for i, c in zip(picks, chosen)])
        coords, labels = pack_prompts(prompts.points, prompts.labels, prompts.boxes, device)
        valid = torch.from_numpy(np.stack([u.valid for u in units])).float()[:, None].to(device)
        valid = F.adaptive_avg_pool2d(valid, size)[index]
        sam.eval()
        with torch.no_grad():
            teacher = unit_embeddings(self.model, units)[index]
            teacher_logits, _ = decode(sam, teacher, self.image_pe, coords, labels)
            pseudo = (_resize(teacher_logits[:, :1], size) > 0).float()
        sam.train()
        student = unit_embeddings(self.model, strong)[index]
        # The single-mask output for every prompt, as the reference does: boxes and point sets are unambiguous.
        logits, iou = decode(sam, student, self.image_pe, coords, labels)
        out = mask_losses(logits[:, :1], iou[:, :1], pseudo, valid)
        total = out["total"]
        parts = {key: float(out[key]) for key in ("focal", "dice", "iou_mse")}
        if s.anchor:
            anchor = torch.cat([self._anchor(i)[c] for i, c in zip(picks, chosen)]).float()[:, None].to(device)
            anchor_loss = dice_loss(_resize(logits[:, :1], size), anchor, valid).mean()
            total = total + s.anchor_weight * anchor_loss
            parts["anchor"] = float(anchor_loss.detach())
        if s.contrastive:
            contrast = contrastive_loss(student, teacher, pseudo * valid, s.temperature)
            total = total + s.contrastive_weight * contrast
            parts["contrastive"] = float(contrast.detach())
        total.backward()
        sam.eval()
        parts["loss"] = float(total.detach())
        return parts

    @torch.no_grad()
    def _anchor(self, index: int) -> torch.Tensor:
        """The frozen anchor's masks ``(K, L, L)`` bool (CPU) for all K prompts of unit ``index``, cached."""
        if index not in self._anchor_masks:
            anchor, prompts, size = self.anchor, self.prompts[index], self.loss_size
            embedding = unit_embeddings(anchor, [self.units[index]])
            pe = dense_positional_encoding(anchor.sam)
            masks = []
            for start in range(0, len(prompts), _DECODE_CHUNK):
                part = prompts.take(np.arange(start, min(start + _DECODE_CHUNK, len(prompts))))
                coords, labels = pack_prompts(part.points, part.labels, part.boxes, anchor.device)
                logits, _ = decode(anchor.sam, embedding, pe, coords, labels)
                masks.append((_resize(logits[:, :1], size)[:, 0] > 0).cpu())
            self._anchor_masks[index] = torch.cat(masks)
        return self._anchor_masks[index]

    def adapter_parts(self) -> dict:
        """What this method trained, for the adapter file."""
        s, sam = self.settings, self.model.sam
        modules = {"mask_decoder": module_state(sam.mask_decoder)} if s.train_decoder else {}
        lora = {"settings": s.lora.to_dict(), "state": lora_state(sam)} if s.lora is not None else None
        return {"modules": modules, "lora": lora, "prompt_embeddings": None}

    def validate(self) -> float:
        """Mean IoU from each validation object's tight box (true labels)."""
        return float(
            np.mean(box_ious(self.model, self.val_units, self.val_objects, self.settings.max_validation_objects))
        )
