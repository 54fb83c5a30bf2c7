"""A tiny randomly initialised SAM: the real code paths at a size that runs in milliseconds on a CPU.

Not a model for segmenting anything: the tests and the meta-knowledge build (``scripts/build_meta_knowledge.py``)
use it where only the mechanics matter.
"""

from __future__ import annotations

import torch

from .architecture import SamArchitecture, build_sam
from .registry import SamModel

TINY = SamArchitecture(
    img_size=64,
    patch_size=8,
    encoder_embed_dim=32,
    encoder_depth=2,
    encoder_num_heads=2,
    encoder_global_attn_indexes=(1,),
    window_size=4,
    prompt_embed_dim=32,
    mask_in_chans=8,
    decoder_depth=1,
    decoder_mlp_dim=64,
    decoder_num_heads=2,
    iou_head_hidden_dim=32,
    conv_stem_channels=(8, 16, 32),
)


def tiny_model(
    arch: SamArchitecture = TINY, seed: int = 0, name: str = "tiny", weights_id: str | None = None
) -> SamModel:
    """A randomly initialised model of ``arch`` (weights from ``seed``) on the CPU; its weights id (what adapters
    and caches record in place of a checksum) is ``weights_id``, by default "seed<seed>"."""
    torch.manual_seed(seed)
    return SamModel(build_sam(arch), name, arch, weights_id or f"seed{seed}", torch.device("cpu"))
