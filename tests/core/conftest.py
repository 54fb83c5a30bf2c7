"""Small randomly initialised models (``core.models.tiny``): real SAM code paths that run in milliseconds on a CPU."""

from __future__ import annotations

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
