"""SAM architectures: the official ViT-B/L/H and the project's small model, built from one config.

Every model is segment_anything's ``Sam`` (``ImageEncoderViT`` + ``PromptEncoder`` + ``MaskDecoder``), so official
checkpoints load unchanged and the attention blocks keep their ``qkv`` names (LoRA targets are the same on all).
The small model differs only in its patch embedding (a convolutional stem, see ``ConvStemPatchEmbed``) and size.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import partial

import torch
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)
from torch import nn


@dataclass(frozen=True)
class SamArchitecture:
    """Everything needed to build an (untrained) SAM model.

    ``img_size`` is the encoder's square input side in pixels; the image embedding is ``img_size // patch_size``
    on each side.
    """

    img_size: int = 1024
    patch_size: int = 16
    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    window_size: int = 14
    mlp_ratio: float = 4.0
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    num_multimask_outputs: int = 3
    iou_head_hidden_dim: int = 256
    conv_stem_channels: tuple[int, ...] = field(default=())

    @property
    def embedding_size(self) -> int:
        return self.img_size // self.patch_size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SamArchitecture:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown SAM architecture fields {sorted(unknown)}; known fields: {sorted(known)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)


OFFICIAL_ARCHITECTURES: dict[str, SamArchitecture] = {
    "vit_b": SamArchitecture(),
    "vit_l": SamArchitecture(
        encoder_embed_dim=1024,
        encoder_depth=24,
        encoder_num_heads=16,
        encoder_global_attn_indexes=(5, 11, 17, 23),
    ),
    "vit_h": SamArchitecture(
        encoder_embed_dim=1280,
        encoder_depth=32,
        encoder_num_heads=16,
        encoder_global_attn_indexes=(7, 15, 23, 31),
    ),
}

# The project's own small model (issue 9): 256 px input, 8 px patches (32x32 grid), conv stem, narrow and shallow.
SMALL_ARCHITECTURE = SamArchitecture(
    img_size=256,
    patch_size=8,
    encoder_embed_dim=128,
    encoder_depth=4,
    encoder_num_heads=4,
    encoder_global_attn_indexes=(1, 3),
    window_size=8,
    prompt_embed_dim=128,
    mask_in_chans=16,
    decoder_depth=2,
    decoder_mlp_dim=512,
    decoder_num_heads=4,
    iou_head_hidden_dim=128,
    conv_stem_channels=(32, 64, 128),
)


class ConvStemPatchEmbed(nn.Module):
    """Patch embedding by stride-2 3x3 convolutions then a 1x1 projection (easier to optimise than one big conv).

    Input (B, 3, H, W); output (B, H / 2**n, W / 2**n, embed_dim) like ``segment_anything``'s ``PatchEmbed``.
    """

    def __init__(self, channels: tuple[int, ...], embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_chans
        for width in channels:
            layers += [nn.Conv2d(previous, width, kernel_size=3, stride=2, padding=1), nn.GELU()]
            previous = width
        self.stem = nn.Sequential(*layers)
        self.proj = nn.Conv2d(previous, embed_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.stem(x)).permute(0, 2, 3, 1)


def build_sam(arch: SamArchitecture) -> Sam:
    """Build an untrained ``Sam`` model in eval mode with the given architecture."""
    if arch.img_size % arch.patch_size:
        raise ValueError(f"img_size {arch.img_size} is not a multiple of patch_size {arch.patch_size}")
    if arch.conv_stem_channels and 2 ** len(arch.conv_stem_channels) != arch.patch_size:
        raise ValueError(
            f"a conv stem of {len(arch.conv_stem_channels)} stride-2 layers gives patch size "
            f"{2 ** len(arch.conv_stem_channels)}, not {arch.patch_size}"
        )
    encoder = ImageEncoderViT(
        depth=arch.encoder_depth,
        embed_dim=arch.encoder_embed_dim,
        img_size=arch.img_size,
        mlp_ratio=arch.mlp_ratio,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_heads=arch.encoder_num_heads,
        patch_size=arch.patch_size,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=arch.encoder_global_attn_indexes,
        window_size=arch.window_size,
        out_chans=arch.prompt_embed_dim,
    )
    if arch.conv_stem_channels:
        encoder.patch_embed = ConvStemPatchEmbed(arch.conv_stem_channels, arch.encoder_embed_dim)
    grid = arch.embedding_size
    sam = Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=arch.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(arch.img_size, arch.img_size),
            mask_in_chans=arch.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=arch.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=arch.decoder_depth,
                embedding_dim=arch.prompt_embed_dim,
                mlp_dim=arch.decoder_mlp_dim,
                num_heads=arch.decoder_num_heads,
            ),
            transformer_dim=arch.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=arch.iou_head_hidden_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def architecture_from_state_dict(state: dict[str, torch.Tensor], decoder_num_heads: int = 8) -> SamArchitecture:
    """Infer the architecture of a state dict in the official SAM layout (``image_encoder.*``, ``mask_decoder.*``…).

    The decoder's number of attention heads is not recorded in the weights; official models use 8.
    """
    required = (
        "image_encoder.pos_embed",
        "prompt_encoder.no_mask_embed.weight",
        "mask_decoder.mask_tokens.weight",
    )
    missing = [k for k in required if k not in state]
    if missing:
        raise ValueError(
            f"this is not a SAM state dict in the official layout: keys {missing} are missing "
            "(expected keys such as 'image_encoder.blocks.0.attn.qkv.weight')"
        )
    pos = state["image_encoder.pos_embed"]
    grid, embed_dim = pos.shape[1], pos.shape[3]
    stem_keys = sorted(
        (k for k in state if k.startswith("image_encoder.patch_embed.stem.") and k.endswith(".weight")),
        key=lambda k: int(k.split(".")[3]),
    )
    if stem_keys:
        stem = tuple(int(state[k].shape[0]) for k in stem_keys)
        patch = 2 ** len(stem)
    else:
        stem = ()
        patch = int(state["image_encoder.patch_embed.proj.weight"].shape[-1])
    depth = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("image_encoder.blocks."))
    global_idx, window = [], 0
    head_dim = int(state["image_encoder.blocks.0.attn.rel_pos_h"].shape[1])
    for i in range(depth):
        span = int(state[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape[0])
        if span == 2 * grid - 1:
            global_idx.append(i)
        else:
            window = (span + 1) // 2
    mlp_hidden = int(state["image_encoder.blocks.0.mlp.lin1.weight"].shape[0])
    prompt_dim = int(state["prompt_encoder.no_mask_embed.weight"].shape[1])
    decoder_depth = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("mask_decoder.transformer.layers."))
    return SamArchitecture(
        img_size=grid * patch,
        patch_size=patch,
        encoder_embed_dim=int(embed_dim),
        encoder_depth=depth,
        encoder_num_heads=int(embed_dim) // head_dim,
        encoder_global_attn_indexes=tuple(global_idx),
        window_size=window,
        mlp_ratio=mlp_hidden / int(embed_dim),
        prompt_embed_dim=prompt_dim,
        mask_in_chans=int(state["prompt_encoder.mask_downscaling.3.weight"].shape[0]),
        decoder_depth=decoder_depth,
        decoder_mlp_dim=int(state["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0]),
        decoder_num_heads=decoder_num_heads,
        num_multimask_outputs=int(state["mask_decoder.mask_tokens.weight"].shape[0]) - 1,
        iou_head_hidden_dim=int(state["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0]),
        conv_stem_channels=stem,
    )
