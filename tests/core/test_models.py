"""Model registry: official-layout checkpoints, architecture detection, checksums, downloads, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_samtune.core.models import (
    OFFICIAL_ARCHITECTURES,
    SMALL_ARCHITECTURE,
    ModelError,
    ModelSource,
    build_sam,
    fetch_checkpoint,
    load_model,
    save_model,
)
from napari_samtune.core.models.architecture import architecture_from_state_dict
from napari_samtune.core.models.registry import file_sha256

from .conftest import TINY


def _outputs(sam, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    image = torch.rand(1, 3, size, size) * 255
    with torch.no_grad():
        emb = sam.image_encoder((image - sam.pixel_mean) / sam.pixel_std)
        sparse, dense = sam.prompt_encoder(
            points=(torch.tensor([[[10.0, 20.0]]]), torch.ones(1, 1)), boxes=None, masks=None
        )
        masks, iou = sam.mask_decoder(emb, sam.prompt_encoder.get_dense_pe(), sparse, dense, True)
    return masks, iou


def test_random_vit_b_in_official_layout_loads_back_with_identical_outputs(tmp_path):
    torch.manual_seed(0)
    sam = build_sam(OFFICIAL_ARCHITECTURES["vit_b"])
    path = tmp_path / "sam_vit_b_random.pth"
    torch.save(sam.state_dict(), path)  # exactly how Meta's checkpoints are stored
    loaded = load_model("custom", checkpoint=path, device="cpu")
    assert loaded.architecture == OFFICIAL_ARCHITECTURES["vit_b"]
    assert loaded.weights_sha256 == file_sha256(path)
    expected, got = _outputs(sam, 1024), _outputs(loaded.sam, 1024)
    assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])


@pytest.mark.parametrize("name", ["vit_l", "vit_h"])
def test_architecture_detected_from_official_weights(name):
    with torch.device("meta"):
        state = build_sam(OFFICIAL_ARCHITECTURES[name]).state_dict()
    assert architecture_from_state_dict(state) == OFFICIAL_ARCHITECTURES[name]


def test_small_architecture_round_trips_through_detection():
    state = build_sam(SMALL_ARCHITECTURE).state_dict()
    assert architecture_from_state_dict(state, decoder_num_heads=4) == SMALL_ARCHITECTURE


def test_project_format_saves_and_loads_half_precision(tmp_path):
    torch.manual_seed(0)
    sam = build_sam(TINY)
    sha = save_model(sam, TINY, tmp_path / "m.pt", half=True, note="x")
    loaded = load_model("custom", checkpoint=tmp_path / "m.pt", device="cpu")
    assert loaded.weights_sha256 == sha and loaded.metadata["note"] == "x"
    w0 = sam.image_encoder.blocks[0].attn.qkv.weight
    w1 = loaded.sam.image_encoder.blocks[0].attn.qkv.weight
    assert torch.allclose(w0, w1, atol=1e-3) and not torch.equal(w0, w1)  # fp16 storage, fp32 in memory


def test_missing_checkpoint_names_the_file(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_model("custom", checkpoint=tmp_path / "nope.pth")


def test_official_name_refuses_a_file_with_the_wrong_checksum(tmp_path):
    path = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(build_sam(TINY).state_dict(), path)
    with pytest.raises(ModelError, match="sha256"):
        load_model("vit_b", checkpoint=path)


def test_unknown_name_and_non_sam_file_give_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="unknown model"):
        load_model("vit_z")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(ModelError, match="not a SAM state dict"):
        load_model("custom", checkpoint=tmp_path / "other.pth")


def test_download_verifies_checksum_and_loads(tmp_path, http_server):
    root, url = http_server
    torch.save(build_sam(TINY).state_dict(), root / "tiny.pth")
    source = ModelSource("tiny", "tiny.pth", file_sha256(root / "tiny.pth"), url + "tiny.pth")
    path = fetch_checkpoint(source, tmp_path / "ckpt")
    assert path.is_file() and file_sha256(path) == source.sha256
    model = load_model("custom", checkpoint=path)
    assert model.architecture.img_size == TINY.img_size


def test_download_with_wrong_checksum_fails_and_leaves_no_file(tmp_path, http_server):
    root, url = http_server
    torch.save(build_sam(TINY).state_dict(), root / "tiny.pth")
    source = ModelSource("tiny", "tiny.pth", "0" * 64, url + "tiny.pth")
    with pytest.raises(ModelError, match="expected sha256"):
        fetch_checkpoint(source, tmp_path / "ckpt")
    assert list((tmp_path / "ckpt").glob("*")) == []


def test_offline_download_error_says_how_to_use_a_local_copy(tmp_path):
    source = ModelSource("vit_b", "sam_vit_b_01ec64.pth", "0" * 64, "http://127.0.0.1:9/sam_vit_b_01ec64.pth")
    with pytest.raises(ModelError, match="SAMTUNE_CHECKPOINT_VIT_B") as info:
        fetch_checkpoint(source, tmp_path)
    assert "checkpoint=PATH" in str(info.value) and "sam_vit_b_01ec64.pth" in str(info.value)


def test_device_override(monkeypatch):
    from napari_samtune.core.models import default_device

    monkeypatch.setenv("SAMTUNE_DEVICE", "cpu")
    assert default_device() == torch.device("cpu")
    assert np.isfinite(default_device("cpu").index or 0)
