"""Training units: the encoder-input frames (whole small planes, or tiles of large ones) that training sees.

A unit is exactly what the predictor sees at inference: the same tiling, resizing and normalisation, so a model
fine-tuned on units behaves the same when prompted. With a frozen image encoder a unit carries its cached embedding
(the fast path: a training step then costs decoder passes only); otherwise it carries the encoder input.

Augmented views: besides the plain frame, each training unit gets a few *views* of the same content, flipped or
rotated (dihedral group), rescaled (scale jitter), cropped or placed at a random offset in the encoder frame, with
brightness/contrast/gamma jitter. Without them every training frame shows its objects at the same positions (e.g. a
labeled left half of an image always fills the left half of the frame, padding the right), and the mask decoder,
which sees SAM's dense positional encoding, learns *where* the objects were instead of what they look like. On the
fast path each view is encoded once (what it costs is bounded by ``Augmentation.max_view_seconds``) and a training
step draws among the views; when the encoder trains, the views cost no encoding (their pixels are kept) and their
photometric jitter is drawn anew at every step.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..decoder import normalize_pixels
from ..embeddings import EmbeddingStore, Tiling, tile_inputs
from ..models.registry import SamModel
from .data import Item, TrainingData


@dataclass(frozen=True)
class Augmentation:
    """Augmented views of every training unit (validation units are never augmented).

    views: frames per training unit, the plain one included (1: no augmentation). dihedral: flips and 90° rotations.
    scale_jitter: the frame's scale is multiplied by a factor drawn from ``[1 - j, 1 + j]``. shift: content smaller
    than the frame is placed at a random offset (larger content is cropped at a random place). photometric: strength
    of the brightness/contrast/gamma jitter (0: none). mirror_fill: share of the views whose frame is filled around
    the content by mirroring it (pixels and labels) instead of padding: at inference a whole image fills the frame,
    and a decoder that only saw labeled content next to padding learns that objects sit next to padding.
    max_view_seconds: on the frozen-encoder path the extra views are encoded once, one round over all units at a
    time, until this many seconds were spent (about 0.1 CPU-s per view for ``samtune_small``, 35 CPU-s for ViT-B on
    one CPU thread, well under 1 s on a GPU). seed: of the views.
    """

    views: int = 8
    dihedral: bool = True
    scale_jitter: float = 0.2
    shift: bool = True
    photometric: float = 0.15
    mirror_fill: float = 0.5
    max_view_seconds: float = 30.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.views < 1:
            raise ValueError(f"views must be ≥ 1 (1: the plain frame only), got {self.views}")
        if not 0 <= self.scale_jitter < 1:
            raise ValueError(f"scale_jitter must be in [0, 1), got {self.scale_jitter}")
        if not 0 <= self.photometric <= 1:
            raise ValueError(f"photometric strength must be in [0, 1], got {self.photometric}")

    @classmethod
    def none(cls) -> Augmentation:
        return cls(views=1, dihedral=False, scale_jitter=0.0, shift=False, photometric=0.0, mirror_fill=0.0)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class View:
    """How a tile's content becomes an encoder frame: dihedral transform ``k`` (0–7: ``k % 4`` quarter turns, then a
    left–right flip when ``k ≥ 4``), ``scale`` (encoder pixels per plane pixel), ``crop`` (row, col) into the
    transformed, rescaled content, ``offset`` (row, col) of the content in the frame, ``mirror`` (the rest of the frame
    filled by mirroring the content, else padding) and the photometric jitter."""

    k: int = 0
    scale: float = 1.0
    crop: tuple[int, int] = (0, 0)
    offset: tuple[int, int] = (0, 0)
    mirror: bool = False
    contrast: float = 1.0
    brightness: float = 0.0
    gamma: float = 1.0


@dataclass
class Unit:
    """labels: ``(S, S)`` int32 in the encoder-input frame (0 on padding); valid: ``(S, S)`` bool (not padding);
    known: ``(S, S)`` bool, the pixels whose label is known (⊆ valid; see ``prepare_training_data``);
    embedding: ``(C, h, w)`` (fast path) or None; inputs: ``(1, 3, h', w')`` in [0, 255] placed at ``view.offset``
    (encoder path) or None. group: the plain unit this one is a view of (views of one group share their content).
    """

    item: Item
    tile: int
    labels: np.ndarray
    valid: np.ndarray
    embedding: torch.Tensor | None = None
    inputs: torch.Tensor | None = None
    known: np.ndarray | None = None
    view: View = field(default_factory=View)
    group: int = 0
    photometric: float = 0.0  # encoder path: strength of the jitter drawn anew at each step

    def __post_init__(self) -> None:
        if self.known is None:
            self.known = self.valid


def build_units(
    model: SamModel,
    data: TrainingData,
    items: list[Item],
    *,
    with_embeddings: bool,
    keep_empty: bool = False,
    cache_root: str | Path | bool | None = None,
    tiling: Tiling | None = None,
    augmentation: Augmentation | None = None,
) -> list[Unit]:
    """Cut ``items`` into units. ``with_embeddings``: read/compute cached embeddings (frozen encoder); otherwise
    keep the encoder inputs. Units without any label are dropped unless ``keep_empty`` (then units without any known
    pixel are dropped). ``augmentation``: add its views of every unit (None: the plain frames only)."""
    size = model.img_size
    stores: dict[int, EmbeddingStore] = {}
    units = []
    for item in items:
        volume = data.volumes[item.image]
        if item.image not in stores:
            stores[item.image] = EmbeddingStore(model, volume, tiling=tiling, cache_root=cache_root)
        store = stores[item.image]
        features = store.plane(item.plane).features if with_embeddings else None
        inputs = None if with_embeddings else tile_inputs(volume.plane(item.plane), store.tiles, store.scale)
        for t, (r0, c0, r1, c1) in enumerate(store.tiles):
            plain = View(scale=store.scale)
            labels = item.labels[r0:r1, c0:c1]
            known = item.known[r0:r1, c0:c1] if item.known is not None else np.ones(labels.shape, bool)
            frame_labels, valid, frame_known = _to_frame(labels, known, plain, size)
            if not labels.any() and not (keep_empty and frame_known.any()):
                continue
            units.append(
                Unit(
                    item=item,
                    tile=t,
                    labels=frame_labels,
                    valid=valid,
                    known=frame_known,
                    embedding=features[t] if features is not None else None,
                    inputs=inputs[t] if inputs is not None else None,
                    view=plain,
                    group=len(units),
                )
            )
    if augmentation is not None and augmentation.views > 1:
        units += _augmented_views(model, data, units, stores, augmentation, with_embeddings, keep_empty)
    return units


def _augmented_views(
    model: SamModel,
    data: TrainingData,
    plain: list[Unit],
    stores: dict[int, EmbeddingStore],
    aug: Augmentation,
    with_embeddings: bool,
    keep_empty: bool,
) -> list[Unit]:
    """The extra views of every plain unit: round by round over the units (so that a time limit cuts every unit's
    views evenly), encoded on the fast path until ``aug.max_view_seconds`` were spent."""
    size, out = model.img_size, []
    rng = np.random.default_rng(aug.seed)
    start = time.monotonic()
    for _ in range(aug.views - 1):
        for unit in plain:
            if with_embeddings and time.monotonic() - start > aug.max_view_seconds:
                return out
            store = stores[unit.item.image]
            r0, c0, r1, c1 = store.tiles[unit.tile]
            view = random_view((r1 - r0, c1 - c0), store.scale, size, aug, rng)
            labels = unit.item.labels[r0:r1, c0:c1]
            known = unit.item.known[r0:r1, c0:c1] if unit.item.known is not None else np.ones(labels.shape, bool)
            frame_labels, valid, frame_known = _to_frame(labels, known, view, size)
            if not frame_labels.any() and not (keep_empty and frame_known.any()):
                continue
            pixels = data.volumes[unit.item.image].plane(unit.item.plane)[r0:r1, c0:c1]
            inputs = view_pixels(pixels, view, size)
            embedding = None
            if with_embeddings:
                with torch.inference_mode():
                    placed = frame_input(model, inputs, (0, 0) if view.mirror else view.offset)
                    embedding = model.sam.image_encoder(placed).float().cpu()[0]
            out.append(
                Unit(
                    item=unit.item,
                    tile=unit.tile,
                    labels=frame_labels,
                    valid=valid,
                    known=frame_known,
                    embedding=embedding,
                    inputs=None if with_embeddings else inputs,
                    view=view if not view.mirror else replace(view, offset=(0, 0)),
                    group=unit.group,
                    photometric=0.0 if with_embeddings else aug.photometric,
                )
            )
    return out


def random_view(shape: tuple[int, int], scale: float, size: int, aug: Augmentation, rng: np.random.Generator) -> View:
    """A random ``View`` of content of ``shape`` (plane pixels) shown at ``scale`` in a ``size``² frame."""
    k = int(rng.integers(8)) if aug.dihedral else 0
    h, w = shape if k % 2 == 0 else shape[::-1]
    s = scale * float(rng.uniform(1 - aug.scale_jitter, 1 + aug.scale_jitter))
    sh, sw = max(1, round(h * s)), max(1, round(w * s))
    crop = (int(rng.integers(max(sh - size, 0) + 1)), int(rng.integers(max(sw - size, 0) + 1)))
    ch, cw = min(sh, size), min(sw, size)
    offset = (int(rng.integers(size - ch + 1)), int(rng.integers(size - cw + 1))) if aug.shift else (0, 0)
    p = aug.photometric
    return View(
        k=k,
        scale=s,
        crop=crop,
        offset=offset,
        mirror=bool(rng.random() < aug.mirror_fill),
        contrast=float(rng.uniform(1 - p, 1 + p)),
        brightness=float(rng.uniform(-p, p) * 0.5),
        gamma=float(np.exp(rng.uniform(-p, p))),
    )


def _transform(x: torch.Tensor, view: View, size: int, mode: str) -> torch.Tensor:
    """``(N, C, h, w)`` content → the view's content ``(N, C, h', w')`` (before placing it in the frame)."""
    x = torch.rot90(x, view.k % 4, dims=(-2, -1))
    if view.k >= 4:
        x = torch.flip(x, dims=(-1,))
    new = (max(1, round(x.shape[-2] * view.scale)), max(1, round(x.shape[-1] * view.scale)))
    if new != tuple(x.shape[-2:]):
        if mode == "nearest":
            x = F.interpolate(x, size=new, mode="nearest")
        else:
            x = F.interpolate(x, size=new, mode="bilinear", align_corners=False, antialias=view.scale < 1)
    r, c = view.crop
    x = x[..., r : r + size, c : c + size]
    if view.mirror:
        r, c = view.offset
        pad = ((0, 0), (0, 0), (r, size - x.shape[-2] - r), (c, size - x.shape[-1] - c))
        x = torch.from_numpy(np.pad(x.numpy(), pad, mode="symmetric"))
    return x


