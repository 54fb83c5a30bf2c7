"""Procedurally generated, labelled microscopy-, EM- and endoscopy-like scenes.

The scenes serve three purposes: pretraining the small promptable model from scratch, napari sample data and
a held-out synthetic evaluation set. They are made from random shapes, spectral noise and (as background
clutter and texture only) the photographs bundled with scikit-image; no real annotated data is involved.

Each scene is drawn by one *regime* (see ``SCENE_KINDS``):

* ``nuclei``: many small star-convex blobs, often clustered/touching; fluorescence (one stain on a dark
  background), H&E-like (purple on pink) or brightfield; chromatin grain, some hollow (bright rim) nuclei.
* ``cells``: fewer, larger, more irregular cells; filled with texture, phase contrast (dark rim + bright
  halo), membrane-stained rings, or with an unlabelled brighter nucleus inside.
* ``organelles``: EM-like grey cytoplasm with mitochondria (double membrane + cristae), vesicles, granules and
  sometimes a large nucleus.
* ``membranes``: EM / membrane-stain tissue: warped Voronoi cells separated by thin membranes (labels = cell
  interiors) with labelled organelle blobs inside some cells.
* ``lesion``: endoscopy (reddish tissue, vessels, specular highlights, polyps that differ mostly in texture),
  dermoscopy-like or ultrasound-like (speckle) scenes with one or two large, low-contrast objects.
* ``blobs``: anything goes: any background (flat, noise, photo), any size regime, any fill.

Every scene then gets uneven illumination, blur, Gaussian/Poisson noise and a random gamma. Lengths are given
for 256 x 256 scenes and scale with ``size``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy import ndimage
from skimage import data as skdata
from skimage import measure, segmentation, transform

SCENE_KINDS: tuple[str, ...] = ("nuclei", "cells", "organelles", "membranes", "lesion", "blobs")

# scikit-image photos that ship inside the wheel (no download); used only as clutter and texture.
_PHOTO_NAMES = (
    "astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
    "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina", "rocket", "text",
)  # fmt: skip
_MIN_FRAGMENT = 10  # label pieces smaller than this (px) are dropped
_MIN_OBJECT = 20  # a scene needs at least one object this large (px)
_MAX_TRIES = 50
# Probability of a colour scene per regime (EM is grey, endoscopy/dermoscopy colour); ~45 % overall.
_COLOUR_P = {"nuclei": 0.5, "cells": 0.5, "organelles": 0.1, "membranes": 0.3, "lesion": 0.85, "blobs": 0.5}
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
# Fluorescence stain colours (one channel dominant, plus white).
_STAINS = np.array(
    [
        [0.2, 0.4, 1.0],  # DAPI / Hoechst blue
        [0.2, 1.0, 0.3],  # GFP green
        [1.0, 0.25, 0.2],  # red
        [1.0, 0.3, 1.0],  # magenta
        [0.2, 0.9, 1.0],  # cyan
        [1.0, 0.9, 0.2],  # yellow
        [1.0, 1.0, 1.0],  # white (single-channel display)
    ],
    np.float32,
)


@dataclass(frozen=True)
class Scene:
    """One synthetic scene.

    ``image`` is (H, W, 3) uint8 RGB (grey scenes have three equal channels); ``labels`` is (H, W) int32
    with 0 = background and objects numbered 1..N consecutively, each a single 4-connected region; ``kind``
    names the regime (one of ``SCENE_KINDS``) that made it.
    """

    image: np.ndarray
    labels: np.ndarray
    kind: str


# --------------------------------------------------------------------------------------------------- textures


def _spectral_noise(
    rng: np.random.Generator, shape: tuple[int, int], beta: float, coarsest: float = 0.0, finest: float = 0.0
) -> np.ndarray:
    """(H, W) float32 periodic noise, zero mean and unit std, with amplitude spectrum ~ f**-beta.

    ``finest``/``coarsest`` (px) band-limit it: features much smaller than ``finest`` or larger than
    ``coarsest`` are suppressed. One inverse FFT gives every scale at once, far cheaper than large Gaussian
    filters.
    """
    h, w = shape
    f = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :])
    f[0, 0] = 1.0 / max(h, w)
    amp = f**-beta
    if finest:
        amp *= np.exp(-((f * finest) ** 2))
    if coarsest:
        amp *= -np.expm1(-((f * coarsest) ** 2))
    spec = (rng.standard_normal(amp.shape) + 1j * rng.standard_normal(amp.shape)) * amp
    out = np.fft.irfft2(spec, s=shape)
    out -= out.mean()
    out /= out.std() + 1e-12
    return out.astype(np.float32)


@lru_cache(maxsize=1)
def _photo_bank() -> tuple[np.ndarray, ...]:
    """The bundled scikit-image photos as uint8 arrays ((h, w) or (h, w, 3)); unloadable ones skipped."""
    photos = []
    for name in _PHOTO_NAMES:
        try:
            photo = np.asarray(getattr(skdata, name)())
        except Exception:  # a missing photo only costs variety
            continue
        photos.append(photo[..., :3] if photo.ndim == 3 else photo)
    return tuple(photos)


def _photo_crop(rng: np.random.Generator, shape: tuple[int, int], grey: bool) -> np.ndarray:
    """A random crop of a bundled photo, rescaled (x0.5-2.5) and flipped, as float32 in [0, 1].

    Returns (H, W) when ``grey`` else (H, W, 3). Falls back to spectral noise if no photo could be loaded.
    """
    bank = _photo_bank()
    if not bank:
        noise = _spectral_noise(rng, shape, 1.5)
        noise = np.clip(0.5 + 0.2 * noise, 0.0, 1.0)
        return noise if grey else np.repeat(noise[..., None], 3, axis=-1)
    photo = bank[rng.integers(len(bank))]
    zoom = np.exp(rng.uniform(np.log(0.5), np.log(2.5)))
    ch, cw = (min(int(np.ceil(n / zoom)), m) for n, m in zip(shape, photo.shape[:2]))
    y0, x0 = rng.integers(photo.shape[0] - ch + 1), rng.integers(photo.shape[1] - cw + 1)
    crop = photo[y0 : y0 + ch, x0 : x0 + cw][:: rng.choice((-1, 1)), :: rng.choice((-1, 1))]
    if grey and crop.ndim == 3:
        crop = crop @ _LUMA
    elif not grey and crop.ndim == 2:
        crop = np.repeat(crop[..., None], 3, axis=-1)
    out = transform.resize(crop.astype(np.float32) / 255.0, shape, order=1, anti_aliasing=False)
    return out.astype(np.float32)


# ---------------------------------------------------------------------------------------------------- canvas


@dataclass
class _Canvas:
    """Scene under construction: float image (H, W, C), C = 1 (grey) or 3, values nominally in [0, 1]."""

    rng: np.random.Generator
    size: int
    channels: int
    img: np.ndarray = field(init=False)
    labels: np.ndarray = field(init=False)
    next_id: int = 1
    contrast: float = 0.1  # the regime's nominal object contrast; noise is kept below it
    fields: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.img = np.zeros((self.size, self.size, self.channels), np.float32)
        self.labels = np.zeros((self.size, self.size), np.int32)

    @property
    def s(self) -> float:
        """Length scale: every pixel length in this module is for 256 x 256 and is multiplied by this."""
        return self.size / 256.0

    def texture(self, key: str) -> np.ndarray:
        """A named (H, W) float32 texture field, made on first use; ``"cloud:lesion"`` is a second "cloud".

        cloud: smooth multi-scale noise; grain: fine band-pass noise (chromatin, mucosa); photo: a photo crop;
        fibre: thin winding lines in [0, 1] (ER, vessels, stroma); speckle: ultrasound-like speckle.
        Noise fields are zero-mean unit-std.
        """
        if key not in self.fields:
            rng, shape, s = self.rng, (self.size, self.size), self.s
            base = key.split(":")[0]
            if base == "cloud":
                out = _spectral_noise(rng, shape, rng.uniform(1.6, 2.6))
            elif base == "grain":
                g = rng.uniform(1.5, 4.0) * s
                out = _spectral_noise(rng, shape, 0.5, coarsest=4 * g, finest=g)
            elif base == "photo":
                out = _photo_crop(rng, shape, grey=True)
                out = np.clip((out - out.mean()) / (out.std() + 1e-3), -3.0, 3.0)
            elif base == "fibre":
                lines = _spectral_noise(rng, shape, rng.uniform(1.8, 2.5), finest=2 * s)
                out = np.exp(-((lines / rng.uniform(0.04, 0.12)) ** 2))
            elif base == "speckle":
                out = _spectral_noise(rng, shape, 0.0, finest=rng.uniform(0.7, 1.5) * s)
                out = np.exp(0.5 * out) - 1.2
                out = (out - out.mean()) / out.std()
            else:
                raise KeyError(key)
            self.fields[key] = out.astype(np.float32)
        return self.fields[key]

    def patch(self, key: str, sl: tuple[slice, slice]) -> np.ndarray:
        """The texture under bounding box ``sl``, taken at a random periodic offset so objects differ."""
        fld = self.texture(key)
        oy, ox = self.rng.integers(self.size, size=2)
        rows = (np.arange(sl[0].start, sl[0].stop) + oy) % self.size
        cols = (np.arange(sl[1].start, sl[1].stop) + ox) % self.size
        return fld[np.ix_(rows, cols)]

    def colour(self, rgb: np.ndarray | list[float]) -> np.ndarray:
        """An RGB colour as a (C,) float32 vector for this canvas (luminance on grey canvases)."""
        rgb = np.asarray(rgb, np.float32)
        return rgb if self.channels == 3 else np.array([rgb @ _LUMA], np.float32)

    def direction(self, rgb: np.ndarray | list[float]) -> np.ndarray:
        """A colour direction as (C,) float32 with max |component| 1 (grey canvases: +-1)."""
        vec = self.colour(rgb)
        return vec / (np.abs(vec).max() + 1e-6)

    def textured(self, base: np.ndarray, direction: np.ndarray, amps: dict[str, float]) -> np.ndarray:
        """(H, W, C) image: colour ``base`` plus sum(amp * field) along ``direction``."""
        tone = np.zeros((self.size, self.size), np.float32)
        for key, amp in amps.items():
            tone += amp * self.texture(key)
        return base + tone[..., None] * direction

    def paint(self, shp: _Shape, value: np.ndarray, edge: float, label: bool = True) -> None:
        """Composite ``value`` ((h, w, C) or (C,)) over ``shp`` with an anti-aliased edge ``edge`` px wide.

        Later objects occlude earlier ones, in the image and (if ``label``) in the labels.
        """
        alpha = np.clip(0.5 - shp.d / max(edge, 0.3), 0.0, 1.0)[..., None]
        region = self.img[shp.sl]
        region += alpha * (value - region)
        if label:
            self.labels[shp.sl][shp.d <= 0] = self.next_id
            self.next_id += 1


@dataclass
class _Shape:
    """A star-convex blob on its bounding box ``sl``; all arrays are (h, w) float."""

    sl: tuple[slice, slice]
    d: np.ndarray  # radial distance to the outline in px, negative inside
    rho: np.ndarray  # distance from the centre / outline radius: 0 centre, 1 outline
    dy: np.ndarray  # offsets from the centre, px
    dx: np.ndarray
    angle: float  # long-axis direction, radians


def _star(
    rng: np.random.Generator,
    size: int,
    centre: np.ndarray,
    radius: float,
    elong: float = 1.0,
    rough: float = 0.0,
    margin: float = 3.0,
) -> _Shape | None:
    """An ellipse of mean radius ``radius`` and axis ratio ``elong`` whose radius is perturbed by random
    2nd-5th harmonics (total relative amplitude <= ``rough``), randomly rotated. None if it misses the image.

    Only its bounding box (plus ``margin`` px for edges, rims and halos) is evaluated.
    """
    a, b = radius * np.sqrt(elong), radius / np.sqrt(elong)
    angle = rng.uniform(0.0, np.pi)
    k = np.arange(2, 6)
    coef = rng.uniform(0.0, 1.0, 4) / np.sqrt(k) * np.exp(1j * rng.uniform(0.0, 2 * np.pi, 4))
    coef *= rough / max(np.abs(coef).sum(), 1e-6)
    reach = a * (1.0 + rough) + margin
    cy, cx = centre
    y0, y1 = max(int(cy - reach), 0), min(int(np.ceil(cy + reach)) + 1, size)
    x0, x1 = max(int(cx - reach), 0), min(int(np.ceil(cx + reach)) + 1, size)
    if y0 >= y1 or x0 >= x1:
        return None
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(cy)
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(cx)
    dist = np.hypot(dy, dx)
    z = (dx + 1j * dy) / np.maximum(dist, 1e-6)  # unit direction: the harmonics are powers of z
    zr = z * np.exp(-1j * angle)
    r = a * b / np.sqrt((b * zr.real) ** 2 + (a * zr.imag) ** 2 + 1e-12)
    pert, zk = np.ones(dist.shape), z
    for c in coef:
        zk = zk * z
        pert += (c * zk).real
    r = (r * pert).astype(np.float32)
    return _Shape((slice(y0, y1), slice(x0, x1)), dist - r, dist / r, dy, dx, angle)


def _layout(rng: np.random.Generator, size: int, radii: np.ndarray, cluster_p: float) -> np.ndarray:
    """(n, 2) centres (y, x): uniform (a little past the borders, so objects get cut), or, with probability
    ``cluster_p``, touching/overlapping an earlier object, which makes clusters."""
    centres = np.empty((len(radii), 2))
    for i, r in enumerate(radii):
        if i and rng.random() < cluster_p:
            j = rng.integers(i)
            ang = rng.uniform(0.0, 2 * np.pi)
            step = (radii[j] + r) * rng.uniform(0.75, 1.05)
            centres[i] = centres[j] + step * np.array([np.sin(ang), np.cos(ang)])
        else:
            centres[i] = rng.uniform(-0.05, 1.05, 2) * size
    return centres


def _band(d: np.ndarray, pos: float, width: float) -> np.ndarray:
    """Gaussian ring profile around distance ``pos`` (px, negative = inside the outline)."""
    return np.exp(-(((d - pos) / max(width, 0.5)) ** 2))


def _contrast(rng: np.random.Generator, low: float = 0.06, high: float = 0.7) -> float:
    """Object-background contrast, log-uniform so that faint objects are common."""
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _polarity(rng: np.random.Generator, level: float, contrast: float) -> float:
    """+1 (brighter objects) or -1 (darker), preferring the side with room left in [0, 1]."""
    room_up, room_down = 1.0 - level >= contrast, level >= contrast
    if room_up and room_down:
        return float(rng.choice((-1.0, 1.0)))
    return 1.0 if room_up or (not room_down and level < 0.5) else -1.0


# --------------------------------------------------------------------------------------------------- regimes


def _nuclei(rng: np.random.Generator, cv: _Canvas) -> None:
    """Many small nuclei: fluorescence, H&E-like or brightfield; clusters, chromatin, hollow nuclei."""
    s = cv.s
    c = cv.contrast = _contrast(rng)
    style = rng.choice(3, p=[0.55, 0.25, 0.2])
    if style == 0:  # fluorescence: one stain on a dark, slightly autofluorescent background
        obj_dir = cv.direction(_STAINS[rng.integers(len(_STAINS))])
        bg = rng.uniform(0.0, 0.15) * obj_dir
        cv.img[:] = cv.textured(bg, obj_dir, {"cloud": rng.uniform(0, 0.04), "grain": rng.uniform(0, 0.015)})
        sign = 1.0
    elif style == 1:  # H&E: purple nuclei on pink stroma with eosin fibres
        pink = np.array([rng.uniform(0.85, 0.98), rng.uniform(0.55, 0.8), rng.uniform(0.75, 0.92)])
        purple = np.array([rng.uniform(0.25, 0.5), rng.uniform(0.1, 0.3), rng.uniform(0.4, 0.7)])
        bg, obj_dir = cv.colour(pink), cv.direction(purple - pink)
        amps = {"cloud": rng.uniform(0.02, 0.08), "fibre": rng.uniform(0, 0.25)}
        cv.img[:] = cv.textured(bg, -cv.direction([0.1, 0.5, 0.2]), amps)  # eosin strands: pinker
        c = cv.contrast = max(c, 0.15)
        sign = 1.0
    else:  # brightfield / generic grey or tinted
        level = rng.uniform(0.2, 0.9)
        bg = level * cv.colour(rng.uniform(0.7, 1.0, 3))
        obj_dir = cv.direction(rng.uniform(0.3, 1.0, 3))
        cv.img[:] = cv.textured(bg, obj_dir, {"cloud": rng.uniform(0, 0.08), "photo": rng.uniform(0, 0.05)})
        sign = _polarity(rng, level, c)

    medium = rng.random() < 0.25
    n = int(rng.integers(4, 21) if medium else rng.integers(8, 61))
    r_mean = rng.uniform(12, 30) if medium else rng.uniform(4, 18)
    radii = np.clip(r_mean * rng.lognormal(0.0, 0.2, n), 4, 45) * s
    centres = _layout(rng, cv.size, radii, cluster_p=rng.choice((0.0, 0.3, 0.7)))
    edge = rng.uniform(0.6, 2.0) * s
    chromatin, hollow_p = rng.uniform(0.0, 0.4), rng.choice((0.0, 0.3))
    for centre, r in zip(centres, radii):
        shp = _star(rng, cv.size, centre, r, rng.uniform(1.0, 1.8), rng.uniform(0.0, 0.15), margin=edge + 2)
        if shp is None:
            continue
        amount = c * rng.uniform(0.5, 1.2)
        tone = amount * np.maximum(1.0 + chromatin * cv.patch("grain", shp.sl), 0.2)  # keep the polarity
        if rng.random() < hollow_p:  # dim interior, bright rim
            tone = 0.45 * tone + 0.7 * amount * _band(shp.d, -1.5 * s, 1.5 * s)
        cv.paint(shp, bg + sign * tone[..., None] * obj_dir, edge)


def _cells(rng: np.random.Generator, cv: _Canvas) -> None:
    """Fewer, larger, irregular cells: fluorescent cytoplasm, phase contrast, membrane rings or filled."""
    s = cv.s
    c = cv.contrast = _contrast(rng)
    style = rng.choice(4, p=[0.35, 0.25, 0.2, 0.2])  # fluorescence, phase contrast, membrane ring, filled
    if style in (0, 2) and rng.random() < 0.8:  # dark background, stained cells
        obj_dir = cv.direction(_STAINS[rng.integers(len(_STAINS))])
        level, sign = rng.uniform(0.0, 0.15), 1.0
        bg = level * obj_dir
    else:
        level = rng.uniform(0.3, 0.8) if style == 1 else rng.uniform(0.1, 0.9)
        obj_dir = cv.direction(rng.uniform(0.3, 1.0, 3))
        bg = level * cv.colour(rng.uniform(0.75, 1.0, 3))
        sign = _polarity(rng, level, c)
    cv.img[:] = cv.textured(bg, obj_dir, {"cloud": rng.uniform(0, 0.06), "photo": rng.uniform(0, 0.04)})

    n = int(rng.integers(3, 26))
    radii = rng.uniform(12, 45, n) * s
    if rng.random() < 0.3:
        radii[: rng.integers(1, 3)] = rng.uniform(30, 90) * s
    centres = _layout(rng, cv.size, radii, cluster_p=rng.choice((0.0, 0.5, 0.9)))
    edge, w = rng.uniform(0.6, 2.5) * s, rng.uniform(1.0, 3.5) * s
    texture = rng.uniform(0.0, 0.5)
    for centre, r in zip(centres, radii):
        shp = _star(rng, cv.size, centre, r, rng.uniform(1.0, 2.5), rng.uniform(0.05, 0.3), margin=3 * w + 2)
        if shp is None:
            continue
        amount = c * rng.uniform(0.6, 1.2)
        if style == 1:  # phase contrast: slightly darker body, dark inner rim, bright outer halo (unlabelled)
            body = -0.3 * (1 + texture * cv.patch("cloud", shp.sl))
            tone = amount * (body - 0.6 * _band(shp.d, -w, w))
            halo = 0.8 * amount * _band(shp.d, 1.5 * w, w) * (shp.d > 0)
            cv.img[shp.sl] += halo[..., None] * obj_dir
        elif style == 2:  # membrane-stained ring, interior close to background
            tone = amount * (rng.uniform(-0.15, 0.2) + _band(shp.d, -w, 0.7 * w))
        else:
            tone = amount * np.maximum(1.0 + texture * cv.patch("cloud", shp.sl), 0.2)
            if rng.random() < 0.5:  # brighter unlabelled nucleus inside the cell
                oy, ox = rng.uniform(-0.25, 0.25, 2) * r
                inner = np.clip((0.4 * r - np.hypot(shp.dy - oy, shp.dx - ox)) / (1.5 * s), 0.0, 1.0)
                tone = tone + rng.uniform(0.3, 0.8) * amount * inner
        cv.paint(shp, bg + sign * tone[..., None] * obj_dir, edge)


def _organelles(rng: np.random.Generator, cv: _Canvas) -> None:
    """EM cytoplasm with mitochondria (double membrane, cristae), vesicles, granules, maybe a nucleus."""
    s = cv.s
    c = cv.contrast = _contrast(rng, 0.1, 0.6)
    level = rng.uniform(0.35, 0.75)
    sign = -1.0 if rng.random() < 0.8 else 1.0  # EM: membranes and dense matter are usually dark
    one = cv.direction([1.0, 1.0, 1.0])
    bg = level * cv.colour(rng.uniform(0.85, 1.0, 3))
    cv.img[:] = cv.textured(
        bg,
        one,
        {"cloud": rng.uniform(0.02, 0.1), "grain": rng.uniform(0.02, 0.08), "photo": rng.uniform(0, 0.06)},
    )
    er = rng.uniform(0.0, 0.25) * c * cv.texture("fibre")  # ER-like unlabelled membranes
    cv.img -= er[..., None] * one

    edge, w = rng.uniform(0.6, 1.8) * s, rng.uniform(0.8, 2.0) * s
    if rng.random() < 0.3:  # a large nucleus first, so organelles may overlap it
        centre = rng.uniform(0.1, 0.9, 2) * cv.size
        shp = _star(rng, cv.size, centre, rng.uniform(35, 85) * s, 1.3, 0.15, margin=3 * w)
        if shp is not None:
            tone = c * (0.4 + 0.3 * cv.patch("grain", shp.sl) + 1.2 * _band(shp.d, -w, w))
            cv.paint(shp, bg + sign * tone[..., None] * one, edge)
    n = int(rng.integers(3, 41))
    types = rng.choice(3, size=n, p=[0.45, 0.35, 0.2])  # mitochondrion, vesicle, granule
    radii = np.where(types == 0, rng.uniform(8, 28, n), rng.uniform(4, 14, n)) * s
    centres = _layout(rng, cv.size, radii, cluster_p=rng.uniform(0.0, 0.5))
    for kind, centre, r in zip(types, centres, radii):
        elong = rng.uniform(1.8, 4.0) if kind == 0 else rng.uniform(1.0, 1.3)
        shp = _star(rng, cv.size, centre, r, elong, rng.uniform(0.0, 0.15), margin=3 * w)
        if shp is None:
            continue
        amount = c * rng.uniform(0.6, 1.2)
        if kind == 0:  # double membrane + cristae stripes across the long axis
            period = rng.uniform(3, 7) * s
            stripes = np.cos(2 * np.pi * (shp.dx * np.cos(shp.angle) + shp.dy * np.sin(shp.angle)) / period)
            rims = _band(shp.d, -0.7 * w, 0.6 * w) + 0.6 * _band(shp.d, -2.2 * w, 0.6 * w)
            tone = amount * (0.5 + 0.3 * rng.uniform(0, 1) * stripes + rims)
        elif kind == 1:  # vesicle: membrane ring, lumen near or lighter than background
            tone = amount * (rng.uniform(-0.4, 0.2) + 1.2 * _band(shp.d, -w, 0.7 * w))
        else:  # dense granule / lipid droplet
            tone = amount * (1.0 + 0.2 * cv.patch("grain", shp.sl)) * rng.choice((1.0, -0.7), p=[0.8, 0.2])
        cv.paint(shp, bg + sign * tone[..., None] * one, edge)


def _membranes(rng: np.random.Generator, cv: _Canvas) -> None:
    """Tissue of warped Voronoi cells with thin membranes; labels are cell interiors, plus organelle blobs."""
    s, size = cv.s, cv.size
    n = int(rng.integers(6, 46))
    if rng.random() < 0.5:
        seeds = rng.uniform(0, size, (n, 2))
    else:  # jittered grid: more regular epithelium
        g = int(np.sqrt(n))
        grid = (np.stack(np.meshgrid(np.arange(g), np.arange(g), indexing="ij"), -1).reshape(-1, 2) + 0.5) / g
        seeds = (grid + rng.normal(0, 0.25 / g, grid.shape)) * size
    seeds = np.clip(seeds, 0, size - 1).astype(int)
    seed_img = np.zeros((size, size), np.int32)
    seed_img[seeds[:, 0], seeds[:, 1]] = np.arange(1, len(seeds) + 1)
    # Nearest seed via one EDT (Voronoi), sampled through a smooth random warp so membranes wiggle.
    _, (iy, ix) = ndimage.distance_transform_edt(seed_img == 0, return_indices=True)
    warp = rng.uniform(2.0, 14.0) * s
    yy = np.clip(np.arange(size)[:, None] + warp * cv.texture("cloud"), 0, size - 1).astype(int)
    xx = np.clip(np.arange(size)[None, :] + warp * cv.texture("cloud:warp"), 0, size - 1).astype(int)
    cells = seed_img[iy, ix][yy, xx]
    edges = np.zeros((size, size), bool)
    edges[1:] |= cells[1:] != cells[:-1]
    edges[:, 1:] |= cells[:, 1:] != cells[:, :-1]
    to_membrane = ndimage.distance_transform_edt(~edges)
    w = rng.uniform(0.7, 2.5) * s
    membrane = np.exp(-((to_membrane / w) ** 2))

    c = cv.contrast = _contrast(rng, 0.15, 0.7)
    fluorescent = cv.channels == 3 and rng.random() < 0.6  # bright membranes on dark interiors
    if fluorescent:
        mem_dir = cv.direction(_STAINS[rng.integers(len(_STAINS))])
        level, sign = rng.uniform(0.02, 0.12), 1.0
    else:
        mem_dir = cv.direction(rng.uniform(0.8, 1.0, 3))
        level, sign = rng.uniform(0.35, 0.8), -1.0
    bg = level * cv.colour(rng.uniform(0.85, 1.0, 3))
    cell_tone = rng.uniform(-0.3, 0.3, len(seeds) + 1) * c  # each cell its own shade
    texture = rng.uniform(0.0, 0.3) * c * cv.texture("grain") + rng.uniform(0, 0.05) * cv.texture("cloud")
    tone = cell_tone[cells] + texture
    tone = tone * (1 - membrane) + sign * c * membrane
    cv.img[:] = bg + tone[..., None] * mem_dir
    cv.labels[:] = np.where(to_membrane > 0.8 * w, cells, 0)
    cv.next_id = len(seeds) + 1

    # Organelle blobs inside some cells, labelled as their own objects.
    edge, dark = rng.uniform(0.6, 1.5) * s, -1.0 if not fluorescent else 1.0
    for seed in seeds[rng.random(len(seeds)) < rng.uniform(0.0, 0.5)]:
        for _ in range(rng.integers(1, 3)):
            centre = seed + rng.normal(0.0, 6 * s, 2)
            r = rng.uniform(3, 10) * s
            shp = _star(rng, size, centre, r, rng.uniform(1.0, 2.5), 0.1, margin=edge + 2)
            if shp is not None:
                cv.paint(shp, bg + dark * c * rng.uniform(0.5, 1.2) * mem_dir, edge)


def _lesion(rng: np.random.Generator, cv: _Canvas) -> None:
    """One or two large low-contrast objects differing from the tissue mostly in texture and colour:
    endoscopy (with specular highlights and vignetting), dermoscopy-like or ultrasound-like speckle."""
    s, size = cv.s, cv.size
    style = rng.choice(3, p=[0.6, 0.2, 0.2])  # endoscopy, dermoscopy, ultrasound
    if style == 0:
        tissue = np.array([rng.uniform(0.6, 0.9), rng.uniform(0.22, 0.45), rng.uniform(0.18, 0.4)])
        tissue_amps = {"cloud": rng.uniform(0.05, 0.15), "grain": rng.uniform(0.01, 0.05)}
    elif style == 1:
        tissue = np.array([rng.uniform(0.8, 0.95), rng.uniform(0.6, 0.75), rng.uniform(0.5, 0.65)])
        tissue_amps = {"cloud": rng.uniform(0.02, 0.08), "grain": rng.uniform(0.0, 0.03)}
    else:
        tissue = np.full(3, rng.uniform(0.25, 0.55))
        tissue_amps = {"cloud": rng.uniform(0.03, 0.1), "speckle": rng.uniform(0.08, 0.2)}
    bg = cv.colour(tissue)
    shade = cv.direction(tissue)
    cv.img[:] = cv.textured(bg, shade, tissue_amps)
    if style == 0:  # vessels: darker, redder lines
        cv.img -= (rng.uniform(0.05, 0.2) * cv.texture("fibre"))[..., None] * cv.direction([0.3, 1.0, 0.8])

    for _ in range(rng.integers(1, 3)):
        r = rng.uniform(30, 100) * s
        centre = rng.uniform(0.2, 0.8, 2) * size
        edge = rng.uniform(1.0, 5.0) * s
        shp = _star(rng, size, centre, r, rng.uniform(1.0, 1.6), rng.uniform(0.05, 0.3), margin=edge + 2)
        assert shp is not None  # centred well inside the image
        if style == 1:  # pigmented lesion: darker, browner, with a network texture
            colour = cv.colour([rng.uniform(0.3, 0.6), rng.uniform(0.18, 0.35), rng.uniform(0.1, 0.25)])
            tex = 0.1 * cv.patch("grain:lesion", shp.sl) + 0.05 * cv.patch("cloud:lesion", shp.sl)
        else:  # hue shift and a small brightness change; the texture carries most of the edge
            hue = rng.uniform(0.85, 1.15, 1 if style == 2 else 3)  # ultrasound stays grey
            colour = bg * cv.colour(np.broadcast_to(hue, 3)) + rng.uniform(-0.12, 0.12)
            keys = ("grain:lesion", "cloud:lesion", "photo", "speckle:lesion")
            key = keys[rng.integers(4 if style == 2 else 3)]  # speckle only for ultrasound
            tex = rng.uniform(0.04, 0.15) * cv.patch(key, shp.sl) * (0.5 if key == "photo" else 1.0)
        dome = np.sqrt(np.clip(1.0 - shp.rho**2, 0.0, 1.0))  # polyp as a lit dome
        ang = rng.uniform(0, 2 * np.pi)
        light = (np.cos(ang) * shp.dx + np.sin(ang) * shp.dy) / r
        tone = 1.0 + tex + rng.uniform(0.0, 0.15) * (dome - 0.5) + rng.uniform(0.0, 0.1) * light
        cv.paint(shp, colour * tone[..., None], edge)

    if style == 0:
        # Specular highlights (unlabelled): saturated spots where a fine field peaks, more on the lesions.
        spots = _spectral_noise(rng, (size, size), 0.5, coarsest=40 * s, finest=rng.uniform(2.0, 6.0) * s)
        peaks = spots + 1.5 * (cv.labels > 0) * rng.uniform(0.0, 1.0)
        spec = np.clip((peaks - rng.uniform(2.6, 3.8)) * 2.0, 0.0, 1.0)
        cv.img += spec[..., None] * (1.2 - cv.img)
    if style != 2:  # endoscope / dermatoscope vignetting, sometimes a black circular field of view
        yy, xx = np.mgrid[:size, :size] / (size / 2.0) - 1.0
        rad = np.hypot(yy, xx)
        cv.img *= (1.0 - rng.uniform(0.0, 0.5) * rad**2)[..., None]
        if rng.random() < 0.35:
            outside = rad > rng.uniform(1.0, 1.35)
            cv.img[outside] = 0.0
            cv.labels[outside] = 0


def _blobs(rng: np.random.Generator, cv: _Canvas) -> None:
    """Catch-all: any background, size regime, fill (flat/texture/photo), rim and colour."""
    s, size = cv.s, cv.size
    c = cv.contrast = _contrast(rng)
    level = rng.uniform(0.05, 0.95)
    bg_style = rng.choice(3)  # flat, noise, photo
    if bg_style == 2:
        photo = _photo_crop(rng, (size, size), grey=cv.channels == 1)
        photo = photo.reshape(size, size, cv.channels)
        mix = rng.uniform(0.2, 1.0) * min(1.0, 0.3 + 2.0 * c)  # clutter no more than a few times the objects
        cv.img[:] = level * (1 - mix) + mix * photo
        bg = cv.img.mean(axis=(0, 1))
    else:
        bg = level * cv.colour(rng.uniform(0.5, 1.0, 3))
        amps = {} if bg_style == 0 else {"cloud": rng.uniform(0.02, 0.2), "grain": rng.uniform(0.0, 0.05)}
        cv.img[:] = cv.textured(bg, cv.direction([1.0, 1.0, 1.0]), amps)
        cv.img += rng.uniform(0.0, 0.01) * rng.standard_normal(cv.img.shape, np.float32)

    regime = rng.choice(4)  # many small, few medium, one or two large, mixed
    n = int(rng.integers(*((10, 61), (2, 13), (1, 3), (3, 30))[regime]))
    bounds = ((4, 18), (12, 45), (30, 90), (4, 70))[regime]
    radii = np.exp(rng.uniform(*np.log(bounds), n)) * s
    centres = _layout(rng, size, radii, cluster_p=rng.choice((0.0, 0.3, 0.6)))
    bg_level = float(np.mean(bg))
    sign = _polarity(rng, bg_level, c)
    can_flip = c <= bg_level <= 1.0 - c  # objects of the other polarity only where they can show
    per_object_colour = cv.channels == 3 and rng.random() < 0.5
    scene_dir = cv.direction(rng.uniform(0.2, 1.0, 3))
    edge, w = rng.uniform(0.5, 3.0) * s, rng.uniform(1.0, 4.0) * s
    rim_p = rng.choice((0.0, 0.3, 0.8))
    for centre, r in zip(centres, radii):
        shp = _star(rng, size, centre, r, rng.uniform(1.0, 3.0), rng.uniform(0.0, 0.35), margin=2 * w + 2)
        if shp is None:
            continue
        obj_dir = cv.direction(rng.uniform(0.0, 1.0, 3) + 0.05) if per_object_colour else scene_dir
        obj_sign = -sign if can_flip and rng.random() < 0.15 else sign
        amount = c * rng.uniform(0.6, 1.3)
        fill = rng.choice(4)  # flat, cloud, grain, photo
        tone = np.full(shp.d.shape, amount, np.float32)
        if fill:
            key = ("cloud", "grain:obj", "photo:obj")[fill - 1]
            tone *= np.maximum(1.0 + rng.uniform(0.2, 0.8) * cv.patch(key, shp.sl), 0.1)
        if rng.random() < rim_p:
            tone += rng.uniform(-1.0, 1.0) * amount * _band(shp.d, -w, w)
        cv.paint(shp, bg + obj_sign * tone[..., None] * obj_dir, edge)


_REGIMES: dict[str, Callable[[np.random.Generator, _Canvas], None]] = {
    "nuclei": _nuclei,
    "cells": _cells,
    "organelles": _organelles,
    "membranes": _membranes,
    "lesion": _lesion,
    "blobs": _blobs,
}


# ------------------------------------------------------------------------------------------ finishing touches


def _clean_labels(labels: np.ndarray) -> np.ndarray:
    """Split ids that occlusion cut into pieces, drop pieces < _MIN_FRAGMENT px, number 1..N; (H, W) int32."""
    parts = measure.label(labels, background=0, connectivity=1)  # equal-valued 4-connected regions
    small = np.bincount(parts.ravel()) < _MIN_FRAGMENT
    small[0] = False
    parts[small[parts]] = 0
    return segmentation.relabel_sequential(parts)[0].astype(np.int32)


def _degrade(rng: np.random.Generator, img: np.ndarray, contrast: float) -> np.ndarray:
    """Uneven illumination, blur, noise and gamma on an (H, W, C) float image; returns (H, W, 3) uint8.

    The per-pixel noise std stays below ~0.6 x ``contrast`` so that objects remain (just) visible.
    """
    h, w = img.shape[:2]
    y = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None]
    x = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :]
    cy, cx, cxy, cyy, cxx = rng.normal(0.0, rng.uniform(0.0, 0.3), 5)
    gain = np.exp(cy * y + cx * x + cxy * x * y + cyy * (y * y - 1 / 3) + cxx * (x * x - 1 / 3))
    img = np.clip(img * gain[..., None], 0.0, None)
    sigma = rng.uniform(0.0, 2.0) if rng.random() < 0.7 else 0.0
    if sigma > 0.3:
        img = ndimage.gaussian_filter(img, (sigma, sigma, 0))
    noise = rng.choice(3)  # Gaussian, Poisson, both
    if noise >= 1:
        peak = np.exp(rng.uniform(np.log(20), np.log(500)))  # photons at full scale
        peak = max(peak, float(img.mean()) / (0.6 * contrast) ** 2)  # Poisson std sqrt(mean / peak)
        img = rng.poisson(img * peak).astype(np.float32) / peak
    if noise != 1:
        sd = rng.uniform(0.0, min(0.06, 0.6 * contrast))
        img = img + sd * rng.standard_normal(img.shape, np.float32)
    img = np.clip(img, 0.0, 1.0) ** np.exp(rng.uniform(np.log(0.7), np.log(1.5)))
    if rng.random() < 0.3:  # viewer-style auto-contrast
        lo, hi = np.percentile(img, (0.5, 99.5))
        img = np.clip((img - lo) / max(hi - lo, 1e-3), 0.0, 1.0)
    out = (img * 255.0 + 0.5).astype(np.uint8)
    return np.repeat(out, 3, axis=-1) if out.shape[-1] == 1 else out


# ----------------------------------------------------------------------------------------------------- public


def make_scene(rng: np.random.Generator, size: int = 256, kind: str | None = None) -> Scene:
    """One random ``size`` x ``size`` scene; ``kind=None`` picks a regime from ``SCENE_KINDS`` at random.

    Deterministic given the rng state. The scene's ``image`` is (size, size, 3) uint8 and its ``labels``
    (size, size) int32 with ids 1..N (N >= 1, at least one object of >= 20 px).
    """
    if kind is None:
        kind = SCENE_KINDS[rng.integers(len(SCENE_KINDS))]
    elif kind not in SCENE_KINDS:
        raise ValueError(f"unknown scene kind {kind!r}; expected one of {SCENE_KINDS}")
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    for _ in range(_MAX_TRIES):  # a regime occasionally leaves nothing large enough: draw again
        cv = _Canvas(rng, size, 3 if rng.random() < _COLOUR_P[kind] else 1)
        _REGIMES[kind](rng, cv)
        labels = _clean_labels(cv.labels)
        if labels.max() > 0 and np.bincount(labels.ravel())[1:].max() >= _MIN_OBJECT:
            return Scene(_degrade(rng, cv.img, cv.contrast), labels, kind)
    raise RuntimeError(f"could not make a {kind!r} scene with an object of >= {_MIN_OBJECT} px")


def make_scenes(n: int, seed: int, size: int = 256, kind: str | None = None) -> list[Scene]:
    """``n`` scenes as from ``make_scene`` ((size, size, 3) uint8 images, (size, size) int32 labels).

    Scene ``i`` comes from ``np.random.default_rng([seed, i])``, so any one of them can be remade alone.
    """
    return [make_scene(np.random.default_rng([seed, i]), size, kind) for i in range(n)]
