"""The project's own small pretrained models, shipped inside the package (see docs/model_card.md).

``models/<name>.pt`` holds the weights and ``models/<name>.json`` the sha256 recorded when they were exported.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from .registry import ModelError


def _models_folder() -> Path:
    return Path(str(resources.files("napari_samtune") / "models"))


def bundled_model_path(name: str = "samtune_small") -> Path:
    path = _models_folder() / f"{name}.pt"
    if not path.is_file():
        raise ModelError(
            f"the bundled model file {path} is missing from this installation. Reinstall napari-samtune, or "
            "rebuild it with `python scripts/pretrain.py` (see docs/model_card.md)."
        )
    return path


def bundled_sha256(name: str = "samtune_small") -> str:
    """The sha256 the bundled weights of ``name`` must have (recorded when they were exported)."""
    path = _models_folder() / f"{name}.json"
    if not path.is_file():
        raise ModelError(f"the checksum file {path} of the bundled model is missing: reinstall napari-samtune")
    return json.loads(path.read_text())["sha256"]
