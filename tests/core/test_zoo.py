"""The model zoo: micro-sam's and MedSAM's names, their published checksums, and the checkpoint layouts they use."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import xxhash

from napari_samtune.core.models import MODEL_SOURCES, ModelError, build_sam, load_model
from napari_samtune.core.models.registry import available_models, file_checksum, model_purpose
from napari_samtune.core.models.zoo import MEDSAM_NAME, MICRO_SAM_MODELS

from .conftest import TINY

# The decoder's head count is not in the weights; 8 is what detection assumes, so outputs compare exactly.
ARCH = dataclasses.replace(TINY, decoder_num_heads=8)
MICRO_SAM_NAMES = [
    "vit_b_lm",
    "vit_l_lm",
    "vit_b_em_organelles",
    "vit_l_em_organelles",
    "vit_b_histopathology",
    "vit_l_histopathology",
    "vit_b_medical_imaging",
]


def _random_sam(seed: int = 0):
    torch.manual_seed(seed)
    return build_sam(ARCH).eval()


def _xxh128(path) -> str:
    return "xxh128:" + xxhash.xxh128(path.read_bytes()).hexdigest()


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_every_published_name_is_listed_with_its_purpose_and_checksum():
    names = available_models()
    for name in [*MICRO_SAM_NAMES, MEDSAM_NAME]:
        assert name in names and model_purpose(name)
    for name in MICRO_SAM_NAMES:
        source = MODEL_SOURCES[name]
        assert source.url.startswith("https://") and source.known_hash.startswith("xxh128:")
        assert len(source.known_hash) == len("xxh128:") + 32
    # As published in micro-sam's registry (micro_sam/v1/util.py); a typo here would refuse every good download.
    assert MODEL_SOURCES["vit_b_lm"].known_hash == "xxh128:fe9252a29f3f4ea53c15a06de471e186"
    assert MODEL_SOURCES["vit_b_medical_imaging"].url.endswith("/f5Ol4FrjPQWfjUF/download")
    assert set(MICRO_SAM_MODELS) == set(MICRO_SAM_NAMES)
    assert MODEL_SOURCES[MEDSAM_NAME].url is None and MODEL_SOURCES[MEDSAM_NAME].known_hash is None


def _prefixed(state: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in state.items()}


LAYOUTS = {
    "official": lambda s: s,
    # micro-sam export with its segmentation decoder / torch_em training checkpoint of TrainableSAM
    "micro-sam model_state + decoder_state": lambda s: {
        "model_state": _prefixed(s, "sam."),
        "decoder_state": {"decoder.blocks.0.weight": torch.zeros(2), "out_conv.weight": torch.zeros(1)},
    },
    "micro-sam multi-GPU": lambda s: {"model_state": _prefixed(s, "module.sam."), "epoch": 3},
    # MedSAM's training checkpoints (train_multi_gpus.py): {"model": DDP state, "optimizer": …, "epoch": …}
    "MedSAM training": lambda s: {"model": _prefixed(s, "module."), "optimizer": {"state": {}}, "epoch": 10},
    "Lightning": lambda s: {"state_dict": _prefixed(s, "model."), "global_step": 5},
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_checkpoint_layouts_load_into_our_sam_with_identical_weights(tmp_path, layout):
    sam = _random_sam()
    path = tmp_path / "weights.pt"
    torch.save(LAYOUTS[layout](sam.state_dict()), path)
    loaded = load_model("custom", checkpoint=path, device="cpu")
    assert loaded.architecture == ARCH
    assert _same_weights(sam, loaded.sam)
    if layout.startswith("micro-sam model_state"):
        assert "decoder" in loaded.metadata["ignored"]


def test_micro_sam_decoder_only_file_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "vit_b_decoder.pt"
    torch.save({"decoder.blocks.0.block.0.weight": torch.zeros(4), "out_conv.weight": torch.zeros(2)}, path)
    with pytest.raises(ModelError, match=r"instance-segmentation decoder.*vit_b_lm"):
        load_model("custom", checkpoint=path)


def test_sam_decoder_without_image_encoder_is_refused(tmp_path):
    state = {k: v for k, v in _random_sam().state_dict().items() if not k.startswith("image_encoder.")}
    torch.save(state, tmp_path / "decoder.pth")
    with pytest.raises(ModelError, match="no image encoder"):
        load_model("custom", checkpoint=tmp_path / "decoder.pth")


def _serve_as(monkeypatch, root, url, name: str, checksum: str | None = None):
    """Serve a random SAM in micro-sam's export layout under ``name``; return the model saved."""
    sam = _random_sam(seed=3)
    torch.save(sam.state_dict(), root / "vit_b.pt")
    checksum = checksum or _xxh128(root / "vit_b.pt")
    source = dataclasses.replace(MODEL_SOURCES[name], url=url + "vit_b.pt", checksum=checksum)
    monkeypatch.setitem(MODEL_SOURCES, name, source)
    return sam