def view_pixels(pixels: np.ndarray, view: View, size: int) -> torch.Tensor:
    """``(h, w, 3)`` float pixels in [0, 255] → the view's content ``(1, 3, h', w')`` in [0, 255] (to be placed at
    ``view.offset``; a mirror-filled view's is the whole frame), with the view's photometric jitter."""
    x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).permute(2, 0, 1)[None]
    return photometric(_transform(x, view, size, "bilinear"), view.contrast, view.brightness, view.gamma)


def photometric(x: torch.Tensor, contrast: float, brightness: float, gamma: float) -> torch.Tensor:
    """Gamma, then contrast around the mean and a brightness shift (in units of the full range), on [0, 255]."""
    if contrast == 1.0 and brightness == 0.0 and gamma == 1.0:
        return x
    y = (x / 255.0).clamp(0, 1) ** gamma
    mean = y.mean()
    return ((y - mean) * contrast + mean + brightness).clamp(0, 1) * 255.0


def _to_frame(
    labels: np.ndarray, known: np.ndarray, view: View, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels and known pixels of a tile → ``(S, S)`` labels, valid (not padding) and known masks of the view."""
    stacked = torch.from_numpy(np.stack([labels.astype(np.float32), known.astype(np.float32)]))[None]
    content = _transform(stacked, view, size, "nearest")[0]
    h, w = content.shape[-2:]
    r, c = view.offset if not view.mirror else (0, 0)
    out = np.zeros((size, size), np.int32)
    valid = np.zeros((size, size), bool)
    known_frame = np.zeros((size, size), bool)
    out[r : r + h, c : c + w] = content[0].numpy().astype(np.int32)
    valid[r : r + h, c : c + w] = True
    known_frame[r : r + h, c : c + w] = content[1].numpy() > 0.5
    return out, valid, known_frame


def frame_input(model: SamModel, inputs: torch.Tensor, offset: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """``(1, 3, h, w)`` pixels in [0, 255] → the encoder's ``(1, 3, S, S)`` input: standardised, then zero-padded
    around the content placed at ``offset`` (row, col) (SAM pads after standardising)."""
    size = model.img_size
    x = normalize_pixels(model.sam, inputs.to(model.device, torch.float32))
    r, c = offset
    return F.pad(x, (c, size - x.shape[-1] - c, r, size - x.shape[-2] - r))


def unit_embeddings(model: SamModel, units: list[Unit]) -> torch.Tensor:
    """``(B, C, h, w)`` embeddings of ``units``: cached ones, or the encoder run now (with gradients if enabled).

    On the encoder path, views with photometric augmentation get a fresh jitter at every call."""
    if units[0].embedding is not None:
        return torch.stack([u.embedding for u in units]).to(model.device)
    batch = []
    for u in units:
        x = u.inputs
        if u.photometric > 0:
            p = u.photometric
            draw = (torch.rand(3) * 2 - 1).tolist()
            x = photometric(x, 1 + p * draw[0], 0.5 * p * draw[1], float(np.exp(p * draw[2])))
        batch.append(frame_input(model, x, u.view.offset))
    return model.sam.image_encoder(torch.cat(batch))
