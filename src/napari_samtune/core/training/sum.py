"""Uncertainty-aware fine-tuning (SUM; Liu et al., NeurIPS 2024): labeled and unlabeled images together.

Labeled images train exactly as in interactive fine-tuning (simulated prompts, corrective clicks). Unlabeled images get
pseudo-labels from the current model: a grid of clicks over each unit is decoded, confident and stable masks are kept
and overlapping ones suppressed (SAM's automatic mask generation, in short). Each pseudo-object gets a per-pixel
uncertainty U in [0, 1]; its focal + Dice loss is weighted per pixel by (1 − U), against the thresholded prediction
(``soft=False``) or the probability itself (``soft=True``), and its training click is drawn with probability ∝ (1 − U)
inside the object. Steps alternate: even steps a labeled batch, odd steps an unlabeled one. ``weighting=False`` drops
both uses of U: plain pseudo-labeling, the ablation baseline.

SUM's refinement module was never released. The default source ("refinement") stands in for it with
``core.uncertainty.RefinementHead``, trained once on the labeled units to map (pixels, the model's logit) to the true
mask, and U = |p_model − p_refined|: it marks where the user's labels say such masks tend to be wrong. The other
sources ("prompt": disagreement over jittered clicks, "multimask": over SAM's three candidates, "entropy") need no
labels but only measure the model's own doubt, which is low exactly where a confidently wrong model errs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..decoder import decode, pack_prompts
from ..embeddings import Tiling, tile_grid, tile_inputs
from ..image import Volume
from ..models.registry import SamModel
from ..uncertainty import RefinementHead, binary_entropy, disagreement, sigmoid, train_refinement
from .data import Item, TrainingData
from .interactive import InteractiveFineTuning, InteractiveSettings
from .loop import Level
from .losses import mask_losses
from .prompts import random_click
from .units import Unit, build_units, unit_embeddings

UNCERTAINTY_SOURCES = ("refinement", "prompt", "multimask", "entropy")
_DECODE_CHUNK = 64  # prompts per decoder call when labelling: bounds the (N, C, h, w) memory of a shared embedding
_MIN_AREA = 4  # pseudo-object pixels at the loss resolution
_MAX_AREA_FRACTION = 0.8  # larger masks are background, not objects


@dataclass(frozen=True)
class SUMSettings(InteractiveSettings):
    """Interactive fine-tuning's settings (for the labeled batches and what is trained) plus the unlabeled side.

    uncertainty: one of ``UNCERTAINTY_SOURCES``; soft: train on probabilities instead of thresholded masks;
    weighting: use (1 − U) for loss weights and click sampling (False: plain pseudo-labeling); unlabeled_weight:
    factor on the unlabeled loss; refresh_every: steps after which a unit's pseudo-labels are made again by the
    current model; grid_points: clicks per side of the labelling grid; pred_iou_threshold / stability_threshold /
    nms_threshold / max_pseudo_objects: which proposals become pseudo-objects (per unit); relative_quantile: the
    thresholds are lowered to this quantile of the unit's own proposals when the model's scores never reach them
    (a small model's IoU head can predict ≤ 0.5 everywhere; None: absolute thresholds only); uncertainty_samples:
    jittered clicks per object ("prompt"); refinement_steps / refinement_examples: training of the refinement head.
    """

    uncertainty: str = "refinement"
    soft: bool = False
    weighting: bool = True
    unlabeled_weight: float = 1.0
    refresh_every: int = 50
    grid_points: int = 16
    pred_iou_threshold: float = 0.7
    stability_threshold: float = 0.8
    nms_threshold: float = 0.7
    max_pseudo_objects: int = 32
    relative_quantile: float | None = 0.75
    uncertainty_samples: int = 4
    refinement_steps: int = 150
    refinement_examples: int = 32

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.uncertainty not in UNCERTAINTY_SOURCES:
            raise ValueError(f"uncertainty source must be one of {UNCERTAINTY_SOURCES}, got {self.uncertainty!r}")
        if self.refresh_every < 1:
            raise ValueError(f"refresh_every must be ≥ 1 step, got {self.refresh_every}")
        if self.unlabeled_weight < 0:
            raise ValueError(f"unlabeled_weight must be ≥ 0, got {self.unlabeled_weight}")
        if self.grid_points < 1 or self.max_pseudo_objects < 1:
            raise ValueError("grid_points and max_pseudo_objects must be ≥ 1")
        if self.relative_quantile is not None and not 0 <= self.relative_quantile < 1:
            raise ValueError(f"relative_quantile must be in [0, 1) or None, got {self.relative_quantile}")


@dataclass
class PseudoLabels:
    """The pseudo-objects of one unlabeled unit at the loss resolution L, made at training step ``step``.

    probability: ``(K, L, L)`` float32 in [0, 1], the model's prediction (0 on padding); uncertainty: ``(K, L, L)``
    float32 in [0, 1]; valid: ``(L, L)`` float32, the non-padding fraction of each pixel.
    """

    probability: np.ndarray
    uncertainty: np.ndarray
    valid: np.ndarray
    step: int


def uncertainty_weighted_losses(
    logits: torch.Tensor,
    iou_pred: torch.Tensor,
    target: torch.Tensor,
    uncertainty: torch.Tensor,
    valid: torch.Tensor,
    weighting: bool = True,
) -> dict[str, torch.Tensor]:
    """SUM's uncertainty-aware focal + Dice (+ IoU head) loss: ``mask_losses`` with pixel weights (1 − U) × valid.

    logits ``(N, M, h, w)``, iou_pred ``(N, M)``; target ``(N, 1, L, L)`` in [0, 1] (hard or soft pseudo-label);
    uncertainty, valid ``(N, 1, L, L)`` in [0, 1]. A pixel with U = 1 contributes nothing; ``weighting=False``
    (or U = 0 everywhere) is the plain loss on the valid pixels.
    """
    weight = valid * (1 - uncertainty) if weighting else valid
    return mask_losses(logits, iou_pred, target, weight)


def confident_click(
    mask: np.ndarray, uncertainty: np.ndarray | None, rng: np.random.Generator
) -> tuple[float, float] | None:
    """A pixel of ``mask`` ``(H, W)`` drawn with probability ∝ (1 − U) (uniformly when ``uncertainty`` is None),
    as (x, y) in the mask's pixels; None when no pixel of the mask has any weight."""
    weight = mask.astype(np.float64)
    if uncertainty is not None:
        weight = weight * np.clip(1.0 - uncertainty, 0.0, 1.0)
    total = weight.sum()
    if total <= 0:
        return None
    y, x = np.unravel_index(rng.choice(weight.size, p=(weight / total).ravel()), weight.shape)
    return float(x), float(y)


def grid_points(valid: np.ndarray, n: int) -> np.ndarray:
    """``(n², 2)`` float32 (x, y) clicks on an n × n grid over the valid (non-padding) part of a unit."""
    h, w = int(valid.any(1).sum()), int(valid.any(0).sum())
    xs = (np.arange(n) + 0.5) * w / n - 0.5
    ys = (np.arange(n) + 0.5) * h / n - 0.5
    return np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2).astype(np.float32)


