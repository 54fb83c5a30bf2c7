"""Image embeddings: encode each plane once (tiled when larger than the model input) and cache it on disk in zarr.

A cache store is keyed by the encoder's identity, the image content and the preprocessing/tiling parameters. Each
plane's embedding is marked done only after it is fully written, with a checksum of its values, so a store left by an
interrupted run is completed rather than trusted and a plane whose data changed on disk is encoded again; a store whose
key or layout does not match is rebuilt (or refused with ``strict=True``). Processes sharing a store take turns
through a lock file beside it. A cache folder that cannot be written leaves the embeddings in memory, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .decoder import normalize_pixels
from .embedding_cache import CacheError, enforce_limit, mark_used
from .image import ImageError, Volume
from .models.registry import SamModel, cache_dir

log = logging.getLogger(__name__)
CACHE_FORMAT = 2  # 2: per-plane checksums
LOCK_TIMEOUT_S = 300.0


class CacheWarning(UserWarning):
    """The embedding cache could not be used as asked; embeddings stay in memory (the message says why)."""


def features_checksum(features: np.ndarray) -> int:
    """A 63-bit checksum of a plane's features (stored as int64 beside them)."""
    digest = hashlib.blake2b(np.ascontiguousarray(features, np.float32).tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass(frozen=True)
class Tiling:
    """How a plane is cut for the encoder.

    mode "auto": planes larger than the model input are cut into overlapping tiles at native resolution; smaller ones
    are resized to the input (SAM's longest-side resize). "never": always resize the whole plane.
    """

    mode: str = "auto"
    overlap: int = 64

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "never"):
            raise ValueError(f"tiling mode must be 'auto' or 'never', got {self.mode!r}")
        if self.overlap < 0:
            raise ValueError(f"tile overlap must be ≥ 0, got {self.overlap}")


@dataclass(frozen=True)
class PlaneEmbedding:
    """The encoder's output for one plane.

    features: ``(T, C, h, w)`` float32, one per tile. tiles: ``(T, 4)`` int (row0, col0, row1, col1) in plane pixels.
    scale: encoder-input pixels per plane pixel (1.0 when tiled). input_size: the encoder's square input side.
    """

    features: torch.Tensor
    tiles: np.ndarray
    scale: float
    plane_shape: tuple[int, int]
    input_size: int


