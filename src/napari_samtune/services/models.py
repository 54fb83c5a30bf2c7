"""Loading the model a user asked for: a name, a checkpoint file, or an adapter file on top of its base model."""

from __future__ import annotations

from pathlib import Path

from ..core.models.registry import SamModel, available_models, load_model
from ..core.training.adapters import AdapterError, apply_adapter, load_adapter

ADAPTER = "adapter"  # the model name that asks for an adapter file


def load_requested_model(name: str, checkpoint: str | None = None, adapter: str | None = None) -> SamModel:
    """``load_model(name, checkpoint=checkpoint)``, or for ``name=ADAPTER`` the model adapted by the ``adapter`` file:
    its base model by name, or from ``checkpoint`` when that was a checkpoint file (adapters do not record where)."""
    if name != ADAPTER:
        return load_model(name, checkpoint=checkpoint)
    if adapter is None:
        raise AdapterError("no adapter file chosen: choose one under 'adapter' (made by 'Fine-tune on current layers')")
    saved = load_adapter(adapter)
    if checkpoint is not None and Path(checkpoint).is_file():
        base = load_model("custom", checkpoint=checkpoint)
    elif saved.base_name in available_models():
        base = load_model(saved.base_name)
    else:
        raise AdapterError(
            f"adapter {adapter} was trained on model '{saved.base_name}' loaded from a checkpoint file: choose that "
            "file under 'checkpoint' too"
        )
    return apply_adapter(base, saved)
