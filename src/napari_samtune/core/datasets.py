"""Reading image/label folder pairs from disk (``images/`` and ``masks/`` with matching file stems)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import SamtuneError
from .io import read_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@dataclass(frozen=True)
class Pair:
    name: str
    image: np.ndarray
    labels: np.ndarray


class DatasetError(SamtuneError, FileNotFoundError):
    """Image and label folders that cannot be paired; the message names the folder and what to do."""


def load_pairs(
    folder: str | Path, images: str = "images", masks: str = "masks", limit: int | None = None
) -> list[Pair]:
    """All (image, labels) pairs of ``folder/images`` and ``folder/masks`` matched by file stem, sorted by name."""
    folder = Path(folder)
    if not (folder / images).is_dir() or not (folder / masks).is_dir():
        raise DatasetError(f"{folder} needs the sub-folders '{images}/' and '{masks}/' with matching file names")
    return load_folder_pairs(folder / images, folder / masks, limit)


def load_folder_pairs(image_dir: str | Path, label_dir: str | Path, limit: int | None = None) -> list[Pair]:
    """(image, labels) pairs of two folders, matched by file stem (``a.jpg`` ↔ ``a.png``), sorted by name.

    Every image needs its label file; label files without an image are ignored. Raises ``DatasetError`` for a missing
    folder, no image, no pair at all or an image without labels.
    """
    image_dir, label_dir = Path(image_dir), Path(label_dir)
    image_files = list_images(image_dir, "image")
    label_files = {p.stem: p for p in list_images(label_dir, "label")}
    if not image_files:
        raise DatasetError(f"image folder {image_dir} has no image files ({', '.join(IMAGE_SUFFIXES)})")
    if not any(p.stem in label_files for p in image_files):
        raise DatasetError(
            f"no matching pairs: none of the {len(image_files)} images in {image_dir} has a label file with the same "
            f"name in {label_dir} (e.g. {image_files[0].name} ↔ {image_files[0].stem}.png)"
        )
    pairs = []
    for path in image_files:
        if path.stem not in label_files:
            raise DatasetError(
                f"image {path.name} has no label file with the same name in {label_dir}: "
                "name each label image like its image (any image suffix)"
            )
        pairs.append(Pair(path.stem, read_image(path), read_image(label_files[path.stem])))
        if limit is not None and len(pairs) >= limit:
            break
    return pairs


def list_images(folder: str | Path, kind: str = "image") -> list[Path]:
    """The image files of ``folder`` (by suffix), sorted by name; ``kind`` names the folder in the error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{kind} folder {folder} does not exist (or is not a folder)")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def split_pairs(pairs: list[Pair], test_fraction: float = 0.3, seed: int = 0) -> tuple[list[Pair], list[Pair]]:
    """Deterministic train/test split of pairs (a held-out test split for benchmarks)."""
    order = np.random.default_rng(seed).permutation(len(pairs))
    n_test = max(1, round(len(pairs) * test_fraction))
    test = sorted(order[:n_test])
    train = sorted(order[n_test:])
    return [pairs[i] for i in train], [pairs[i] for i in test]
