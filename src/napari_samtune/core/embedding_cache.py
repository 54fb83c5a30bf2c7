"""The embedding cache folder as a whole: what it holds, clearing it, and keeping it under a size limit.

Each image/model pair has one zarr store ``<key>.zarr`` (see ``embeddings.EmbeddingStore``) with a lock file beside
it. Opening a store marks it used (its folder's modification time); when the folder grows past the limit
(``SAMTUNE_CACHE_MAX_GB``, default 20) the least recently used stores are removed, never one used in the last
``RECENT_S`` seconds, which another process may still be reading.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import SamtuneError
from .models.registry import cache_dir

DEFAULT_MAX_GB = 20.0
RECENT_S = 15 * 60


class CacheError(SamtuneError, RuntimeError):
    """An embedding cache that cannot be used; the message names the store and what to do."""


@dataclass(frozen=True)
class StoreInfo:
    path: Path
    size_bytes: int
    last_used: float  # seconds since the epoch


def embeddings_root(cache_root: str | os.PathLike | None = None) -> Path:
    """The embedding cache folder: ``cache_root``, else ``<SAMTUNE_CACHE_DIR or the user cache>/embeddings``."""
    return Path(cache_root) if cache_root is not None else cache_dir() / "embeddings"


def max_cache_bytes() -> int:
    """The size limit from ``SAMTUNE_CACHE_MAX_GB`` (default 20 GB; 0 or less: no limit)."""
    text = os.environ.get("SAMTUNE_CACHE_MAX_GB", "")
    try:
        gigabytes = float(text) if text.strip() else DEFAULT_MAX_GB
    except ValueError:
        raise CacheError(f"SAMTUNE_CACHE_MAX_GB must be a number of gigabytes, got {text!r}") from None
    return int(gigabytes * 1e9) if gigabytes > 0 else 0


def list_stores(root: str | os.PathLike) -> list[StoreInfo]:
    """The stores in ``root``, least recently used first (an absent folder holds none)."""
    root = Path(root)
    if not root.is_dir():
        return []
    stores = []
    for path in root.glob("*.zarr"):
        try:
            size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            stores.append(StoreInfo(path, size, path.stat().st_mtime))
        except OSError:  # removed meanwhile by another process
            continue
    return sorted(stores, key=lambda s: s.last_used)


def mark_used(path: str | os.PathLike) -> None:
    """Record that the store at ``path`` was just used (for least-recently-used eviction)."""
    try:
        os.utime(path)
    except OSError:
        pass  # a read-only cache still works; it is only never evicted first


def remove_store(path: str | os.PathLike) -> None:
    """Delete one store and its lock file."""
    path = Path(path)
    shutil.rmtree(path, ignore_errors=True)
    Path(f"{path}.lock").unlink(missing_ok=True)


def clear_cache(root: str | os.PathLike) -> tuple[int, int]:
    """Delete every store in ``root``; returns (stores removed, bytes freed)."""
    stores = list_stores(root)
    for store in stores:
        remove_store(store.path)
    return len(stores), sum(s.size_bytes for s in stores)


def enforce_limit(root: str | os.PathLike, limit: int | None = None, now: float | None = None) -> list[Path]:
    """Remove least recently used stores until ``root`` holds at most ``limit`` bytes (default ``max_cache_bytes``),
    sparing stores used in the last ``RECENT_S`` seconds; returns the removed stores."""
    limit = max_cache_bytes() if limit is None else limit
    if limit <= 0:
        return []
    now = time.time() if now is None else now
    stores = list_stores(root)
    total, removed = sum(s.size_bytes for s in stores), []
    for store in stores:
        if total <= limit:
            break
        if now - store.last_used < RECENT_S:
            continue
        remove_store(store.path)
        total -= store.size_bytes
        removed.append(store.path)
    return removed
