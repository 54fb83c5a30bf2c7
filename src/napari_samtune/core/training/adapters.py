"""Adapter files: only what a fine-tune trained (LoRA weights, changed modules, learned prompts) plus metadata.

One file, written atomically, loadable onto the same base model only (checked by the base weights' sha256). The file
carries a sha256 of its contents, checked at load: a damaged file is refused rather than silently used.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from ..errors import SamtuneError
from ..io import atomic_write, write_or_keep
from ..models.registry import SamModel
from .lora import LoraSettings, load_lora_state, lora_state, state_hash

ADAPTER_FORMAT = "napari-samtune-adapter"
ADAPTER_VERSION = 2  # 2: the contents' sha256 is stored and verified
TRAINABLE_MODULES = ("mask_decoder", "prompt_encoder")


class AdapterError(SamtuneError, ValueError):
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


def content_sha256(contents: dict) -> str:
    """sha256 of an adapter's contents (tensors by dtype, shape and bytes; everything else by its repr)."""
    digest = hashlib.sha256()
    _feed(digest, contents)
    return digest.hexdigest()


def _feed(digest: hashlib._Hash, value: object) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"tensor {tensor.dtype} {tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        digest.update(f"dict {len(value)};".encode())
        for key in sorted(value, key=repr):
            _feed(digest, key)
            _feed(digest, value[key])
    elif isinstance(value, (list, tuple)):  # a tuple may come back as a list: the same contents either way
        digest.update(f"list {len(value)};".encode())
        for item in value:
            _feed(digest, item)
    else:
        digest.update(f"{type(value).__name__} {value!r};".encode())


def save_adapter(adapter: Adapter, path: str | os.PathLike, *, fallback: str | os.PathLike | None = None) -> Path:
    """Write ``adapter`` to ``path`` atomically (a failed write leaves any previous file intact).

    With ``fallback`` (a folder), a write that fails keeps the adapter there and raises ``io.OutputError`` naming it.
    """
    contents = asdict(adapter)
    payload = {"format": ADAPTER_FORMAT, "version": ADAPTER_VERSION, "sha256": content_sha256(contents), **contents}

    def write(handle) -> None:
        torch.save(payload, handle)

    return atomic_write(path, write) if fallback is None else write_or_keep(path, write, fallback)


def load_adapter(path: str | os.PathLike) -> Adapter:
    """Read an adapter file; raises ``AdapterError`` for a missing, unreadable, damaged or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise AdapterError(f"adapter file {path} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    if path.stat().st_size == 0:
        raise AdapterError(f"adapter file {path} is empty (0 bytes): it was not written completely; save it again")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise AdapterError(f"cannot read adapter file {path}: {reason}") from error
    if not isinstance(payload, dict) or payload.get("format") != ADAPTER_FORMAT:
        raise AdapterError(f"{path} is not a napari-samtune adapter file (no '{ADAPTER_FORMAT}' marker)")
    version = payload.get("version", 0)
    if not isinstance(version, int) or version > ADAPTER_VERSION:
        raise AdapterError(f"{path} was written by a newer napari-samtune (format {version}); upgrade")
    contents = {k: v for k, v in payload.items() if k not in ("format", "version", "sha256")}
    if version >= 2:
        if payload.get("sha256") != content_sha256(contents):
            raise AdapterError(
                f"adapter file {path} is damaged: its contents do not match the checksum saved with them "
                "(a copy cut short or changed on disk); use another copy or fine-tune again"
            )
    else:
        warnings.warn(
            f"adapter file {path} predates checksums and cannot be verified; save it again to add one",
            stacklevel=2,
        )
    known = {f.name for f in fields(Adapter)}
    unexpected = sorted(set(contents) - known)
    if unexpected:
        raise AdapterError(f"adapter file {path} has unexpected entries {unexpected}: it was not written by samtune")
    try:
        return Adapter(**contents)
    except TypeError as error:
        raise AdapterError(f"adapter file {path} is incomplete: {error}") from error


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
    _check_prompts(adapter, base)
    model = base.copy()
    for name, state in adapter.modules.items():
        if name not in TRAINABLE_MODULES:
            allowed = list(TRAINABLE_MODULES)
            raise AdapterError(f"this adapter changes a module '{name}'; adapters change only {allowed}")
        try:
            getattr(model.sam, name).load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as error:
            raise AdapterError(f"this adapter's {name} weights do not fit the model: {_first_line(error)}") from error
    if adapter.lora is not None:
        _apply_lora(model, adapter.lora)
        model.encoder_id = f"{base.encoder_id}+lora:{state_hash(adapter.lora['state'])}"
    model.prompt_embeddings = adapter.prompt_embeddings
    model.classes = tuple(adapter.classes)
    model.metadata = {**model.metadata, "adapter": {"method": adapter.method, "metrics": adapter.metrics}}
    model.sam.eval()
    return model


def _apply_lora(model: SamModel, lora: dict) -> None:
    try:
        settings = LoraSettings(**{**lora["settings"], "targets": tuple(lora["settings"]["targets"])})
        load_lora_state(model.sam, settings, lora["state"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise AdapterError(f"this adapter's LoRA weights do not fit the model: {_first_line(error)}") from error
    missing = sorted(set(lora_state(model.sam)) - set(lora["state"]))
    if missing:
        raise AdapterError(f"this adapter's LoRA weights are incomplete: {len(missing)} missing, e.g. {missing[0]}")


def _check_prompts(adapter: Adapter, base: SamModel) -> None:
    prompts = adapter.prompt_embeddings
    if prompts is None:
        return
    dim = base.architecture.prompt_embed_dim
    if not isinstance(prompts, torch.Tensor) or prompts.ndim != 3 or prompts.shape[-1] != dim:
        shape = tuple(prompts.shape) if isinstance(prompts, torch.Tensor) else type(prompts).__name__
        raise AdapterError(
            f"this adapter's learned prompts have shape {shape}; the model needs (classes, tokens, {dim})"
        )
    if len(adapter.classes) != prompts.shape[0]:
        raise AdapterError(
            f"this adapter has learned prompts for {prompts.shape[0]} class(es) but lists {len(adapter.classes)} "
            f"class value(s) {list(adapter.classes)}"
        )
    if not torch.isfinite(prompts).all():
        raise AdapterError("this adapter's learned prompts hold NaN or infinite values; fine-tune again")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