def mask_proposals(
    logits: torch.Tensor,
    scores: torch.Tensor,
    valid: torch.Tensor,
    *,
    min_score: float,
    min_stability: float,
    nms_iou: float,
    max_objects: int,
    quantile: float | None = None,
) -> torch.Tensor:
    """Indices of the candidate masks to keep as objects, best predicted IoU first.

    logits ``(N, L, L)``, scores ``(N,)`` (predicted IoU), valid ``(L, L)`` bool. A mask is kept when its predicted
    IoU and stability (IoU of the masks thresholded at logit +1 and −1, as in SAM) pass the thresholds, its area is
    at least ``_MIN_AREA`` pixels and at most ``_MAX_AREA_FRACTION`` of the valid area, and no better kept mask
    overlaps it with IoU above ``nms_iou``. With ``quantile``, each threshold is at most that quantile of the values
    of the masks of a usable area (so the best proposals of a model whose scores never reach the thresholds pass).
    """
    masks = (logits > 0) & valid
    area = masks.sum((-2, -1))
    stability = ((logits > 1) & valid).sum((-2, -1)) / ((logits > -1) & valid).sum((-2, -1)).clamp_min(1)
    sized = (area >= _MIN_AREA) & (area <= _MAX_AREA_FRACTION * valid.sum())
    if quantile is not None and sized.any():
        min_score = min(min_score, float(torch.quantile(scores[sized].float(), quantile)))
        min_stability = min(min_stability, float(torch.quantile(stability[sized].float(), quantile)))
    ok = (scores >= min_score) & (stability >= min_stability) & sized
    order = torch.nonzero(ok)[:, 0]
    order = order[scores[order].argsort(descending=True)]
    flat = masks[order].flatten(1).float()
    inter = flat @ flat.T
    iou = inter / (area[order, None] + area[None, order] - inter).clamp_min(1)
    kept: list[int] = []
    for i in range(len(order)):
        if len(kept) == max_objects:
            break
        if not kept or iou[i, kept].max() <= nms_iou:
            kept.append(i)
    return order[kept]