def tile_grid(shape: tuple[int, int], size: int, tiling: Tiling) -> tuple[np.ndarray, float]:
    """Tiles (row0, col0, row1, col1) covering a plane of ``shape``, and the resize scale."""
    h, w = shape
    if max(h, w) <= size or tiling.mode == "never":
        return np.array([[0, 0, h, w]]), size / max(h, w)
    overlap = min(tiling.overlap, size // 2)

    def starts(length: int) -> np.ndarray:
        if length <= size:
            return np.array([0])
        n = int(np.ceil((length - overlap) / (size - overlap)))
        return np.round(np.linspace(0, length - size, n)).astype(int)

    tiles = [(r, c, min(r + size, h), min(c + size, w)) for r in starts(h) for c in starts(w)]
    return np.array(tiles), 1.0


def tile_inputs(plane: np.ndarray, tiles: np.ndarray, scale: float) -> list[torch.Tensor]:
    """Each tile of an ``(H, W, 3)`` plane as ``(1, 3, h, w)`` float in [0, 255], resized by ``scale``."""
    out = []
    for r0, c0, r1, c1 in tiles:
        crop = torch.from_numpy(np.ascontiguousarray(plane[r0:r1, c0:c1])).permute(2, 0, 1)[None]
        if scale != 1.0:
            new = (round((r1 - r0) * scale), round((c1 - c0) * scale))
            crop = F.interpolate(crop, size=new, mode="bilinear", align_corners=False, antialias=scale < 1)
        out.append(crop)
    return out


def _pad_to(x: torch.Tensor, size: int) -> torch.Tensor:
    return F.pad(x, (0, size - x.shape[-1], 0, size - x.shape[-2]))


@torch.inference_mode()
def encode_tiles(model: SamModel, inputs: list[torch.Tensor], batch_size: int = 4) -> torch.Tensor:
    """Encode tiles given as ``(1, 3, h, w)`` in [0, 255] with h, w ≤ the model input; returns ``(T, C, gh, gw)``.

    Each tile is standardised, then zero-padded bottom/right to the input size (SAM's order).
    """
    sam, size = model.sam, model.img_size
    ready = [_pad_to(normalize_pixels(sam, t.to(model.device, torch.float32)), size) for t in inputs]
    feats = [
        sam.image_encoder(torch.cat(ready[i : i + batch_size])).float().cpu() for i in range(0, len(ready), batch_size)
    ]
    return torch.cat(feats)


class EmbeddingStore:
    """Lazily encoded, disk-cached embeddings of every plane of a ``Volume`` for one model.

    ``cache_root=None`` uses the user cache folder; ``cache_root=False`` keeps embeddings in memory only, as does a
    folder that cannot be used (with a ``CacheWarning``; ``path`` is then None).
    """

    def __init__(
        self,
        model: SamModel,
        volume: Volume,
        *,
        tiling: Tiling | None = None,
        cache_root: str | Path | bool | None = None,
        strict: bool = False,
        batch_size: int = 4,
    ) -> None:
        self.model = model
        self.volume = volume
        self.tiling = tiling or Tiling()
        self.batch_size = batch_size
        self.strict = strict
        self.tiles, self.scale = tile_grid(volume.plane_shape, model.img_size, self.tiling)
        self.key = self._key()
        self._memory: dict[int, torch.Tensor] = {}
        self._group = None
        self._lock = None
        self.path = None
        if cache_root is not False:
            explicit = cache_root not in (None, True)
            root = Path(cache_root) if explicit else cache_dir() / "embeddings"
            self._setting = "--cache-dir (cache_root)" if explicit else "SAMTUNE_CACHE_DIR (or --cache-dir)"
            try:
                if str(root).startswith("~"):
                    raise OSError(f"{root} is not a folder: there is no home directory to put it in")
                root.mkdir(parents=True, exist_ok=True)
                self.path = root / f"{self.key}.zarr"
                self._lock = _file_lock(root / f"{self.key}.zarr.lock")
                with self._lock:
                    self._group = self._open(strict)
                    mark_used(self.path)
                enforce_limit(root)
            except OSError as error:
                self._to_memory(root, error)

    def _key(self) -> str:
        params = {
            "format": CACHE_FORMAT,
            "encoder": self.model.encoder_id,
            "image": self.volume.content_hash(),
            "normalisation": [self.volume.low, self.volume.high],
            "tiling": [self.tiling.mode, self.tiling.overlap],
            "input_size": self.model.img_size,
        }
        return hashlib.blake2b(json.dumps(params, sort_keys=True).encode(), digest_size=16).hexdigest()

    def _layout(self) -> dict:
        return {
            "key": self.key,
            "format": CACHE_FORMAT,
            "tiles": self.tiles.tolist(),
            "scale": self.scale,
            "plane_shape": list(self.volume.plane_shape),
            "n_planes": self.volume.n_planes,
        }

    def _open(self, strict: bool):
        import zarr

        if self.path.exists():
            problem = None
            try:
                group = zarr.open_group(str(self.path), mode="a")
                attrs = dict(group.attrs)
                if {k: attrs.get(k) for k in self._layout()} != self._layout():
                    problem = "its key or layout does not match this image and model"
                elif group["features"].shape[:2] != (self.volume.n_planes, len(self.tiles)):
                    problem = "its feature array has the wrong shape"
                elif group["done"][:].shape != (self.volume.n_planes,):
                    problem = "its array of finished planes has the wrong shape"
                elif group["checksums"][:].shape != (self.volume.n_planes,):
                    problem = "its array of checksums has the wrong shape"
                else:
                    return group
            except Exception as error:  # unreadable metadata, missing arrays…
                problem = f"it cannot be read ({error})"
            if strict:
                raise CacheError(
                    f"embedding cache {self.path} is unusable: {problem}. Delete it, or open without strict=True "
                    "to rebuild it."
                )
            log.warning("rebuilding embedding cache %s: %s", self.path, problem)
            shutil.rmtree(self.path, ignore_errors=True)
        return self._create()

    def _create(self):
        import zarr

        arch = self.model.architecture
        grid = arch.embedding_size
        group = zarr.open_group(str(self.path), mode="w")
        group.create_array(
            "features",
            shape=(self.volume.n_planes, len(self.tiles), arch.prompt_embed_dim, grid, grid),
            chunks=(1, 1, arch.prompt_embed_dim, grid, grid),
            dtype="float32",
            fill_value=0.0,
        )
        group.create_array("checksums", shape=(self.volume.n_planes,), dtype="int64", fill_value=0)
        group.create_array("done", shape=(self.volume.n_planes,), dtype="bool", fill_value=False)
        group.attrs.update(self._layout())
        return group

    def _to_memory(self, root: Path, error: OSError) -> None:
        """Keep embeddings in memory from now on, saying why and which setting picks the cache folder."""
        reason = error.strerror or str(error)
        warnings.warn(
            CacheWarning(
                f"embedding cache folder {root} cannot be used ({reason}); embeddings are kept in memory only. "
                f"Set {self._setting} to a writable folder to cache them."
            ),
            stacklevel=3,
        )
        self._group = None
        self._lock = None
        self.path = None

    def _check_index(self, index: int) -> None:
        n = self.volume.n_planes
        if not isinstance(index, (int, np.integer)) or not 0 <= index < n:
            raise IndexError(f"plane {index!r} does not exist: the image has {n} plane(s), numbered 0 to {n - 1}")

    def _done(self, index: int) -> bool:
        try:
            with self._lock:
                return bool(self._group["done"][index])
        except OSError as error:
            self._to_memory(self.path.parent, error)
            return False

    def is_cached(self, index: int) -> bool:
        self._check_index(index)
        if index in self._memory:
            return True
        return self._group is not None and self._done(index)

    def plane(self, index: int) -> PlaneEmbedding:
        """The embedding of plane ``index``, read from the cache or computed (and cached) now."""
        self._check_index(index)
        if index in self._memory:
            features = self._memory[index]
        elif self._group is not None and self._done(index):
            features = self._read(index)
        else:
            features = self._encode(index)
        self._memory = {index: features}  # keep only the last plane in memory: stacks can be large
        return PlaneEmbedding(features, self.tiles, self.scale, self.volume.plane_shape, self.model.img_size)

    def _read(self, index: int) -> torch.Tensor:
        try:
            with self._lock:
                features = np.asarray(self._group["features"][index])
                expected = int(self._group["checksums"][index])
            if features_checksum(features) != expected:
                raise ValueError("its values do not match the checksum written with them (data changed on disk)")
            return torch.from_numpy(features)
        except Exception as error:  # a damaged or missing chunk (disk error, a copy cut short): encode it again
            if self.strict:
                raise CacheError(
                    f"embedding cache {self.path} is unusable: plane {index} cannot be read ({error}). "
                    "Delete it, or open without strict=True to rebuild it."
                ) from error
            log.warning("re-encoding plane %d of embedding cache %s: %s", index, self.path, error)
            return self._encode(index)

    def _encode(self, index: int) -> torch.Tensor:
        inputs = tile_inputs(self.volume.plane(index), self.tiles, self.scale)
        features = encode_tiles(self.model, inputs, self.batch_size)
        if not torch.isfinite(features).all():
            raise ImageError(
                f"the encoder gave NaN or infinite embeddings for plane {index} (image values mapped from "
                f"{self.volume.low:.4g}..{self.volume.high:.4g}): rescale the image (e.g. to 0..1) or check the "
                "model's weights; nothing was cached"
            )
        if self._group is not None:
            self._write(index, features.numpy())
        self._memory = {index: features}  # so that encode_all() without a disk cache is not wasted
        return features

    def _write(self, index: int, features: np.ndarray) -> None:
        try:
            with self._lock:
                self._group["features"][index] = features
                self._group["checksums"][index] = features_checksum(features)
                self._group["done"][index] = True  # only after the features are fully written
            mark_used(self.path)  # a long encode keeps its store safe from eviction by other processes
        except OSError as error:  # disk full, folder made read-only meanwhile…
            if self.strict:
                raise CacheError(f"embedding cache {self.path} cannot be written: {error}") from error
            self._to_memory(self.path.parent, error)

    def encode_all(
        self, planes: list[int] | None = None, should_stop: Callable[[], bool] = lambda: False
    ) -> Iterator[dict]:
        """Encode (or find cached) every plane; yields ``{"done": i, "total": n, "cached": bool}`` after each."""
        planes = list(range(self.volume.n_planes)) if planes is None else planes
        for i, index in enumerate(planes):
            if should_stop():
                return
            cached = self.is_cached(index)
            if not cached:
                self._encode(index)
            yield {"done": i + 1, "total": len(planes), "cached": cached, "plane": index}


def _file_lock(path: Path):
    """An inter-process lock on ``path`` (re-entrant within one store)."""
    from filelock import FileLock

    return FileLock(str(path), timeout=LOCK_TIMEOUT_S)
