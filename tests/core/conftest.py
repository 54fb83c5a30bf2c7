"""Small randomly initialised models: real SAM code paths at a size that runs in milliseconds on a CPU."""

from __future__ import annotations

import pytest
import torch

from napari_samtune.core.models import SamArchitecture, SamModel, build_sam

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


def make_model(arch: SamArchitecture = TINY, seed: int = 0, name: str = "tiny") -> SamModel:
    torch.manual_seed(seed)
    sam = build_sam(arch)
    return SamModel(sam, name, arch, f"seed{seed}", torch.device("cpu"))


@pytest.fixture
def tiny_model() -> SamModel:
    return make_model()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    # Never write into the user's real cache folder from a test.
    monkeypatch.setenv("SAMTUNE_CACHE_DIR", str(tmp_path / "cache"))