def test_named_micro_sam_model_downloads_verifies_xxh128_and_is_cached(tmp_path, http_server, monkeypatch):
    root, url = http_server
    sam = _serve_as(monkeypatch, root, url, "vit_b_em_organelles")
    model = load_model("vit_b_em_organelles", device="cpu")
    assert model.name == "vit_b_em_organelles" and _same_weights(sam, model.sam)
    cached = tmp_path / "cache" / "checkpoints" / "vit_b_em_organelles.pt"
    assert file_checksum(cached, MODEL_SOURCES["vit_b_em_organelles"].known_hash) == _xxh128(root / "vit_b.pt")
    (root / "vit_b.pt").unlink()  # the second load must not need the server
    assert _same_weights(sam, load_model("vit_b_em_organelles", device="cpu").sam)


def test_named_download_with_a_wrong_xxh128_fails_and_leaves_no_file(tmp_path, http_server, monkeypatch):
    root, url = http_server
    _serve_as(monkeypatch, root, url, "vit_b_lm", checksum="xxh128:" + "0" * 32)
    with pytest.raises(ModelError, match=r"expected xxh128 0{32}"):
        load_model("vit_b_lm", device="cpu")
    assert not list((tmp_path / "cache" / "checkpoints").glob("vit_b_lm*"))


def test_local_copy_of_a_named_model_is_checked_against_the_published_xxh128(tmp_path, monkeypatch):
    path = tmp_path / "vit_b.pt"
    torch.save(_random_sam().state_dict(), path)
    with pytest.raises(ModelError, match=r"xxh128 .* expects fe9252a29f3f4ea53c15a06de471e186"):
        load_model("vit_b_lm", checkpoint=path)
    monkeypatch.setenv("SAMTUNE_CHECKPOINT_VIT_B_LM", str(path))
    assert load_model("vit_b_lm", verify=False, device="cpu").name == "vit_b_lm"


def test_offline_micro_sam_name_says_how_to_use_a_local_copy(monkeypatch):
    source = dataclasses.replace(MODEL_SOURCES["vit_b_histopathology"], url="http://127.0.0.1:9/download")
    monkeypatch.setitem(MODEL_SOURCES, "vit_b_histopathology", source)
    with pytest.raises(ModelError, match="SAMTUNE_CHECKPOINT_VIT_B_HISTOPATHOLOGY") as info:
        load_model("vit_b_histopathology")
    assert "checkpoint=PATH" in str(info.value)


def test_medsam_needs_a_local_file_and_gets_its_input_scaling(tmp_path, monkeypatch):
    with pytest.raises(ModelError, match=r"bowang-lab/MedSAM.*SAMTUNE_CHECKPOINT_MEDSAM_VIT_B"):
        load_model(MEDSAM_NAME)
    sam = _random_sam(seed=5)
    path = tmp_path / "medsam_vit_b.pth"
    torch.save({"model": _prefixed(sam.state_dict(), "module."), "epoch": 1}, path)
    monkeypatch.setenv("SAMTUNE_CHECKPOINT_MEDSAM_VIT_B", str(path))
    model = load_model(MEDSAM_NAME, device="cpu")
    assert _same_weights(sam, model.sam)
    # MedSAM feeds the encoder images scaled to [0, 1], without SAM's standardisation.
    assert torch.all(model.sam.pixel_mean == 0) and torch.all(model.sam.pixel_std == 255)
    assert torch.all(load_model("custom", checkpoint=path).sam.pixel_mean > 100)  # SAM's own for other names