class UncertaintyAwareFineTuning:
    """The SUM method object for the training loop. ``model`` is trained in place: pass a copy.

    The labeled side is an interactive fine-tuning (``self.labeled``: its units, labeled steps, validation by one
    click and adapter parts); this class adds the unlabeled steps, every other one.
    """

    name = "sum"

    def __init__(
        self,
        model: SamModel,
        data: TrainingData,
        settings: SUMSettings | None = None,
        cache_root: str | Path | bool | None = None,
    ) -> None:
        if not data.unlabeled:
            raise ValueError("uncertainty-aware fine-tuning needs unlabeled images: add some, or use 'interactive'")
        self.model, self.data, self.settings = model, data, settings or SUMSettings()
        self.labeled = InteractiveFineTuning(model, data, self.settings, cache_root)
        self.image_pe, self.loss_size = self.labeled.image_pe, self.labeled.loss_size
        self._labeled_backward = self.labeled.levels()[0].backward
        s = self.settings
        items = [
            Item(i, z, np.zeros(v.plane_shape, np.int32))
            for i, v in enumerate(data.unlabeled)
            for z in range(v.n_planes)
        ]
        self.unlabeled_units = build_units(
            model,
            replace(data, volumes=data.unlabeled),
            items,
            with_embeddings=s.lora is None,
            keep_empty=True,
            cache_root=cache_root,
        )
        self.pseudo: list[PseudoLabels | None] = [None] * len(self.unlabeled_units)
        self.refiner = self._train_refiner() if s.uncertainty == "refinement" else None

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return self.labeled.params

    def levels(self) -> list[Level]:
        return [Level("model", self.params, self._backward, self.settings.lr, self.settings.weight_decay)]

    def validate(self) -> float:
        return self.labeled.validate()

    def adapter_parts(self) -> dict:
        return self.labeled.adapter_parts()

    def _backward(self, step: int, rng: np.random.Generator) -> dict[str, float]:
        if step % 2 == 0:
            return self._labeled_backward(step, rng)
        return self._unlabeled_backward(step, rng)

    def _unlabeled_backward(self, step: int, rng: np.random.Generator) -> dict[str, float]:
        s, size = self.settings, self.model.img_size
        picks = rng.choice(len(self.unlabeled_units), min(s.units_per_step, len(self.unlabeled_units)), replace=False)
        units, index, points = [], [], []
        maps: tuple[list, list, list] = ([], [], [])  # probability, uncertainty, valid of each trained object
        for i in picks:
            pseudo = self.pseudo[i]
            if pseudo is None or step - pseudo.step >= s.refresh_every:
                pseudo = self.pseudo[i] = self.label_unlabeled(i, step)
            k = len(pseudo.probability)
            used = False
            for j in rng.choice(k, size=min(s.objects_per_unit, k), replace=False):
                prob, unc = pseudo.probability[j], pseudo.uncertainty[j]
                click = confident_click(prob > 0.5, unc if s.weighting else None, rng)
                if click is None:
                    continue
                scale = size / prob.shape[-1]  # loss-grid pixel → encoder-input pixel centre
                points.append(np.array([[(click[0] + 0.5) * scale - 0.5, (click[1] + 0.5) * scale - 0.5]], np.float32))
                index.append(len(units))
                for stack, value in zip(maps, (prob, unc, pseudo.valid)):
                    stack.append(value)
                used = True
            if used:
                units.append(self.unlabeled_units[i])
        if not units:
            # Nothing confident to learn from yet: spend the step on the labels instead.
            return {**self._labeled_backward(step, rng), "pseudo_objects": 0.0}
        device = self.model.device
        embeddings = unit_embeddings(self.model, units)[torch.as_tensor(index, device=device)]
        coords, labels = pack_prompts(points, [np.ones(1, np.float32)] * len(points), [None] * len(points), device)
        probability, uncertainty, valid = (torch.from_numpy(np.stack(a))[:, None].to(device) for a in maps)
        target = probability if s.soft else (probability > 0.5).float()
        self.model.sam.train()
        logits, iou = decode(self.model.sam, embeddings, self.image_pe, coords, labels)
        # One click: SAM's three candidates, the best one trained (as for labeled clicks).
        out = uncertainty_weighted_losses(logits[:, 1:], iou[:, 1:], target, uncertainty, valid, s.weighting)
        total = s.unlabeled_weight * out["total"]
        total.backward()
        self.model.sam.eval()
        inside = target > 0.5
        return {
            "loss": float(total.detach()),
            "pseudo_focal": float(out["focal"]),
            "pseudo_dice": float(out["dice"]),
            "pseudo_iou_mse": float(out["iou_mse"]),
            "pseudo_objects": float(len(points)),
            "pseudo_uncertainty": float(uncertainty[inside].mean()) if inside.any() else 0.0,
        }

    @torch.no_grad()
    def label_unlabeled(self, index: int, step: int = 0) -> PseudoLabels:
        """Pseudo-label unlabeled unit ``index`` with the current model: grid clicks → mask proposals → objects,
        each with its uncertainty map."""
        s, unit, size = self.settings, self.unlabeled_units[index], self.loss_size
        self.model.sam.eval()
        embedding = unit_embeddings(self.model, [unit])
        valid = F.adaptive_avg_pool2d(torch.from_numpy(unit.valid).float()[None, None], size)[0, 0]
        points = grid_points(unit.valid, s.grid_points)
        logits, iou = self._decode_clicks(embedding, points)
        keep = mask_proposals(
            logits.flatten(0, 1),
            iou.flatten(),
            valid > 0.5,
            min_score=s.pred_iou_threshold,
            min_stability=s.stability_threshold,
            nms_iou=s.nms_threshold,
            max_objects=s.max_pseudo_objects,
            quantile=s.relative_quantile,
        )
        if not len(keep):
            empty = np.zeros((0, size, size), np.float32)
            return PseudoLabels(empty, empty, valid.numpy(), step)
        point, candidate = keep.numpy() // 3, keep.numpy() % 3
        siblings = logits[point].numpy()
        uncertainty = self._uncertainty(index, embedding, points[point], siblings, candidate, step)
        probability = sigmoid(siblings[np.arange(len(keep)), candidate]) * valid.numpy()
        return PseudoLabels(probability, uncertainty.astype(np.float32), valid.numpy(), step)

    def _uncertainty(
        self,
        index: int,
        embedding: torch.Tensor,
        points: np.ndarray,
        siblings: np.ndarray,
        candidate: np.ndarray,
        step: int,
    ) -> np.ndarray:
        """``(K, L, L)`` uncertainty of K pseudo-objects of unlabeled unit ``index``: object k is candidate output
        ``candidate[k]`` of the click ``points[k]`` (x, y), whose three candidates' logits are ``siblings[k]``
        ``(3, L, L)``."""
        source = self.settings.uncertainty
        logits = siblings[np.arange(len(siblings)), candidate]
        probability = sigmoid(logits)
        if source == "entropy":
            return binary_entropy(probability)
        if source == "multimask":
            return np.stack([disagreement(sigmoid(p)) for p in siblings])
        if source == "prompt":
            n, side = self.settings.uncertainty_samples, self.model.img_size
            rng = np.random.default_rng([index, step])
            jittered = points[:, None] + rng.normal(0, 0.02 * side, (len(points), n, 2))
            out = self._decode_clicks(embedding, np.clip(jittered, 0, side - 1).reshape(-1, 2).astype(np.float32))[0]
            # (K·n, 3, L, L) → each object's own candidate output under its n jittered clicks: (K, n, L, L)
            out = np.swapaxes(out.numpy().reshape(len(points), n, *out.shape[1:]), 1, 2)
            out = out[np.arange(len(points)), candidate]
            return np.stack([disagreement(np.concatenate([p[None], sigmoid(j)])) for p, j in zip(probability, out)])
        pixels = self._pixels(self.data.unlabeled[self.unlabeled_units[index].item.image], self.unlabeled_units[index])
        return np.stack([np.abs(p - self.refiner.refine(pixels, lg)) for p, lg in zip(probability, logits)])

    def _decode_clicks(self, embedding: torch.Tensor, points: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """One positive click per row of ``points`` ``(P, 2)`` on a ``(1, C, h, w)`` embedding: SAM's three
        candidates as logits ``(P, 3, L, L)`` and predicted IoU ``(P, 3)``, float32 on the CPU."""
        logits, ious = [], []
        for start in range(0, len(points), _DECODE_CHUNK):
            chunk = points[start : start + _DECODE_CHUNK]
            coords, labels = pack_prompts(
                list(chunk[:, None]), [np.ones(1, np.float32)] * len(chunk), [None] * len(chunk), self.model.device
            )
            out, iou = decode(self.model.sam, embedding, self.image_pe, coords, labels)
            size = (self.loss_size, self.loss_size)
            logits.append(F.interpolate(out[:, 1:].float(), size=size, mode="bilinear", align_corners=False).cpu())
            ious.append(iou[:, 1:].float().cpu())
        return torch.cat(logits), torch.cat(ious)

    def _pixels(self, volume: Volume, unit: Unit) -> np.ndarray:
        """The unit's encoder-input pixels at the loss resolution: ``(L, L, 3)`` float32 in [0, 255]."""
        inputs = unit.inputs
        if inputs is None:
            tiles, scale = tile_grid(volume.plane_shape, self.model.img_size, Tiling())
            inputs = tile_inputs(volume.plane(unit.item.plane), tiles[unit.tile : unit.tile + 1], scale)[0]
        size = self.model.img_size
        padded = F.pad(inputs.float().cpu(), (0, size - inputs.shape[-1], 0, size - inputs.shape[-2]))
        return F.adaptive_avg_pool2d(padded, self.loss_size)[0].permute(1, 2, 0).numpy()

    @torch.no_grad()
    def _train_refiner(self) -> RefinementHead:
        """Train the refinement head on labeled objects: (pixels, the starting model's logits from one random
        click, true mask), all at the loss resolution. Trained once: it learns what the objects look like."""
        s, rng, examples = self.settings, np.random.default_rng(0), []
        self.model.sam.eval()
        for unit, objects in zip(self.labeled.train_units, self.labeled.train_objects):
            ids = objects.ids[: s.refinement_examples - len(examples)]
            if not ids:
                break
            masks = [objects.instances == i for i in ids]
            points = np.array([random_click(m, rng) for m in masks], np.float32)
            logits, iou = self._decode_clicks(unit_embeddings(self.model, [unit]), points)
            best = logits[torch.arange(len(ids)), iou.argmax(1)].numpy()
            targets = F.adaptive_avg_pool2d(torch.from_numpy(np.stack(masks)).float()[:, None], self.loss_size)
            pixels = self._pixels(self.data.volumes[unit.item.image], unit)
            examples += [(pixels, lg, t > 0.5) for lg, t in zip(best, targets[:, 0].numpy())]
        with torch.enable_grad():
            return train_refinement(examples, steps=s.refinement_steps, size=self.loss_size)
