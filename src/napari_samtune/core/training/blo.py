"""BLO-SAM prompt learning: learn a few prompt tokens per class so that SAM segments without user prompts.

Bi-level optimisation (Zhang et al., "BLO-SAM", 2024): the training items are split in two. The lower level fits the
model weights (mask decoder and/or LoRA) on split 1 with the prompts held fixed; the upper level fits the prompts on
split 2 with the weights held fixed. Because the prompts never see the data the weights were fitted to, they cannot
simply memorise it, which is what makes the method hold up with very few labeled images. ``single_level`` trains
both on all the data together instead: the baseline that overfits.

The learned prompts are used by ``core.automatic.segment_automatic``; validation runs exactly that, at full
resolution.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..automatic import class_logits, logits_to_result
from ..decoder import POSITIVE, decode_tokens, dense_positional_encoding, embed_dense, embed_sparse
from ..embeddings import EmbeddingStore, PlaneEmbedding, Tiling, encode_tiles, tile_grid, tile_inputs
from ..models.registry import SamModel
from .data import TrainingData
from .interactive import module_state, trainable_parameters
from .loop import Level
from .lora import LoraSettings, lora_state
from .losses import focal_loss
from .units import Augmentation, Unit, build_units, unit_embeddings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BLOSettings:
    """Prompt tokens, what the lower level trains, learning rates of both levels, the data split and the loss.

    split_fraction: share of the training items (or, with one item, of its tiles) given to the upper level.
    split_seed: seeds that split and the prompts' starting values.
    second_order: DARTS-style finite-difference hypergradient for the prompts (three extra decoder passes per step)
    instead of the first-order one; ``fd_epsilon`` is its step relative to the gradient norm and ``xi`` the virtual
    lower-level learning rate (None: ``lr``). single_level: train prompts and weights together on all training
    data (the baseline BLO is compared with).
    """

    n_tokens: int = 4
    train_decoder: bool = True
    lora: LoraSettings | None = None
    lr: float = 3e-4
    prompt_lr: float = 3e-3
    weight_decay: float = 0.01
    units_per_step: int = 4
    split_fraction: float = 0.5
    split_seed: int = 0
    second_order: bool = False
    fd_epsilon: float = 0.01
    xi: float | None = None
    single_level: bool = False
    # Not SAM's 20:1 focal-to-Dice ratio: tuned for prompted masks, it drives prompt-free maps of sparse foreground
    # to all background.
    focal_weight: float = 1.0
    ce_weight: float = 1.0
    dice_weight: float = 1.0
    loss_size: int = 128
    augmentation: Augmentation = field(default_factory=Augmentation)

    def __post_init__(self) -> None:
        if not (self.train_decoder or self.lora):
            raise ValueError("BLO's lower level has nothing to train: enable the mask decoder or LoRA")
        if self.n_tokens < 1:
            raise ValueError(f"n_tokens must be ≥ 1, got {self.n_tokens}")
        if not 0 < self.split_fraction < 1:
            raise ValueError(f"split_fraction must be in (0, 1), got {self.split_fraction}")
        if self.units_per_step < 1:
            raise ValueError(f"units_per_step must be ≥ 1, got {self.units_per_step}")
        if self.second_order and self.single_level:
            raise ValueError("second_order needs the two levels: it cannot be combined with single_level")
        if self.fd_epsilon <= 0:
            raise ValueError(f"fd_epsilon must be > 0, got {self.fd_epsilon}")


def split_indices(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split ``range(n)`` (n ≥ 2) into (lower, upper), sorted and disjoint, deterministic by ``seed``; the upper
    part gets ``round(n * fraction)`` indices, at least one and at most n − 1."""
    order = np.random.default_rng(seed).permutation(n)
    n_upper = min(n - 1, max(1, round(n * fraction)))
    return sorted(order[n_upper:].tolist()), sorted(order[:n_upper].tolist())


