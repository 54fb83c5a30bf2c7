"""Reading image/label folder pairs from disk (``images/`` and ``masks/`` with matching file stems)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@dataclass(frozen=True)
class Pair:
    name: str
    image: np.ndarray
    labels: np.ndarray


def read_image(path: str | Path) -> np.ndarray:
    """An image file as a numpy array (tifffile for TIFF stacks, imageio otherwise)."""
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        return tifffile.imread(path)
    import imageio.v3 as iio

    return np.asarray(iio.imread(path))


def load_pairs(
    folder: str | Path, images: str = "images", masks: str = "masks", limit: int | None = None
) -> list[Pair]:
    """All (image, labels) pairs of ``folder/images`` and ``folder/masks`` matched by file stem, sorted by name."""
    folder = Path(folder)
    image_dir, mask_dir = folder / images, folder / masks
    if not image_dir.is_dir() or not mask_dir.is_dir():
        raise FileNotFoundError(f"{folder} needs the sub-folders '{images}/' and '{masks}/' with matching file names")
    mask_files = {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    pairs = []
    for path in sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        if path.stem not in mask_files:
            raise FileNotFoundError(f"image {path.name} has no mask with the same name in {mask_dir}")
        pairs.append(Pair(path.stem, read_image(path), read_image(mask_files[path.stem])))
        if limit is not None and len(pairs) >= limit:
            break
    return pairs


def split_pairs(pairs: list[Pair], test_fraction: float = 0.3, seed: int = 0) -> tuple[list[Pair], list[Pair]]:
    """Deterministic train/test split of pairs (a held-out test split for benchmarks)."""
    order = np.random.default_rng(seed).permutation(len(pairs))
    n_test = max(1, round(len(pairs) * test_fraction))
    test = sorted(order[:n_test])
    train = sorted(order[n_test:])
    return [pairs[i] for i in train], [pairs[i] for i in test]
