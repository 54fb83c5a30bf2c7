"""Pretraining the bundled small model, resumable exactly across sessions.

v1 (``RECIPES["v1"]``) trained from scratch on procedural scenes only; v2 starts from v1's weights and mixes the
procedural scenes with real images of the pretraining corpus (``corpus.py``), source by source with fixed weights.

Every random choice of step ``s`` (which source and image, crop, augmentation, objects, prompts) comes from a
generator seeded with ``(seed, s)``, and the learning rate is a pure function of ``s``; so a run resumed from a
checkpoint (model + optimiser + step) continues exactly as an uninterrupted run would. The scene pool is regenerated
deterministically and the corpus is read in sorted order.
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

from ..core.decoder import dense_positional_encoding, normalize_pixels
from ..core.io import atomic_torch_save
from ..core.models.architecture import SMALL_ARCHITECTURE, SamArchitecture, build_sam
from ..core.models.registry import file_sha256
from ..core.training.session_loss import session_loss
from .batches import Batch, sample_batch
from .corpus import Corpus
from .scenes import build_pool

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
    # v2: where each step's images come from, as {source: weight} ("synthetic" = the scene pool, other keys = corpus
    # sources); None = the scene pool only (v1). ``init_from`` names the run folder whose checkpoint is the warm
    # start (relative to the run folder's parent), ``downscale_probability`` how often a corpus image is shown whole.
    source_weights: dict[str, float] | None = None
    init_from: str | None = None
    downscale_probability: float = 0.3

    def iou_weight_at(self, step: int) -> float:
        return self.iou_boost[1] if self.iou_boost is not None and step >= self.iou_boost[0] else 1.0

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


RECIPES: dict[str, PretrainConfig] = {
    "v1": PretrainConfig(),
    # v2: warm start from v1 (run folder runs/pretrain), real corpus images mixed in so that no source dominates,
    # a lower peak learning rate for the warm start, and the IoU head weighted 5 from the first step (v1's amendment).
    "v2": PretrainConfig(
        seed=1,
        total_steps=6000,
        lr=5e-4,
        warmup_steps=50,
        iou_boost=(0, 5.0),
        source_weights={
            "synthetic": 0.35,
            "dsb2018_fluorescence_nuclei": 0.25,
            "kvasir_seg_polyps": 0.2,
            "busi_breast_ultrasound": 0.2,
        },
        init_from="pretrain",
    ),
}


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
    corpus: Corpus | None = None,
) -> Iterator[dict]:
    """Train (or resume) in ``run_dir``; yields one event dict per step. Writes ``checkpoint.pt`` and ``log.jsonl``.

    A fresh run of a config with ``init_from`` starts from the model weights (not the optimiser) of the checkpoint
    in ``run_dir.parent / init_from``. ``corpus`` is needed by configs with ``source_weights``.

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
    elif config.init_from is not None:
        start = run_dir.parent / config.init_from / "checkpoint.pt"
        if not start.is_file():
            raise FileNotFoundError(f"warm start {start} (init_from={config.init_from!r}) does not exist")
        sam.load_state_dict(torch.load(start, map_location="cpu", weights_only=True)["model"])
        with open(run_dir / "log.jsonl", "a") as log:
            log.write(json.dumps({"event": "warm_start", "from": str(start), "sha256": file_sha256(start)}) + "\n")
    if config.source_weights is not None and corpus is None:
        raise ValueError("this recipe mixes in the pretraining corpus: pass corpus=load_corpus(...)")
    pool = build_pool(config.pool_size, config.seed, arch.img_size, run_dir, workers=pool_workers)

    def save(extra: dict) -> None:
        payload = {"model": sam.state_dict(), "optimizer": optimizer.state_dict(), "state": dict(state)}
        payload["config"] = _config_dict(config)
        atomic_torch_save(payload, ckpt_path)
        with open(run_dir / "log.jsonl", "a") as log:
            log.write(json.dumps({"event": "checkpoint", **state, **extra}) + "\n")

    start_step = state["step"]
    if start_step == 0 and evaluate is not None:  # the starting point of the learning curve (a warm start's quality)
        with open(run_dir / "log.jsonl", "a") as log:
            log.write(json.dumps({"event": "checkpoint", **state, **_evaluate(evaluate, sam, 0)}) + "\n")
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
        batch = sample_batch(pool, config, step, corpus)
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