class _Cycle:
    """Walks ``range(n)`` in a random order, reshuffled at each pass, so every unit is used once per pass."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.order = np.zeros(0, int)
        self.position = 0

    def take(self, k: int, rng: np.random.Generator) -> list[int]:
        if self.position >= len(self.order):
            self.order = rng.permutation(self.n)
            self.position = 0
        batch = self.order[self.position : self.position + k]
        self.position += len(batch)
        return batch.tolist()


class BLOPromptLearning:
    """The method object the training loop runs. ``model`` is trained in place: pass a copy.

    ``lower_units``/``upper_units``: the training units of the two levels (both all training units with
    ``single_level``).
    """

    name = "blo"

    def __init__(
        self,
        model: SamModel,
        data: TrainingData,
        settings: BLOSettings | None = None,
        cache_root: str | Path | bool | None = None,
    ) -> None:
        self.model, self.data = model, data
        self.settings = s = settings or BLOSettings()
        self.classes = tuple(data.classes)
        self.weights = trainable_parameters(model, s.train_decoder, False, s.lora)
        frozen = s.lora is None
        # A tile without labels is background worth learning where its pixels are known (``Item.known``).
        units = build_units(
            model,
            data,
            data.train,
            with_embeddings=frozen,
            keep_empty=True,
            cache_root=cache_root,
            augmentation=s.augmentation,
        )
        self.lower_units, self.upper_units = self._split(units)
        self._targets = {id(u): self._target(u) for u in units}
        self._lower_cycle = _Cycle(len(self.lower_units))
        self._upper_cycle = _Cycle(len(self.upper_units))
        with torch.no_grad():
            self.image_pe = dense_positional_encoding(model.sam)
            prompts = self._initial_prompts()
        # The loop gives a level one learning rate; in the single joint level the prompts are stored divided by
        # prompt_lr / lr, so that Adam (invariant to gradient scale) still moves them at prompt_lr.
        self._prompt_scale = s.prompt_lr / s.lr if s.single_level else 1.0
        self.prompt_param = torch.nn.Parameter(prompts / self._prompt_scale)
        # With a frozen encoder the validation planes are encoded once; with LoRA at every validation.
        self._validation_embeddings = self._frozen_embeddings(cache_root) if frozen else None

    def _split(self, units: list[Unit]) -> tuple[list[Unit], list[Unit]]:
        s = self.settings
        if s.single_level:
            return units, units
        items = self.data.train
        if len(items) >= 2:
            lower, _ = split_indices(len(items), s.split_fraction, s.split_seed)
            lower_ids = {id(items[i]) for i in lower}
            lower_units = [u for u in units if id(u.item) in lower_ids]
            upper_units = [u for u in units if id(u.item) not in lower_ids]
            if lower_units and upper_units:
                return lower_units, upper_units
        # Split the tiles, never the views of one tile (they show the same objects).
        groups = sorted({u.group for u in units})
        if len(groups) >= 2:
            lower, _ = split_indices(len(groups), s.split_fraction, s.split_seed)
            lower_groups = {groups[i] for i in lower}
            return [u for u in units if u.group in lower_groups], [u for u in units if u.group not in lower_groups]
        log.warning("BLO: only one training tile, so both levels train on it (no protection against overfitting)")
        return units, units

    def _initial_prompts(self) -> torch.Tensor:
        """``(K, T, C)`` tokens, each a positive click at a random position: what SAM's decoder knows how to read,
        and different for every class and token."""
        k, t, size = len(self.classes), self.settings.n_tokens, self.model.img_size
        generator = torch.Generator().manual_seed(self.settings.split_seed)
        coords = (torch.rand(k, t, 2, generator=generator) * size).to(self.model.device)
        labels = torch.full((k, t), float(POSITIVE), device=self.model.device)
        return embed_sparse(self.model.sam, coords, labels).detach().clone()

    def _target(self, unit: Unit) -> tuple[torch.Tensor, torch.Tensor]:
        """Soft one-hot ``(K + 1, L, L)`` (0 = background) and pixel weight ``(1, L, L)`` at the loss size: 1 where
        the label is known, 0 on padding and on unlabeled pixels of partial annotations."""
        size = min(self.settings.loss_size, self.model.img_size)
        index = np.zeros(unit.labels.shape, np.int64)
        if self.data.task == "semantic":
            for k, value in enumerate(self.classes, start=1):
                index[unit.labels == value] = k
        else:
            index[unit.labels > 0] = 1
        onehot = F.one_hot(torch.from_numpy(index), len(self.classes) + 1).permute(2, 0, 1).float()
        known = torch.from_numpy(unit.known).float()[None]
        return F.adaptive_avg_pool2d(onehot, size), F.adaptive_avg_pool2d(known, size)

    def prompts(self) -> torch.Tensor:
        """The learned prompts ``(K, T, C)`` (differentiable)."""
        return self.prompt_param * self._prompt_scale

    def levels(self) -> list[Level]:
        s = self.settings
        if s.single_level:
            return [Level("joint", [*self.weights, self.prompt_param], self._weights_backward, s.lr, s.weight_decay)]
        return [
            Level("lower", self.weights, self._weights_backward, s.lr, s.weight_decay),
            # No weight decay on the prompts: zero is not a meaningful prompt to shrink towards.
            Level("upper", [self.prompt_param], self._upper_backward, s.prompt_lr),
        ]

    def _batch(self, pool: list[Unit], cycle: _Cycle, rng: np.random.Generator) -> list[Unit]:
        return [pool[i] for i in cycle.take(self.settings.units_per_step, rng)]

    def _weights_backward(self, step: int, rng: np.random.Generator) -> dict[str, float]:
        """The lower level (prompts fixed), or the joint level of ``single_level`` (prompts trained too)."""
        units = self._batch(self.lower_units, self._lower_cycle, rng)
        prompts = self.prompts() if self.settings.single_level else self.prompts().detach()
        self.model.sam.train()
        loss, parts = self._loss(units, prompts)
        loss.backward()
        self.model.sam.eval()
        return {**parts, "loss": float(loss.detach())}

    def _upper_backward(self, step: int, rng: np.random.Generator) -> dict[str, float]:
        units = self._batch(self.upper_units, self._upper_cycle, rng)
        self.model.sam.train()
        if self.settings.second_order:
            grad, loss, parts = self._hypergradient(units, rng)
        else:
            loss, parts = self._loss(units, self.prompts(), encoder_grad=False)
            (grad,) = torch.autograd.grad(loss, [self.prompt_param])  # the weights get no gradient
        self.prompt_param.grad = grad
        self.model.sam.eval()
        return {**parts, "loss": float(loss.detach())}

    def _hypergradient(
        self, upper_units: list[Unit], rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """DARTS' finite-difference hypergradient of the upper loss with respect to the prompts p:
        ``∇_p L_up(w', p) − ξ (∇_p L_low(w⁺, p) − ∇_p L_low(w⁻, p)) / 2ε`` with ``w' = w − ξ ∇_w L_low(w, p)``,
        ``w± = w ± ε ∇_w' L_up(w', p)`` and ``ε = fd_epsilon / ‖∇_w' L_up‖``. The weights are restored after."""
        s, weights, p = self.settings, self.weights, self.prompt_param
        xi = s.lr if s.xi is None else s.xi
        picks = rng.choice(len(self.lower_units), size=min(s.units_per_step, len(self.lower_units)), replace=False)
        lower_units = [self.lower_units[i] for i in picks]
        original = [w.detach().clone() for w in weights]

        def set_weights(delta: list[torch.Tensor | None], factor: float) -> None:
            with torch.no_grad():
                for w, w0, d in zip(weights, original, delta):
                    w.copy_(w0 if d is None else w0 + factor * d)

        def lower_prompt_grad() -> torch.Tensor:
            return torch.autograd.grad(self._loss(lower_units, p, encoder_grad=False)[0], [p])[0]

        try:
            lower_loss, _ = self._loss(lower_units, p.detach())
            set_weights(torch.autograd.grad(lower_loss, weights, allow_unused=True), -xi)  # the virtual step w'
            upper_loss, parts = self._loss(upper_units, p)
            grad_p, *grad_w = torch.autograd.grad(upper_loss, [p, *weights], allow_unused=True)
            norm = math.sqrt(sum(float(g.pow(2).sum()) for g in grad_w if g is not None))
            eps = s.fd_epsilon / max(norm, 1e-12)
            set_weights(grad_w, eps)
            plus = lower_prompt_grad()
            set_weights(grad_w, -eps)
            minus = lower_prompt_grad()
        finally:
            set_weights([None] * len(weights), 0.0)
        return grad_p - xi * (plus - minus) / (2 * eps), upper_loss, parts

    def _loss(
        self, units: list[Unit], prompts: torch.Tensor, encoder_grad: bool = True
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The segmentation loss of ``(K, T, C)`` prompts on ``units``: each class's single-mask logits, upsampled to
        the loss size; padding and unknown pixels weigh 0. ``encoder_grad=False`` runs an image encoder with LoRA
        without gradients (levels that do not train it)."""
        s, sam = self.settings, self.model.sam
        b, k = len(units), len(prompts)
        with torch.set_grad_enabled(encoder_grad and torch.is_grad_enabled()):
            embeddings = unit_embeddings(self.model, units).repeat_interleave(k, 0)
        device = embeddings.device
        sparse = prompts.repeat(b, 1, 1)  # prompt b * K + j: unit b, class j
        low, _ = decode_tokens(sam, embeddings, self.image_pe, sparse, embed_dense(sam, None, 1))
        targets = [self._targets[id(u)] for u in units]
        target = torch.stack([t for t, _ in targets]).to(device)
        weight = torch.stack([w for _, w in targets]).to(device)
        logits = low[:, 0].float().view(b, k, *low.shape[-2:])
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        if k == 1:
            main = focal_loss(logits, target[:, 1:], weight).mean()
            prob = torch.sigmoid(logits)
            main_weight, name = s.focal_weight, "focal"
        else:
            full = torch.cat([torch.zeros_like(logits[:, :1]), logits], 1)
            ce = -(target * F.log_softmax(full, 1)).sum(1, keepdim=True)
            main = (ce * weight).sum() / weight.sum().clamp_min(1e-6)
            prob = torch.softmax(full, 1)[:, 1:]
            main_weight, name = s.ce_weight, "ce"
        dice = _class_dice(prob, target[:, 1:], weight)
        total = main_weight * main + s.dice_weight * dice
        return total, {name: float(main.detach()), "dice": float(dice.detach())}

    def _frozen_embeddings(self, cache_root: str | Path | bool | None) -> list[PlaneEmbedding]:
        """The validation planes' embeddings, read from (or written to) the embedding cache."""
        stores: dict[int, EmbeddingStore] = {}
        out = []
        for item in self.data.validation:
            if item.image not in stores:
                stores[item.image] = EmbeddingStore(self.model, self.data.volumes[item.image], cache_root=cache_root)
            out.append(stores[item.image].plane(item.plane))
        return out

    def _encoded_plane(self, image: int, plane: int) -> PlaneEmbedding:
        """A plane encoded now with the current (LoRA-trained) encoder; never cached, as the encoder changes."""
        volume, size = self.data.volumes[image], self.model.img_size
        tiles, scale = tile_grid(volume.plane_shape, size, Tiling())
        features = encode_tiles(self.model, tile_inputs(volume.plane(plane), tiles, scale))
        return PlaneEmbedding(features, tiles, scale, volume.plane_shape, size)

    def validate(self) -> float:
        """Prompt-free segmentation of each validation plane at full resolution (``segment_automatic``'s path): IoU
        of each class pooled over the planes (their known pixels), averaged over the classes present (binary: the
        foreground IoU)."""
        prompts = self.prompts().detach()
        inter = np.zeros(len(self.classes))
        union = np.zeros(len(self.classes))
        for i, item in enumerate(self.data.validation):
            if self._validation_embeddings is not None:
                embedding = self._validation_embeddings[i]
            else:
                embedding = self._encoded_plane(item.image, item.plane)
            pred = logits_to_result(class_logits(self.model, embedding, prompts), self.classes).labels
            truth = item.labels if self.data.task == "semantic" else np.where(item.labels > 0, self.classes[0], 0)
            known = item.known if item.known is not None else np.ones(truth.shape, bool)
            for j, value in enumerate(self.classes):
                p, t = (pred == value) & known, (truth == value) & known
                inter[j] += np.count_nonzero(p & t)
                union[j] += np.count_nonzero(p | t)
        present = union > 0
        return float(np.mean(inter[present] / union[present])) if present.any() else 1.0

    def adapter_parts(self) -> dict:
        """The trained decoder/LoRA and the ``(K, T, C)`` learned prompts, for the adapter file."""
        s, sam = self.settings, self.model.sam
        modules = {"mask_decoder": module_state(sam.mask_decoder)} if s.train_decoder else {}
        lora = {"settings": s.lora.to_dict(), "state": lora_state(sam)} if s.lora is not None else None
        return {"modules": modules, "lora": lora, "prompt_embeddings": self.prompts().detach().cpu().clone()}


def _class_dice(prob: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice loss per class pooled over the batch (stable for classes absent from some tiles), averaged over the
    classes: prob/target ``(B, K, L, L)``, weight ``(B, 1, L, L)``."""
    prob, target = prob * weight, target * weight
    inter = (prob * target).sum((0, 2, 3))
    total = prob.sum((0, 2, 3)) + target.sum((0, 2, 3))
    return (1 - (2 * inter + smooth) / (total + smooth)).mean()
