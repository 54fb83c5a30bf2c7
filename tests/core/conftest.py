"""Small randomly initialised models (``core.models.tiny``): real SAM code paths that run in milliseconds on a CPU."""

from __future__ import annotations

import functools
import http.server
import threading

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
