"""Pretraining the bundled small model from scratch on procedural scenes, resumable exactly across sessions.

Every random choice of step ``s`` (which scenes, augmentation, objects, prompts) comes from a generator seeded with
``(seed, s)``, and the learning rate is a pure function of ``s``; so a run resumed from a checkpoint (model +
optimiser + step) continues exactly as an uninterrupted run would. The scene pool is regenerated deterministically.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .decoder import decode, dense_positional_encoding, normalize_pixels, pack_prompts
from .image import as_volume
from .io import atomic_torch_save, atomic_write
from .models.architecture import SMALL_ARCHITECTURE, SamArchitecture, build_sam
from .training.prompts import interior_point, jittered_box, mask_box, random_click
from .training.session_loss import session_loss

IOU_BOOST_STEP = 1624  # the step at which the run was amended (see ``PretrainConfig.iou_boost``)


@dataclass(frozen=True)
class PretrainConfig:
    """Recipe of the bundled model (see docs/model_card.md). ``total_steps`` sets the cosine schedule's length."""

    seed: int = 0
    total_steps: int = 3200
    images_per_step: int = 8
    objects_per_image: int = 6
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    click_fraction: float = 0.6
    corrective_probability: float = 0.5
    box_jitter: float = 0.08
    pool_size: int = 3000
    min_object_area: int = 20
    loss_size: int = 128  # losses on 128² (soft targets by area): 25x cheaper than 256² and keeps small nuclei
    architecture: dict = field(default_factory=SMALL_ARCHITECTURE.to_dict)
    # Amendment made during the run (session 2, see the model card): at step 1,624 the IoU head had collapsed to a
    # near-constant prediction (std 0.01 over nuclei clicks, so the multimask choice always took the same, worst,
    # candidate). From ``iou_boost[0]`` on, the IoU head's MSE is weighted ``iou_boost[1]`` instead of 1. Steps before
    # it are unchanged, so a fresh run with this config still reproduces the shipped weights exactly.
    iou_boost: tuple[int, float] | None = (IOU_BOOST_STEP, 5.0)

    def iou_weight_at(self, step: int) -> float:
        return self.iou_boost[1] if self.iou_boost is not None and step >= self.iou_boost[0] else 1.0

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass
class ScenePool:
    """Pre-generated scenes: ``images`` ``(P, S, S, 3)`` uint8 and ``labels`` ``(P, S, S)`` uint16."""

    images: np.ndarray
    labels: np.ndarray


def build_pool(n: int, seed: int, size: int, folder: Path | None = None, workers: int = 1) -> ScenePool:
    """Generate (or read back from ``folder``) ``n`` procedural scenes made from ``seed``."""
    from .synthetic import make_scene

    if folder is not None:
        path = Path(folder) / f"pool_seed{seed}_n{n}_s{size}.npz"
        if path.is_file():
            data = np.load(path)
            return ScenePool(data["images"], data["labels"])
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            scenes = list(pool.map(_scene, [(seed, i, size) for i in range(n)], chunksize=16))
    else:
        scenes = [_scene((seed, i, size)) for i in range(n)]
    images = np.stack([s[0] for s in scenes])
    labels = np.stack([s[1] for s in scenes])
    if folder is not None:
        atomic_write(path, lambda handle: np.savez(handle, images=images, labels=labels))
    del make_scene
    return ScenePool(images, labels)


