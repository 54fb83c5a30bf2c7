"""The model fields of 'Segment with prompts': a model name, a checkpoint file or an adapter file, and the
``services.segmenting.ModelRequest`` they ask for."""

from __future__ import annotations

from magicgui.widgets import ComboBox, FileEdit

from ..core.models.registry import BUNDLED_NAME, MODEL_SOURCES, available_models, model_purpose
from ..services.models import ADAPTER
from ..services.segmenting import ModelRequest

CHECKPOINT_FILE = "checkpoint file…"
ADAPTER_FILE = "adapter file…"
FILE_TIPS = {
    CHECKPOINT_FILE: "any SAM checkpoint file (official, micro-sam or MedSAM layout)",
    ADAPTER_FILE: "an adapter file (from 'Fine-tune on current layers'), applied to the model it was made on",
}


def model_fields() -> tuple[ComboBox, FileEdit, FileEdit]:
    """The 'model' menu (the bundled model chosen), and the 'checkpoint' and 'adapter' files (hidden at first)."""
    name = ComboBox(
        name="model",
        choices=[*available_models(), CHECKPOINT_FILE, ADAPTER_FILE],
        value=BUNDLED_NAME,
        tooltip=model_purpose(BUNDLED_NAME),
    )
    checkpoint = FileEdit(
        name="checkpoint",
        filter="*.pt *.pth",
        visible=False,
        nullable=True,
        tooltip="A SAM checkpoint; with an adapter, only needed when its base model was a checkpoint file",
    )
    adapter = FileEdit(name="adapter", filter="*.samtune *.pt", visible=False, nullable=True)
    return name, checkpoint, adapter


def show_model_fields(name: ComboBox, checkpoint: FileEdit, adapter: FileEdit) -> None:
    """Show the file fields the chosen model needs, and say what the model is for."""
    checkpoint.visible = name.value in (CHECKPOINT_FILE, ADAPTER_FILE) or needs_file(name.value)
    adapter.visible = name.value == ADAPTER_FILE
    name.tooltip = model_purpose(name.value) or FILE_TIPS.get(name.value, "")


def model_request(name: ComboBox, checkpoint: FileEdit, adapter: FileEdit) -> ModelRequest:
    """(model name, checkpoint path, adapter path) asked for by the fields."""
    checkpoint_path = None if checkpoint.value is None else str(checkpoint.value)
    if name.value == CHECKPOINT_FILE:
        return "custom", checkpoint_path, None
    if name.value == ADAPTER_FILE:
        return ADAPTER, checkpoint_path, None if adapter.value is None else str(adapter.value)
    return name.value, checkpoint_path if needs_file(name.value) else None, None


def needs_file(name: str) -> bool:
    """Named models without a download address (MedSAM): the user points to the file."""
    return name in MODEL_SOURCES and MODEL_SOURCES[name].url is None
