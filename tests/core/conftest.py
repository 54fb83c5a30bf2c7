"""Small randomly initialised models (``core.models.tiny``): real SAM code paths that run in milliseconds on a CPU."""

from __future__ import annotations

import functools
import http.server
import threading

import numpy as np
import pytest

from napari_samtune.core.models import SamModel
from napari_samtune.core.models.tiny import TINY
from napari_samtune.core.models.tiny import tiny_model as make_model

__all__ = ["TINY", "make_model"]


@pytest.fixture
def tiny_model() -> SamModel:
    return make_model()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    # Never write into the user's real cache folder from a test.
    monkeypatch.setenv("SAMTUNE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def http_server(tmp_path):
    """A local HTTP server for download tests: (folder it serves, its base URL)."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def disc_images(
    n: int,
    size: int,
    seed: int = 0,
    radius_divisors: tuple[float, float] = (8, 5),
    levels: tuple[float, float, float] = (0.1, 0.9, 0.9),
    scale: float = 1.0,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``n`` float32 images of two discs each (label values 1 and 2, radius between ``size / radius_divisors[0]`` and
    ``size / radius_divisors[1]``) on a noisy background, and their label images. ``levels``: the intensity of the
    background, disc 1 and disc 2; ``scale`` multiplies the image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images, labels = [], []
    for _ in range(n):
        lab = np.zeros((size, size), np.int32)
        for value in (1, 2):
            r = rng.uniform(size / radius_divisors[0], size / radius_divisors[1])
            cy, cx = rng.uniform(r, size - r, 2)
            lab[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = value
        images.append((scale * (np.array(levels)[lab] + rng.normal(0, 0.03, lab.shape))).astype(np.float32))
        labels.append(lab)
    return images, labels
