"""Adapter files: save → load → apply reproduces the fine-tuned model exactly, only onto its own base model; writes
are atomic; the file holds only what was trained."""

from __future__ import annotations

import copy
from dataclasses import asdict

import numpy as np
import pytest
import torch

from napari_samtune.core.embeddings import EmbeddingStore
from napari_samtune.core.models.registry import save_model
from napari_samtune.core.predictor import ObjectPrompt, Predictor
from napari_samtune.core.training.adapters import (
    ADAPTER_FORMAT,
    ADAPTER_VERSION,
    AdapterError,
    apply_adapter,
    content_sha256,
    load_adapter,
    save_adapter,
)
from napari_samtune.core.training.data import prepare_training_data
from napari_samtune.core.training.fine_tune import fine_tune
from napari_samtune.core.training.interactive import InteractiveFineTuning, InteractiveSettings
from napari_samtune.core.training.loop import TrainConfig

from .conftest import TINY, make_model
from .test_interactive import LORA, assert_same_state, disc_scenes, run, state_of

PROMPTS = [
    ObjectPrompt(points=np.array([[20.0, 30.0]])),
    ObjectPrompt(points=np.array([[40.0, 12.0], [10.0, 50.0]]), labels=np.array([1, 0])),
    ObjectPrompt(box=np.array([5.0, 5.0, 40.0, 50.0])),
]


@pytest.fixture(scope="module")
def data():
    images, labels = disc_scenes(4, 64, (8, 14), per_image=2, seed=1)
    return prepare_training_data(images, labels, validation_fraction=0.25, seed=0)


@pytest.fixture(scope="module")
def base():
    return make_model()


def fine_tuned(base, data, settings):
    # A validation score that rises every time keeps the trained weights (no restore to the start).
    scores = iter(range(100))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(InteractiveFineTuning, "validate", lambda self: float(next(scores)))
        config = TrainConfig(steps=3, warmup_steps=0)
        return run(fine_tune(base, data, settings=settings, config=config, cache_root=False))[1]


@pytest.fixture(scope="module")
def decoder_result(base, data):
    return fine_tuned(base, data, InteractiveSettings(lr=1e-2))


@pytest.fixture(scope="module")
def lora_result(base, data):
    return fine_tuned(base, data, InteractiveSettings(lora=LORA, train_decoder=False, lr=1e-2))


@pytest.fixture(params=["decoder", "lora"])
def result(request):
    return request.getfixturevalue(f"{request.param}_result")


def embed(model, data):
    return EmbeddingStore(model, data.volumes[0], cache_root=False).plane(0)


def test_save_load_apply_gives_the_fine_tuned_predictions(result, base, data, tmp_path):
    before = state_of(base)
    applied = apply_adapter(base, load_adapter(save_adapter(result.adapter, tmp_path / "cells.samtune")))
    assert_same_state(base, before)  # the base model is not changed
    assert applied.encoder_id == result.model.encoder_id
    tuned_embedding = embed(result.model, data)
    assert torch.equal(embed(applied, data).features, tuned_embedding.features)
    expected = Predictor(result.model).predict(tuned_embedding, PROMPTS, return_logits=True)
    got = Predictor(applied).predict(tuned_embedding, PROMPTS, return_logits=True)
    np.testing.assert_array_equal(got.masks, expected.masks)
    np.testing.assert_array_equal(got.scores, expected.scores)
    np.testing.assert_array_equal(got.logits, expected.logits)
    # The fine-tune did change the predictions (the check above is not base against base).
    base_embedding = embed(base, data)
    original = Predictor(base).predict(base_embedding, PROMPTS, return_logits=True)
    assert not np.array_equal(original.logits, expected.logits)
    assert torch.equal(base_embedding.features, tuned_embedding.features) == (result.adapter.lora is None)
    assert applied.metadata["adapter"]["method"] == "interactive"


def test_an_adapter_only_fits_its_own_base_model(decoder_result):
    adapter = decoder_result.adapter
    with pytest.raises(AdapterError, match=r"base model 'tiny' \(weights sha256 seed0…\).*'other' \(seed1…\)"):
        apply_adapter(make_model(seed=1, name="other"), adapter)
    # Same name, other weights: still refused (the sha256 decides).
    with pytest.raises(
        AdapterError, match=r"'tiny' \(weights sha256 seed0…\) but the loaded model is 'tiny' \(seed1…\)"
    ):
        apply_adapter(make_model(seed=1), adapter)


def test_save_is_atomic(decoder_result, lora_result, tmp_path, monkeypatch):
    path = save_adapter(decoder_result.adapter, tmp_path / "cells.samtune")
    previous = path.read_bytes()

    def broken_save(obj, handle, *args, **kwargs):
        handle.write(b"half an adapter")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_adapter(lora_result.adapter, path)
    assert path.read_bytes() == previous
    with pytest.raises(OSError, match="disk full"):
        save_adapter(lora_result.adapter, tmp_path / "new.samtune")
    assert [p.name for p in tmp_path.iterdir()] == ["cells.samtune"]  # no temporary file left
    monkeypatch.undo()
    assert load_adapter(path).modules.keys() == {"mask_decoder"}


def tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in tensors(v)]
    return []


