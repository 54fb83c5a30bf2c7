"""LoRA on the image encoder's attention through ``peft`` (the same ``qkv`` targets on every SAM architecture)."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import torch
from segment_anything.modeling import Sam


@dataclass(frozen=True)
class LoraSettings:
    """Rank, scaling (alpha), dropout and target module names of the low-rank adapters."""

    rank: int = 4
    alpha: float = 8.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("qkv",)

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be ≥ 1, got {self.rank}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        return {**asdict(self), "targets": list(self.targets)}


def add_lora(sam: Sam, settings: LoraSettings) -> list[torch.nn.Parameter]:
    """Insert LoRA layers into ``sam.image_encoder`` (in place); returns the new trainable parameters."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.targets),
    )
    inject_adapter_in_model(config, sam.image_encoder)
    return [p for n, p in sam.image_encoder.named_parameters() if "lora_" in n]


def lora_state(sam: Sam) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(sam.image_encoder).items()}


def load_lora_state(sam: Sam, settings: LoraSettings, state: dict[str, torch.Tensor]) -> None:
    """Insert LoRA layers with ``settings`` and load their trained weights."""
    from peft import set_peft_model_state_dict

    add_lora(sam, settings)
    result = set_peft_model_state_dict(sam.image_encoder, state)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"LoRA weights do not fit this model: unexpected keys {result.unexpected_keys[:3]}")


def state_hash(state: dict[str, torch.Tensor]) -> str:
    """A short content hash of a dict of tensors (names what an adapter did to the encoder)."""
    h = hashlib.blake2b(digest_size=8)
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().float().numpy().tobytes())
    return h.hexdigest()
