"""Adapter files: only what a fine-tune trained (LoRA weights, changed modules, learned prompts) plus metadata.

One file, written atomically, loadable onto the same base model only (checked by the base weights' sha256).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..io import atomic_torch_save
from ..models.registry import SamModel
from .lora import LoraSettings, load_lora_state, state_hash

ADAPTER_FORMAT = "napari-samtune-adapter"
ADAPTER_VERSION = 1


class AdapterError(ValueError):
    """An adapter file that cannot be used with the given model; the message says why and what to do."""


@dataclass
class Adapter:
    """What a fine-tune changed, and how it was made.

    modules: full state dicts of trained sub-modules ("mask_decoder", "prompt_encoder"); lora: {"settings", "state"};
    prompt_embeddings: ``(K, T, C)`` learned prompts of ``classes`` (BLO), else None.
    """

    base_name: str
    base_sha256: str
    architecture: dict
    method: str
    settings: dict = field(default_factory=dict)
    train_config: dict = field(default_factory=dict)
    task: str = "instances"
    classes: list[int] = field(default_factory=list)
    data_summary: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    modules: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    lora: dict | None = None
    prompt_embeddings: torch.Tensor | None = None
    created: str = field(default_factory=lambda: datetime.datetime.now(datetime.timezone.utc).isoformat())


def save_adapter(adapter: Adapter, path: str | os.PathLike) -> Path:
    """Write ``adapter`` to ``path`` atomically (a failed write leaves any previous file intact)."""
    payload = {"format": ADAPTER_FORMAT, "version": ADAPTER_VERSION, **asdict(adapter)}
    return atomic_torch_save(payload, path)


def load_adapter(path: str | os.PathLike) -> Adapter:
    path = Path(path)
    if not path.is_file():
        raise AdapterError(f"adapter file {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise AdapterError(f"cannot read adapter file {path}: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != ADAPTER_FORMAT:
        raise AdapterError(f"{path} is not a napari-samtune adapter file (no '{ADAPTER_FORMAT}' marker)")
    if payload.get("version", 0) > ADAPTER_VERSION:
        raise AdapterError(f"{path} was written by a newer napari-samtune (format {payload['version']}); upgrade")
    payload = {k: v for k, v in payload.items() if k not in ("format", "version")}
    return Adapter(**payload)


def apply_adapter(base: SamModel, adapter: Adapter) -> SamModel:
    """A new model: a copy of ``base`` with the adapter's changes. ``base`` itself is not modified."""
    if adapter.base_sha256 != base.weights_sha256:
        raise AdapterError(
            f"this adapter was trained on base model '{adapter.base_name}' (weights sha256 "
            f"{adapter.base_sha256[:12]}…) but the loaded model is '{base.name}' ({base.weights_sha256[:12]}…): "
            f"load '{adapter.base_name}' first, then the adapter"
        )
    if adapter.architecture != base.architecture.to_dict():
        raise AdapterError(
            f"this adapter was trained with input size {adapter.architecture.get('img_size')} but the model takes "
            f"{base.architecture.img_size}: resize the model first (core.models.resize.with_input_size)"
        )
    model = base.copy()
    for name, state in adapter.modules.items():
        getattr(model.sam, name).load_state_dict(state)
    if adapter.lora is not None:
        settings = LoraSettings(**{**adapter.lora["settings"], "targets": tuple(adapter.lora["settings"]["targets"])})
        load_lora_state(model.sam, settings, adapter.lora["state"])
        model.encoder_id = f"{base.encoder_id}+lora:{state_hash(adapter.lora['state'])}"
    model.prompt_embeddings = adapter.prompt_embeddings
    model.classes = tuple(adapter.classes)
    model.metadata = {**model.metadata, "adapter": {"method": adapter.method, "metrics": adapter.metrics}}
    model.sam.eval()
    return model