def test_a_decoder_adapter_holds_the_decoder_and_nothing_of_the_encoder(decoder_result, base, tmp_path):
    adapter = decoder_result.adapter
    assert adapter.modules.keys() == {"mask_decoder"} and adapter.lora is None and adapter.prompt_embeddings is None
    trained = decoder_result.model.sam.mask_decoder.state_dict()
    assert adapter.modules["mask_decoder"].keys() == trained.keys()
    assert all(torch.equal(adapter.modules["mask_decoder"][k], v) for k, v in trained.items())
    assert any(not torch.equal(v, base.sam.mask_decoder.state_dict()[k]) for k, v in trained.items())
    path = save_adapter(adapter, tmp_path / "decoder.samtune")
    payload = torch.load(path, weights_only=True)
    assert not [k for k in payload["modules"]["mask_decoder"] if "image_encoder" in k]
    assert sum(t.numel() for t in tensors(payload)) == sum(v.numel() for v in trained.values())
    full = tmp_path / "full.pt"
    save_model(decoder_result.model.sam, TINY, full)
    assert path.stat().st_size < 0.75 * full.stat().st_size
    assert adapter.base_sha256 == "seed0" and adapter.base_name == "tiny" and adapter.method == "interactive"
    assert adapter.task == "instances" and adapter.classes == [1]
    assert adapter.train_config["steps"] == 3 and adapter.settings["lr"] == 1e-2


def test_a_lora_adapter_holds_only_the_low_rank_weights(lora_result, tmp_path):
    adapter = lora_result.adapter
    assert adapter.modules == {} and adapter.lora["settings"] == LORA.to_dict()
    state = adapter.lora["state"]
    assert state and all("lora_" in k for k in state)
    # rank 2 on each block's qkv (32 → 96): A is 2 x 32, B is 96 x 2.
    assert sum(t.numel() for t in state.values()) == TINY.encoder_depth * 2 * (32 + 96)
    assert any(t.abs().sum() > 0 for k, t in state.items() if "lora_B" in k)  # B starts at 0: it was trained
    path = save_adapter(adapter, tmp_path / "lora.samtune")
    assert path.stat().st_size < 20_000


def test_load_adapter_explains_unusable_files(decoder_result, tmp_path):
    with pytest.raises(AdapterError, match="does not exist"):
        load_adapter(tmp_path / "missing.samtune")
    (tmp_path / "garbage.samtune").write_bytes(b"not a torch file")
    with pytest.raises(AdapterError, match="cannot read adapter file"):
        load_adapter(tmp_path / "garbage.samtune")
    torch.save({"state_dict": {}}, tmp_path / "model.pt")
    with pytest.raises(AdapterError, match="is not a napari-samtune adapter file"):
        load_adapter(tmp_path / "model.pt")
    path = save_adapter(decoder_result.adapter, tmp_path / "future.samtune")
    payload = torch.load(path, weights_only=True)
    torch.save({**payload, "version": 99}, path)
    with pytest.raises(AdapterError, match="newer napari-samtune"):
        load_adapter(path)


def _flip_a_byte_in_the_largest_tensor(path) -> None:
    import zipfile

    with zipfile.ZipFile(path) as archive:
        entry = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    header = entry.header_offset
    name_length, extra_length = (
        int.from_bytes(data[header + 26 : header + 28], "little"),
        int.from_bytes(data[header + 28 : header + 30], "little"),
    )
    data[header + 30 + name_length + extra_length + entry.file_size // 2] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_damaged_adapter_file_is_refused_not_used(decoder_result, tmp_path):
    path = save_adapter(decoder_result.adapter, tmp_path / "damaged.samtune")
    _flip_a_byte_in_the_largest_tensor(path)
    with pytest.raises(AdapterError, match="is damaged: its contents do not match the checksum"):
        load_adapter(path)


def test_an_adapter_without_checksum_loads_with_a_warning(decoder_result, tmp_path):
    path = save_adapter(decoder_result.adapter, tmp_path / "old.samtune")
    payload = torch.load(path, weights_only=True)
    torch.save({**{k: v for k, v in payload.items() if k != "sha256"}, "version": 1}, path)
    with pytest.warns(UserWarning, match="predates checksums"):
        assert load_adapter(path).method == decoder_result.adapter.method


def test_an_empty_adapter_file_says_so(tmp_path):
    (tmp_path / "empty.samtune").write_bytes(b"")
    with pytest.raises(AdapterError, match="is empty"):
        load_adapter(tmp_path / "empty.samtune")


def test_an_adapter_with_unexpected_entries_is_refused(decoder_result, tmp_path):
    contents = {**asdict(decoder_result.adapter), "surprise": 1}
    payload = {"format": ADAPTER_FORMAT, "version": ADAPTER_VERSION, "sha256": content_sha256(contents), **contents}
    torch.save(payload, tmp_path / "odd.samtune")
    with pytest.raises(AdapterError, match=r"unexpected entries \['surprise'\]"):
        load_adapter(tmp_path / "odd.samtune")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.modules.update(image_encoder={}), "changes a module 'image_encoder'"),
        (lambda a: a.modules["mask_decoder"].update(extra=torch.zeros(1)), "mask_decoder weights do not fit"),
        (lambda a: setattr(a, "prompt_embeddings", torch.zeros(2, 4, TINY.prompt_embed_dim)), r"for 2 class\(es\)"),
        (lambda a: setattr(a, "prompt_embeddings", torch.zeros(1, 4, 5)), "learned prompts have shape"),
    ],
    ids=["module-name", "unexpected-key", "class-count", "prompt-width"],
)
def test_apply_adapter_refuses_contents_that_do_not_fit(decoder_result, base, change, message):
    adapter = copy.deepcopy(decoder_result.adapter)
    change(adapter)
    with pytest.raises(AdapterError, match=message):
        apply_adapter(base, adapter)
