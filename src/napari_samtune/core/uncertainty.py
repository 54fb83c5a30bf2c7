"""Per-pixel uncertainty maps in [0, 1] at image resolution: where the model is unsure and a user should look.

Sources (``SOURCES``):
- ``"prompt"``: disagreement across perturbed prompts (jittered clicks and boxes), decoded in one batch;
- ``"tta"``: disagreement across test-time augmentations (flips, 90° rotations; one encoder pass each);
- ``"multimask"``: disagreement among SAM's three candidate masks;
- ``"entropy"``: binary entropy of the predicted probability;
- ``"refinement"``: |p_model − p_refined| with a light refinement head trained on the user's labels (SUM's idea).
Disagreement is twice the per-pixel standard deviation of the probabilities (0: all agree, 1: split half/half).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .embeddings import EmbeddingStore
from .image import Volume
from .predictor import ObjectPrompt, Predictor

SOURCES = ("prompt", "tta", "multimask", "entropy", "refinement")


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy in bits of Bernoulli(p), in [0, 1]."""
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return (-(p * np.log2(p) + (1 - p) * np.log2(1 - p))).astype(np.float32)


def disagreement(probabilities: np.ndarray) -> np.ndarray:
    """``(M, H, W)`` probabilities of M predictions → ``(H, W)`` in [0, 1]: 2 × per-pixel standard deviation."""
    return np.clip(2 * probabilities.std(axis=0), 0, 1).astype(np.float32)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return (1 / (1 + np.exp(-np.clip(x, -30, 30)))).astype(np.float32)


@dataclass(frozen=True)
class UncertaintyResult:
    """uncertainty ``(H, W)`` in [0, 1]; probability ``(H, W)``: the model's own prediction for the object."""

    uncertainty: np.ndarray
    probability: np.ndarray


def jitter_prompts(
    prompt: ObjectPrompt, n: int, rng: np.random.Generator, shape: tuple[int, int]
) -> list[ObjectPrompt]:
    """``n`` perturbed copies of a prompt: points moved by a few pixels, box sides moved by up to 8 % of its size."""
    h, w = shape
    out = []
    for _ in range(n):
        points, box = prompt.points, prompt.box
        if points is not None:
            spread = 3.0 if box is None else 2.0
            points = np.clip(points + rng.normal(0, spread, points.shape), 0, [h - 1, w - 1])
        if box is not None:
            size = np.array([box[2] - box[0], box[3] - box[1]] * 2) + 1
            box = np.clip(box + rng.uniform(-0.08, 0.08, 4) * size, 0, [h - 1, w - 1, h - 1, w - 1])
            box = np.array([min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])])
        out.append(replace(prompt, points=points, box=box))
    return out


def prompted_uncertainty(
    predictor: Predictor,
    store: EmbeddingStore,
    prompt: ObjectPrompt,
    *,
    plane: int = 0,
    source: str = "prompt",
    samples: int = 8,
    seed: int = 0,
    refiner: RefinementHead | None = None,
) -> UncertaintyResult:
    """Uncertainty of one prompted object on ``plane`` of ``store``'s image (see the module doc for sources)."""
    if source not in SOURCES:
        raise ValueError(f"unknown uncertainty source {source!r}; choose one of {SOURCES}")
    embedding = store.plane(plane)
    base = predictor.predict(embedding, [prompt], return_logits=True)
    probability = sigmoid(base.logits[0])
    if source == "entropy":
        return UncertaintyResult(binary_entropy(probability), probability)
    if source == "prompt":
        rng = np.random.default_rng(seed)
        jittered = jitter_prompts(prompt, samples, rng, embedding.plane_shape)
        pred = predictor.predict(embedding, [prompt, *jittered], return_logits=True)
        return UncertaintyResult(disagreement(sigmoid(pred.logits)), probability)
    if source == "multimask":
        candidates = [
            sigmoid(predictor.predict(embedding, [prompt], output=k, return_logits=True).logits[0]) for k in (1, 2, 3)
        ]
        return UncertaintyResult(disagreement(np.stack(candidates)), probability)
    if source == "tta":
        probs = [probability, *_tta_probabilities(predictor, store, prompt, plane)]
        return UncertaintyResult(disagreement(np.stack(probs)), probability)
    if refiner is None:
        raise ValueError("source 'refinement' needs a refinement head trained on labeled images (train_refinement)")
    refined = refiner.refine(store.volume.plane(plane), base.logits[0])
    return UncertaintyResult(np.abs(probability - refined).astype(np.float32), probability)


