"""SAM architectures and the model registry."""

from .architecture import OFFICIAL_ARCHITECTURES, SMALL_ARCHITECTURE, SamArchitecture, build_sam
from .registry import (
    BUNDLED_NAME,
    MODEL_SOURCES,
    ModelError,
    ModelSource,
    SamModel,
    available_models,
    default_device,
    fetch_checkpoint,
    load_model,
    save_model,
)

__all__ = [
    "BUNDLED_NAME",
    "MODEL_SOURCES",
    "OFFICIAL_ARCHITECTURES",
    "SMALL_ARCHITECTURE",
    "ModelError",
    "ModelSource",
    "SamArchitecture",
    "SamModel",
    "available_models",
    "build_sam",
    "default_device",
    "fetch_checkpoint",
    "load_model",
    "save_model",
]
