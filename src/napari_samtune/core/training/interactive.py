"""Interactive fine-tuning (SAM / micro-sam style): prompts simulated from the labels, corrective clicks, and a
choice of trainable parts (mask decoder, prompt encoder, LoRA on the image encoder's attention)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..decoder import decode, dense_positional_encoding, pack_prompts
from ..models.registry import SamModel
from .data import TrainingData, instances_of
from .loop import Level
from .lora import LoraSettings, add_lora, lora_state
from .prompts import interior_point, jittered_box, mask_box, random_click
from .session_loss import session_loss
from .units import Augmentation, Unit, build_units, unit_embeddings


@dataclass(frozen=True)
class InteractiveSettings:
    """What is trained and how prompts are simulated. ``lora=None`` keeps the image encoder frozen (fast path).
    ``augmentation``: the views of each training unit (``units.Augmentation``; ``Augmentation.none()`` for none).
    Only the painted objects are prompted and trained, so partial labels teach nothing about unpainted objects."""

    train_decoder: bool = True
    train_prompt_encoder: bool = False
    lora: LoraSettings | None = None
    lr: float = 3e-4
    weight_decay: float = 0.01
    units_per_step: int = 4
    objects_per_unit: int = 8
    corrective_rounds: int = 2
    click_fraction: float = 0.5
    box_jitter: float = 0.08
    loss_size: int = 128
    max_validation_objects: int = 48
    augmentation: Augmentation = field(default_factory=Augmentation)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (self.train_decoder or self.train_prompt_encoder or self.lora):
            raise ValueError("nothing to train: enable the mask decoder, the prompt encoder or LoRA")


def trainable_parameters(model: SamModel, decoder: bool, prompt_encoder: bool, lora: LoraSettings | None) -> list:
    """Freeze everything, then open the chosen parts (LoRA layers are inserted here); returns their parameters."""
    sam = model.sam
    for p in sam.parameters():
        p.requires_grad_(False)
    params = add_lora(sam, lora) if lora is not None else []
    for enabled, module in ((decoder, sam.mask_decoder), (prompt_encoder, sam.prompt_encoder)):
        if enabled:
            for p in module.parameters():
                p.requires_grad_(True)
                params.append(p)
    return params


def trained_module_names(settings) -> list[str]:
    return [
        n
        for n, on in (("mask_decoder", settings.train_decoder), ("prompt_encoder", settings.train_prompt_encoder))
        if on
    ]


def module_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


@dataclass
class LabeledObjects:
    """The labeled objects of one unit: instance map in the input frame and the usable ids."""

    instances: np.ndarray
    ids: list[int]


class InteractiveFineTuning:
    """The method object the training loop runs. ``model`` is trained in place: pass a copy."""

    name = "interactive"

    def __init__(
        self,
        model: SamModel,
        data: TrainingData,
        settings: InteractiveSettings | None = None,
        cache_root: str | Path | bool | None = None,
    ) -> None:
        self.model, self.data = model, data
        self.settings = settings or InteractiveSettings()
        s = self.settings
        self.params = trainable_parameters(model, s.train_decoder, s.train_prompt_encoder, s.lora)
        frozen = s.lora is None
        self.train_units = build_units(
            model, data, data.train, with_embeddings=frozen, cache_root=cache_root, augmentation=s.augmentation
        )
        self.val_units = build_units(model, data, data.validation, with_embeddings=frozen, cache_root=cache_root)
        self.train_objects = [self._objects(u) for u in self.train_units]
        self.val_objects = [self._objects(u) for u in self.val_units]
        keep = [i for i, o in enumerate(self.train_objects) if o.ids]
        self.train_units = [self.train_units[i] for i in keep]
        self.train_objects = [self.train_objects[i] for i in keep]
        if not self.train_units:
            raise ValueError("no object of at least 10 pixels in the training labels: label larger objects")
        with torch.no_grad():
            self.image_pe = dense_positional_encoding(model.sam)
        self.loss_size = min(s.loss_size, model.img_size)

    def _objects(self, unit: Unit) -> LabeledObjects:
        instances, ids = instances_of(unit.labels, self.data.task)
        return LabeledObjects(instances, ids)

    def levels(self) -> list[Level]:
        return [Level("model", self.params, self._backward, self.settings.lr, self.settings.weight_decay)]

    def _backward(self, step: int, rng: np.random.Generator) -> dict[str, float]:
        s = self.settings
        self.model.sam.train()
        picks = rng.choice(len(self.train_units), size=min(s.units_per_step, len(self.train_units)), replace=False)
        units = [self.train_units[i] for i in picks]
        index, masks, valid, points, plabels, boxes, clicks = [], [], [], [], [], [], []
        for b, i in enumerate(picks):
            objects = self.train_objects[i]
            chosen = rng.choice(objects.ids, size=min(s.objects_per_unit, len(objects.ids)), replace=False)
            for obj in chosen:
                mask = objects.instances == obj
                index.append(b)
                masks.append(mask)
                valid.append(self.train_units[i].valid)
                click = rng.random() < s.click_fraction
                clicks.append(click)
                points.append(np.array([random_click(mask, rng)], np.float32) if click else None)
                plabels.append(np.ones(1, np.float32) if click else None)
                boxes.append(None if click else jittered_box(mask, rng, s.box_jitter))
        embeddings = unit_embeddings(self.model, units)[torch.as_tensor(index)]
        weight = torch.from_numpy(np.stack(valid)).float()[:, None]
        total, parts = session_loss(
            self.model.sam,
            embeddings,
            self.image_pe,
            np.stack(masks),
            points,
            plabels,
            boxes,
            np.array(clicks),
            s.corrective_rounds,
            self.loss_size,
            weight,
        )
        total.backward()
        self.model.sam.eval()
        parts["loss"] = float(total.detach())
        return parts

    def adapter_parts(self) -> dict:
        """What this method trained, for the adapter file."""
        s, sam = self.settings, self.model.sam
        modules = {name: module_state(getattr(sam, name)) for name in trained_module_names(s)}
        lora = {"settings": s.lora.to_dict(), "state": lora_state(sam)} if s.lora is not None else None
        return {"modules": modules, "lora": lora, "prompt_embeddings": None}

    def validate(self) -> float:
        """Mean IoU from one click at each validation object's interior point (the best of the multimask outputs)."""
        return float(
            np.mean(click_ious(self.model, self.val_units, self.val_objects, self.settings.max_validation_objects))
        )