# Each test-time transform maps a (H, W, ...) array and its inverse maps a prediction back.
_TRANSFORMS = {
    "flip_rows": (lambda a: a[::-1], lambda a: a[::-1]),
    "flip_cols": (lambda a: a[:, ::-1], lambda a: a[:, ::-1]),
    "rot90": (lambda a: np.rot90(a, 1), lambda a: np.rot90(a, -1)),
}


def _transform_prompt(prompt: ObjectPrompt, name: str, shape: tuple[int, int]) -> ObjectPrompt:
    h, w = shape

    def move(rc: np.ndarray) -> np.ndarray:
        r, c = rc[..., 0], rc[..., 1]
        if name == "flip_rows":
            return np.stack([h - 1 - r, c], -1)
        if name == "flip_cols":
            return np.stack([r, w - 1 - c], -1)
        return np.stack([w - 1 - c, r], -1)  # np.rot90 by +1: (r, c) → (w - 1 - c, r)

    points = move(prompt.points) if prompt.points is not None else None
    box = None
    if prompt.box is not None:
        corners = move(prompt.box.reshape(2, 2))
        box = np.concatenate([corners.min(0), corners.max(0)])
    mask = _TRANSFORMS[name][0](prompt.mask) if prompt.mask is not None else None
    return ObjectPrompt(points=points, labels=prompt.labels, box=box, mask=mask)


def _tta_probabilities(predictor: Predictor, store: EmbeddingStore, prompt: ObjectPrompt, plane: int) -> list:
    shape = store.volume.plane_shape
    raw = store.volume.planes[plane]
    # The views are cached where the image's own embeddings are (a folder, or nowhere for a memory-only store): another
    # object on the same image, or the same one again, then costs decoder passes only.
    cache_root = store.path.parent if store.path is not None else False
    out = []
    for name, (forward, inverse) in _TRANSFORMS.items():
        volume = Volume(np.ascontiguousarray(forward(raw))[None], store.volume.low, store.volume.high, False)
        view = EmbeddingStore(store.model, volume, tiling=store.tiling, cache_root=cache_root)
        pred = predictor.predict(view.plane(0), [_transform_prompt(prompt, name, shape)], return_logits=True)
        out.append(np.ascontiguousarray(inverse(sigmoid(pred.logits[0]))))
    return out


class RefinementHead(nn.Module):
    """A light CNN that refines the model's mask from (image, model logit): SUM's refinement module stand-in.

    It sees the image downsampled to ``size`` and returns refined probabilities at image resolution.
    """

    def __init__(self, width: int = 16, size: int = 256) -> None:
        super().__init__()
        self.size = size
        self.net = nn.Sequential(
            nn.Conv2d(5, width, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(width, width, 3, padding=2, dilation=2),
            nn.GELU(),
            nn.Conv2d(width, width, 3, padding=4, dilation=4),
            nn.GELU(),
            nn.Conv2d(width, 1, 1),
        )

    def _inputs(self, image: np.ndarray, logits: np.ndarray) -> torch.Tensor:
        img = torch.from_numpy(np.ascontiguousarray(image, np.float32)).permute(2, 0, 1)[None] / 255.0
        lg = torch.from_numpy(np.ascontiguousarray(logits, np.float32))[None, None].clamp(-20, 20) / 10
        x = torch.cat([img, lg, torch.sigmoid(lg * 10)], 1)
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Residual on the model's own logit: the head learns corrections, starting from "no change".
        return x[:, 3:4] * 10 + self.net(x)

    @torch.no_grad()
    def refine(self, image: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """image ``(H, W, 3)`` in [0, 255], logits ``(H, W)`` → refined probability ``(H, W)``."""
        out = self(self._inputs(image, logits))
        out = F.interpolate(out, size=logits.shape, mode="bilinear", align_corners=False)[0, 0]
        return torch.sigmoid(out).numpy()


def train_refinement(
    examples: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    steps: int = 300,
    lr: float = 3e-3,
    seed: int = 0,
    size: int = 256,
) -> RefinementHead:
    """Train a ``RefinementHead`` on (image (H, W, 3) in [0, 255], model logits (H, W), true mask (H, W)) triples;
    ``size``: the head's working resolution (its cost grows with size²)."""
    if not examples:
        raise ValueError("train_refinement needs at least one (image, logits, mask) example")
    torch.manual_seed(seed)
    head = RefinementHead(size=size)
    inputs = torch.cat([head._inputs(img, lg) for img, lg, _ in examples])
    targets = torch.cat(
        [
            F.interpolate(torch.from_numpy(m.astype(np.float32))[None, None], size=(head.size,) * 2, mode="area")
            for _, _, m in examples
        ]
    )
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = torch.from_numpy(rng.choice(len(inputs), size=min(8, len(inputs)), replace=False))
        loss = F.binary_cross_entropy_with_logits(head(inputs[idx]), targets[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return head.eval()
