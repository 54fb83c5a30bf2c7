"""The bundled model ships in the package, loads offline with its checksum verified, and has learned something."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from skimage.draw import disk

from napari_samtune.core.models import ModelError, load_model
from napari_samtune.core.models import bundled as bundled_module
from napari_samtune.core.models.registry import file_sha256
from napari_samtune.core.segmenter import Segmenter


def test_bundled_model_loads_offline_and_matches_its_checksum(monkeypatch):
    monkeypatch.setattr("socket.socket.connect", lambda *a: (_ for _ in ()).throw(OSError("offline")))
    model = load_model("samtune_small", device="cpu")
    assert model.weights_sha256 == bundled_module.bundled_sha256()
    assert model.weights_sha256 == file_sha256(bundled_module.bundled_model_path())
    assert bundled_module.bundled_model_path().stat().st_size <= 10_000_000
    assert model.architecture.img_size == 256


def test_corrupted_bundled_file_gives_a_clear_error(tmp_path, monkeypatch):
    broken = tmp_path / "samtune_small.pt"
    shutil.copy(bundled_module.bundled_model_path(), broken)
    data = bytearray(broken.read_bytes())
    data[len(data) // 2] ^= 0xFF
    broken.write_bytes(bytes(data))
    monkeypatch.setattr(bundled_module, "bundled_model_path", lambda name="samtune_small": broken)
    with pytest.raises(ModelError, match="sha256"):
        load_model("samtune_small", device="cpu")


def test_centre_click_on_a_bright_disc():
    rng = np.random.default_rng(0)
    image = rng.normal(40, 6, (256, 256))
    truth = np.zeros((256, 256), bool)
    rr, cc = disk((128, 120), 22)
    truth[rr, cc] = True
    image[truth] += 120
    segmenter = Segmenter("samtune_small", cache_root=False)
    segmenter.set_image(np.clip(image, 0, 255).astype(np.uint8))
    mask = segmenter.segment_points([[128, 120]]).masks[0]
    assert (mask & truth).sum() / (mask | truth).sum() >= 0.8


def test_the_first_bundled_model_stays_loadable_by_name():
    v1 = load_model("samtune_small_v1", device="cpu")
    assert v1.weights_sha256 == bundled_module.bundled_sha256("samtune_small_v1")
    assert v1.architecture == load_model("samtune_small", device="cpu").architecture