def click_ious(model: SamModel, units: list[Unit], objects: list[LabeledObjects], max_objects: int) -> list[float]:
    """IoU per object (in the encoder-input frame) from one interior click (the best of the multimask outputs), at
    most ``max_objects`` objects."""
    return _prompted_ious(model, units, objects, max_objects, box=False)


def box_ious(model: SamModel, units: list[Unit], objects: list[LabeledObjects], max_objects: int) -> list[float]:
    """IoU per object (in the encoder-input frame) from its tight box (the single-mask output), at most
    ``max_objects`` objects."""
    return _prompted_ious(model, units, objects, max_objects, box=True)


def _prompted_ious(
    model: SamModel, units: list[Unit], objects: list[LabeledObjects], max_objects: int, box: bool
) -> list[float]:
    sam, ious, budget = model.sam, [], max_objects
    pe = dense_positional_encoding(sam)
    for unit, objs in zip(units, objects):
        if budget <= 0:
            break
        ids = objs.ids[:budget]
        if not ids:
            continue
        budget -= len(ids)
        masks = [objs.instances == i for i in ids]
        n = len(ids)
        if box:
            points, point_labels, boxes = [None] * n, [None] * n, [mask_box(m) for m in masks]
        else:
            points = [np.array([interior_point(m)], np.float32) for m in masks]
            point_labels, boxes = [np.ones(1)] * n, [None] * n
        coords, labels = pack_prompts(points, point_labels, boxes, device=model.device)
        emb = unit_embeddings(model, [unit])
        logits, iou = decode(sam, emb, pe, coords, labels)
        best = logits[:, :1] if box else logits[torch.arange(n), iou[:, 1:].argmax(1) + 1][:, None]
        pred = F.interpolate(best, size=unit.labels.shape, mode="bilinear", align_corners=False)[:, 0] > 0
        for p, m in zip(pred.cpu().numpy(), masks):
            p = p & unit.valid
            ious.append(float((p & m).sum() / max((p | m).sum(), 1)))
    return ious or [0.0]
