"""The procedural scene pool of the pretraining run (regenerated deterministically from its seed, cached on disk),
and the augmentation every training frame gets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.io import atomic_write


@dataclass
class ScenePool:
    """Pre-generated scenes: ``images`` ``(P, S, S, 3)`` uint8 and ``labels`` ``(P, S, S)`` uint16."""

    images: np.ndarray
    labels: np.ndarray


def build_pool(n: int, seed: int, size: int, folder: Path | None = None, workers: int = 1) -> ScenePool:
    """Generate (or read back from ``folder``) ``n`` procedural scenes made from ``seed``."""
    from ..core.synthetic import make_scene

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
    from ..core.synthetic import make_scene

    seed, index, size = args
    scene = make_scene(np.random.default_rng([seed, index]), size=size)
    return scene.image, scene.labels.astype(np.uint16)


def augment(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    k = int(rng.integers(4))
    image, labels = np.rot90(image, k), np.rot90(labels, k)
    if rng.random() < 0.5:
        image, labels = image[:, ::-1], labels[:, ::-1]
    if rng.random() < 0.2:
        image = 255 - image
    if rng.random() < 0.5:
        image = image[..., rng.permutation(3)]
    return np.ascontiguousarray(image), np.ascontiguousarray(labels)
