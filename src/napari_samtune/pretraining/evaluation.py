"""What the pretraining run logs at each checkpoint (its learning curve), and loading a checkpoint as a model.

Every figure is measured on images the run never trains on: held-out procedural scenes (a seed of their own) and the
held-out part of each corpus source.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..core.decoder import decode, dense_positional_encoding, normalize_pixels, pack_prompts
from ..core.image import as_volume
from ..core.models.architecture import SamArchitecture, build_sam
from ..core.models.registry import file_sha256
from ..core.training.prompts import interior_point, mask_box
from .corpus import INSTANCE_SOURCES, Corpus, cut_frame


def prompted_ious(sam, frames: list[tuple[np.ndarray, np.ndarray]], max_objects: int = 4) -> dict[str, list[float]]:
    """IoU per object of ``frames`` (``(S, S, 3)`` uint8 image, ``(S, S)`` instance labels) from one interior click
    (``click``: the candidate the IoU head picks; ``click_best``: the best of the three) and from the exact box."""
    pe = dense_positional_encoding(sam)
    ious = {"click": [], "click_best": [], "box": []}
    for image, labels in frames:
        ids, areas = np.unique(labels[labels > 0], return_counts=True)
        ids = ids[areas >= 20][:max_objects]
        if len(ids) == 0:
            continue
        size = labels.shape[-1]
        tensor = torch.from_numpy(as_volume(image, rgb=True).plane(0)).permute(2, 0, 1)[None]
        emb = sam.image_encoder(normalize_pixels(sam, tensor))
        masks = [labels == i for i in ids]
        n = len(masks)
        clicks = [np.array([interior_point(m)], np.float32) for m in masks]
        for kind, coords_labels in (
            ("click", pack_prompts(clicks, [np.ones(1)] * n, [None] * n)),
            ("box", pack_prompts([None] * n, [None] * n, [mask_box(m) for m in masks])),
        ):
            logits, iou = decode(sam, emb, pe, *coords_labels)
            full = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False) > 0
            target = torch.from_numpy(np.stack(masks))[:, None]
            inter = (full & target).sum((-2, -1)).float()
            union = (full | target).sum((-2, -1)).float()
            candidate = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
            if kind == "click":
                pick = iou[:, 1:].argmax(1) + 1
                ious["click"] += candidate[torch.arange(n), pick].tolist()
                ious["click_best"] += candidate[:, 1:].max(1).values.tolist()
            else:
                ious["box"] += candidate[:, 0].tolist()
    return ious


def synthetic_evaluation(n_scenes: int = 48, seed: int = 987_654, size: int = 256) -> Callable[[object, int], dict]:
    """Held-out synthetic check for the learning curve: mean IoU from one interior click and from the exact box."""
    from ..core.synthetic import make_scenes

    frames = [(scene.image, scene.labels) for scene in make_scenes(n_scenes, seed=seed, size=size)]

    def run(sam, step: int) -> dict:
        ious = prompted_ious(sam, frames)
        return {f"synthetic_{k}_miou": float(np.mean(ious[k])) for k in ("click", "box")}

    return run


def corpus_evaluation(corpus: Corpus, size: int = 256, per_source: int = 16) -> Callable[[object, int], dict]:
    """Held-out corpus check for the learning curve: per source, click (IoU head's pick and best candidate) and box
    mIoU on ``per_source`` held-out images (nuclei: a native-resolution crop; other sources: the whole image)."""
    frames = {}
    for source, items in corpus.held_out.items():
        whole = source not in INSTANCE_SOURCES
        frames[source] = [
            cut_frame(item, size, np.random.default_rng([7, i]), downscale_probability=float(whole))
            for i, item in enumerate(items[:per_source])
        ]

    def run(sam, step: int) -> dict:
        out = {}
        for source, source_frames in frames.items():
            ious = prompted_ious(sam, source_frames)
            short = source.split("_")[-1]
            out.update({f"{short}_{k}_miou": float(np.mean(v)) for k, v in ious.items()})
        return out

    return run


def load_checkpoint_model(path: str | Path, device: str = "cpu"):
    """A ``SamModel`` from a pretraining checkpoint (for evaluation at checkpoints and for export)."""
    from ..core.models.registry import SamModel

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    arch = SamArchitecture.from_dict(ckpt["config"]["architecture"])
    sam = build_sam(arch)
    sam.load_state_dict(ckpt["model"])
    state = ckpt["state"]
    model = SamModel(sam.eval().to(device), f"pretrain@{state['step']}", arch, file_sha256(path), torch.device(device))
    model.metadata = {"steps": state["step"], "cpu_s": state["cpu_s"]}
    return model
