"""Running a SAM model at another input size (e.g. ViT-B at 256² for 256² images instead of upscaling to 1024²).

The absolute positional embedding and the relative position tables of the global-attention blocks are resized by
interpolation (as BLO-SAM does); everything else in SAM does not depend on the input size.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from .registry import SamModel


def with_input_size(model: SamModel, size: int) -> SamModel:
    """A copy of ``model`` whose encoder takes ``size``² inputs (a multiple of the patch size)."""
    arch = model.architecture
    if size % arch.patch_size:
        raise ValueError(f"input size {size} is not a multiple of the patch size {arch.patch_size}")
    if size == arch.img_size:
        return model.copy()
    out = model.copy()
    encoder = out.sam.image_encoder
    grid = size // arch.patch_size
    with torch.no_grad():
        pos = encoder.pos_embed.permute(0, 3, 1, 2)
        pos = F.interpolate(pos, size=(grid, grid), mode="bicubic", align_corners=False)
        encoder.pos_embed = torch.nn.Parameter(pos.permute(0, 2, 3, 1).contiguous())
        for index in arch.encoder_global_attn_indexes:
            attn = encoder.blocks[index].attn
            for name in ("rel_pos_h", "rel_pos_w"):
                table = getattr(attn, name)
                resized = F.interpolate(table.T[None], size=2 * grid - 1, mode="linear", align_corners=False)[0].T
                setattr(attn, name, torch.nn.Parameter(resized.contiguous()))
    encoder.img_size = size
    prompt = out.sam.prompt_encoder
    prompt.image_embedding_size = (grid, grid)
    prompt.input_image_size = (size, size)
    out.architecture = dataclasses.replace(arch, img_size=size)
    out.encoder_id = f"{model.encoder_id}@{size}"
    return out