def _scene(args: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    from .synthetic import make_scene

    seed, index, size = args
    scene = make_scene(np.random.default_rng([seed, index]), size=size)
    return scene.image, scene.labels.astype(np.uint16)


def _augment(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    k = int(rng.integers(4))
    image, labels = np.rot90(image, k), np.rot90(labels, k)
    if rng.random() < 0.5:
        image, labels = image[:, ::-1], labels[:, ::-1]
    if rng.random() < 0.2:
        image = 255 - image
    if rng.random() < 0.5:
        image = image[..., rng.permutation(3)]
    return np.ascontiguousarray(image), np.ascontiguousarray(labels)


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


def sample_batch(pool: ScenePool, config: PretrainConfig, step: int) -> Batch:
    """The batch of ``step``: a pure function of (pool, config, step)."""
    rng = np.random.default_rng([config.seed, step])
    picks = rng.choice(len(pool.images), size=config.images_per_step, replace=False)
    images, index, masks, points, plabels, boxes, clicks = [], [], [], [], [], [], []
    for b, p in enumerate(picks):
        image, labels = _augment(pool.images[p], pool.labels[p], rng)
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
    tensor = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return Batch(tensor, np.array(index), np.stack(masks), points, plabels, boxes, np.array(clicks))


def training_step(sam, batch: Batch, config: PretrainConfig, step: int) -> dict[str, float]:
    """Forward and backward of one step (click or box, then optionally one corrective round); returns losses."""
    rng = np.random.default_rng([config.seed, step, 1])
    embeddings = sam.image_encoder(normalize_pixels(sam, batch.images))
    rounds = int(rng.random() < config.corrective_probability)
    total, parts = session_loss(
        sam,
        embeddings[torch.from_numpy(batch.image_index)],
        dense_positional_encoding(sam),
        batch.masks,
        batch.points,
        batch.point_labels,
        batch.boxes,
        batch.is_click,
        rounds,
        config.loss_size,
        iou_weight=config.iou_weight_at(step),
    )
    total.backward()
    parts["loss"] = float(total.detach())
    return parts


def _optimizer(sam, config: PretrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in sam.named_parameters():
        (no_decay if p.ndim < 2 or "pos_embed" in name or "rel_pos" in name else decay).append(p)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=config.betas,
    )


def pretrain(
    config: PretrainConfig,
    run_dir: str | Path,
    *,
    max_steps: int | None = None,
    cpu_budget_s: float | None = None,
    checkpoint_every_s: float = 600.0,
    pool_workers: int = 1,
    evaluate: Callable[[object, int], dict] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> Iterator[dict]:
    """Train (or resume) in ``run_dir``; yields one event dict per step. Writes ``checkpoint.pt`` and ``log.jsonl``.

    Stops at ``config.total_steps``, after ``max_steps`` steps in this call, when the run's total process CPU time
    reaches ``cpu_budget_s``, or when ``should_stop()``. A checkpoint is written every ``checkpoint_every_s`` of
    wall time and at the end; ``evaluate(sam, step)`` (optional) runs at each checkpoint and is logged.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    arch = SamArchitecture.from_dict(config.architecture)
    torch.manual_seed(config.seed)
    sam = build_sam(arch).train()
    optimizer = _optimizer(sam, config)
    ckpt_path = run_dir / "checkpoint.pt"
    state = {"step": 0, "cpu_s": 0.0, "wall_s": 0.0}
    if ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if not _compatible(ckpt["config"], _config_dict(config), ckpt["state"]["step"]):
            raise ValueError(f"{ckpt_path} was written with another config; use a new run folder or the same config")
        sam.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
    pool = build_pool(config.pool_size, config.seed, arch.img_size, run_dir, workers=pool_workers)

    def save(extra: dict) -> None:
        payload = {"model": sam.state_dict(), "optimizer": optimizer.state_dict(), "state": dict(state)}
        payload["config"] = _config_dict(config)
        atomic_torch_save(payload, ckpt_path)
        with open(run_dir / "log.jsonl", "a") as log:
            log.write(json.dumps({"event": "checkpoint", **state, **extra}) + "\n")

    start_step = state["step"]
    last_save = time.monotonic()
    while state["step"] < config.total_steps:
        step = state["step"]
        if (max_steps is not None and step - start_step >= max_steps) or should_stop():
            break
        if cpu_budget_s is not None and state["cpu_s"] >= cpu_budget_s:
            break
        wall0, cpu0 = time.monotonic(), time.process_time()
        torch.manual_seed(config.seed * 1_000_003 + step)
        for group in optimizer.param_groups:
            group["lr"] = config.lr_at(step)
        batch = sample_batch(pool, config, step)
        optimizer.zero_grad(set_to_none=True)
        losses = training_step(sam, batch, config, step)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(sam.parameters(), config.grad_clip))
        optimizer.step()
        state["step"] = step + 1
        state["cpu_s"] += time.process_time() - cpu0
        state["wall_s"] += time.monotonic() - wall0
        event = {"step": step + 1, "lr": config.lr_at(step), "grad_norm": grad_norm, **losses, **state}
        yield event
        if time.monotonic() - last_save >= checkpoint_every_s:
            save(_evaluate(evaluate, sam, state["step"]))
            last_save = time.monotonic()
    save(_evaluate(evaluate, sam, state["step"]))


def _evaluate(evaluate, sam, step: int) -> dict:
    if evaluate is None:
        return {}
    sam.eval()
    with torch.no_grad():
        result = evaluate(sam, step)
    sam.train()
    return result


def _compatible(saved: dict, current: dict, step: int) -> bool:
    """Whether a checkpoint of ``saved`` config at ``step`` resumes under ``current``: the same settings, except
    settings added later (an amendment such as ``iou_boost``) that change nothing before ``step``."""
    if any(saved.get(k) != v for k, v in current.items() if k in saved) or set(saved) - set(current):
        return False
    boost = current.get("iou_boost")
    return "iou_boost" in saved or boost is None or boost[0] >= step


def _config_dict(config: PretrainConfig) -> dict:
    return json.loads(json.dumps(asdict(config)))


def synthetic_evaluation(n_scenes: int = 48, seed: int = 987_654, size: int = 256) -> Callable[[object, int], dict]:
    """Held-out synthetic check for the learning curve: mean IoU from one interior click and from the exact box."""
    from .synthetic import make_scenes

    scenes = make_scenes(n_scenes, seed=seed, size=size)

    def run(sam, step: int) -> dict:
        pe = dense_positional_encoding(sam)
        ious = {"click": [], "box": []}
        for scene in scenes:
            image = torch.from_numpy(as_volume(scene.image, rgb=True).plane(0)).permute(2, 0, 1)[None]
            emb = sam.image_encoder(normalize_pixels(sam, image))
            ids = np.unique(scene.labels[scene.labels > 0])[:4]
            masks = [scene.labels == i for i in ids]
            for kind in ("click", "box"):
                if kind == "click":
                    pts = [np.array([interior_point(m)], np.float32) for m in masks]
                    coords, labels = pack_prompts(pts, [np.ones(1)] * len(masks), [None] * len(masks))
                else:
                    coords, labels = pack_prompts(
                        [None] * len(masks), [None] * len(masks), [mask_box(m) for m in masks]
                    )
                logits, iou = decode(sam, emb, pe, coords, labels)
                pick = iou[:, 1:].argmax(1) + 1 if kind == "click" else torch.zeros(len(masks), dtype=torch.long)
                chosen = logits[torch.arange(len(masks)), pick][:, None]
                pred = F.interpolate(chosen, size=(size, size), mode="bilinear", align_corners=False)[:, 0] > 0
                for p, m in zip(pred.numpy(), masks):
                    union = (p | m).sum()
                    ious[kind].append((p & m).sum() / union if union else 1.0)
        return {f"synthetic_{k}_miou": float(np.mean(v)) for k, v in ious.items()}

    return run


def load_checkpoint_model(path: str | Path, device: str = "cpu"):
    """A ``SamModel`` from a pretraining checkpoint (for evaluation at checkpoints and for export)."""
    from .models.registry import SamModel, file_sha256

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    arch = SamArchitecture.from_dict(ckpt["config"]["architecture"])
    sam = build_sam(arch)
    sam.load_state_dict(ckpt["model"])
    state = ckpt["state"]
    model = SamModel(sam.eval().to(device), f"pretrain@{state['step']}", arch, file_sha256(path), torch.device(device))
    model.metadata = {"steps": state["step"], "cpu_s": state["cpu_s"]}
    return model
