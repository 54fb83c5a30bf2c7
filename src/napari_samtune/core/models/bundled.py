"""The project's own small pretrained model, shipped inside the package (see docs/model_card.md)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from .registry import ModelError

_WEIGHTS = "samtune_small.pt"
_CHECKSUM = "samtune_small.json"


def _models_folder() -> Path:
    return Path(str(resources.files("napari_samtune") / "models"))


def bundled_model_path() -> Path:
    path = _models_folder() / _WEIGHTS
    if not path.is_file():
        raise ModelError(
            f"the bundled model file {path} is missing from this installation. Reinstall napari-samtune, or "
            "rebuild it with `python scripts/pretrain.py` (see docs/model_card.md)."
        )
    return path


def bundled_sha256() -> str:
    """The sha256 the bundled weights must have (recorded when they were exported)."""
    path = _models_folder() / _CHECKSUM
    if not path.is_file():
        raise ModelError(f"the checksum file {path} of the bundled model is missing: reinstall napari-samtune")
    return json.loads(path.read_text())["sha256"]
