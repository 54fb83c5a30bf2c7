"""The real-image pretraining corpus (``shared/pretrain_corpus``): reading it and cutting square training frames.

The corpus holds folders ``<source>/images`` and ``<source>/masks`` (same stems; see its README). Nuclei masks are
instance labels; the polyp and ultrasound masks are binary, so their objects are their connected components. Every
``holdout_every``-th image of each source (by sorted stem) is never trained on: the learning curve is measured there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from skimage.measure import label as connected_components
from skimage.transform import resize

from ..core.datasets import DatasetError, load_pairs

SOURCES = ("dsb2018_fluorescence_nuclei", "kvasir_seg_polyps", "busi_breast_ultrasound")
INSTANCE_SOURCES = ("dsb2018_fluorescence_nuclei",)


class CorpusMissing(FileNotFoundError):
    """The corpus folder (or one of its sources) is not on this machine; the message says where it was looked for."""


@dataclass(frozen=True)
class CorpusImage:
    """One corpus image: ``image`` ``(H, W, 3)`` uint8 and ``labels`` ``(H, W)`` uint16 instance ids (0 background)."""

    name: str
    image: np.ndarray
    labels: np.ndarray


@dataclass
class Corpus:
    """Training and held-out images per source (each list sorted by stem)."""

    train: dict[str, list[CorpusImage]] = field(default_factory=dict)
    held_out: dict[str, list[CorpusImage]] = field(default_factory=dict)

    def summary(self) -> dict[str, tuple[int, int]]:
        """Per source: (training images, held-out images)."""
        return {s: (len(self.train[s]), len(self.held_out.get(s, []))) for s in self.train}


def default_corpus_dir() -> Path:
    """``SAMTUNE_PRETRAIN_CORPUS``, else ``shared/pretrain_corpus`` beside the project folder."""
    env = os.environ.get("SAMTUNE_PRETRAIN_CORPUS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[4] / "shared" / "pretrain_corpus"


def load_corpus(
    folder: str | Path | None = None,
    sources: tuple[str, ...] = SOURCES,
    holdout_every: int = 20,
    limit: int | None = None,
) -> Corpus:
    """Read ``sources`` of the corpus at ``folder`` (default ``default_corpus_dir()``) into memory (~0.7 GB in all).

    ``limit`` reads only the first images of each source (tests). Raises ``CorpusMissing`` naming the folder.
    """
    folder = Path(folder) if folder is not None else default_corpus_dir()
    corpus = Corpus()
    for source in sources:
        try:
            pairs = load_pairs(folder / source, limit=limit)
        except DatasetError as error:
            raise CorpusMissing(
                f"pretraining corpus source {source!r} not found under {folder} ({error}); "
                "set SAMTUNE_PRETRAIN_CORPUS to the folder that holds shared/pretrain_corpus"
            ) from error
        images = [_as_corpus_image(p.name, p.image, p.labels, source in INSTANCE_SOURCES) for p in pairs]
        corpus.held_out[source] = images[::holdout_every]
        corpus.train[source] = [im for i, im in enumerate(images) if i % holdout_every]
    return corpus


def _as_corpus_image(name: str, image: np.ndarray, mask: np.ndarray, instances: bool) -> CorpusImage:
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    image = np.ascontiguousarray(image[..., :3]).astype(np.uint8)
    if mask.ndim == 3:
        mask = mask[..., 0]
    labels = mask if instances else connected_components(mask > 127)
    return CorpusImage(name, image, labels.astype(np.uint16))


def cut_frame(
    item: CorpusImage,
    size: int,
    rng: np.random.Generator,
    downscale_probability: float = 0.3,
) -> tuple[np.ndarray, np.ndarray]:
    """A ``size``² training frame of ``item``: ``(image uint8 (S, S, 3), labels uint16 (S, S))``.

    With ``downscale_probability`` (images larger than ``size`` only) the whole image is shrunk so its long side is
    ``size``; otherwise a ``size``² crop at native resolution around a random object pixel (so sparse images still
    give objects), at a random place among those that contain it. Frames smaller than ``size`` are zero-padded at the
    bottom/right, as the predictor pads. Instance ids are kept (objects cut by the crop stay one object).
    """
    image, labels = item.image, item.labels
    h, w = labels.shape
    if max(h, w) > size and rng.random() < downscale_probability:
        shape = (max(1, round(h * size / max(h, w))), max(1, round(w * size / max(h, w))))
        image = resize(image, shape, order=1, preserve_range=True, anti_aliasing=True).round().astype(np.uint8)
        labels = resize(labels, shape, order=0, preserve_range=True, anti_aliasing=False).astype(np.uint16)
    else:
        top, left = _crop_origin(labels, size, rng)
        image, labels = image[top : top + size, left : left + size], labels[top : top + size, left : left + size]
    out_image = np.zeros((size, size, 3), np.uint8)
    out_labels = np.zeros((size, size), np.uint16)
    out_image[: image.shape[0], : image.shape[1]] = image
    out_labels[: labels.shape[0], : labels.shape[1]] = labels
    return out_image, out_labels


def _crop_origin(labels: np.ndarray, size: int, rng: np.random.Generator) -> tuple[int, int]:
    """Top-left corner of a ``size``² crop that contains a random foreground pixel (anywhere if there is none)."""
    h, w = labels.shape
    rows, cols = np.nonzero(labels)
    if len(rows) == 0:
        return int(rng.integers(max(1, h - size + 1))), int(rng.integers(max(1, w - size + 1)))
    pick = int(rng.integers(len(rows)))
    origin = []
    for centre, extent in ((rows[pick], h), (cols[pick], w)):
        low, high = max(0, centre - size + 1), min(centre, extent - size)
        origin.append(int(rng.integers(low, high + 1)) if high >= low else 0)
    return origin[0], origin[1]
