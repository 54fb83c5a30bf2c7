"""Embedding cache and tiling: cache hits skip the encoder, interrupted or damaged stores are completed or rebuilt."""

from __future__ import annotations

import errno
import logging
import re
import threading

import numpy as np
import pytest
import torch
import zarr

from napari_samtune.core import embeddings
from napari_samtune.core.embeddings import CacheError, CacheWarning, EmbeddingStore, Tiling, tile_grid, tile_inputs
from napari_samtune.core.image import ImageError, as_volume

STACK = np.random.default_rng(0).random((3, 40, 40)).astype(np.float32)


@pytest.fixture
def encoded(tiny_model, monkeypatch) -> list[int]:
    """How many tiles each call of the tiny model's image encoder received."""
    forward = tiny_model.sam.image_encoder.forward

    def counting(x: torch.Tensor) -> torch.Tensor:
        encoded.append(x.shape[0])
        return forward(x)

    encoded: list[int] = []
    monkeypatch.setattr(tiny_model.sam.image_encoder, "forward", counting)
    return encoded


def test_cache_hit_does_not_run_the_encoder(tiny_model, encoded, tmp_path):
    volume = as_volume(STACK[0])
    first = EmbeddingStore(tiny_model, volume, cache_root=tmp_path)
    features = first.plane(0).features
    assert encoded == [1] and features.shape == (1, 32, 8, 8)
    assert torch.equal(first.plane(0).features, features) and encoded == [1]
    second = EmbeddingStore(tiny_model, as_volume(STACK[0].copy()), cache_root=tmp_path)
    assert second.path == first.path and second.is_cached(0)
    assert torch.equal(second.plane(0).features, features)
    assert encoded == [1]


def test_default_cache_folder_follows_samtune_cache_dir(tiny_model, tmp_path):
    store = EmbeddingStore(tiny_model, as_volume(STACK[0]))
    assert store.path.parent == tmp_path / "cache" / "embeddings"  # SAMTUNE_CACHE_DIR, set by conftest
    store.plane(0)
    assert EmbeddingStore(tiny_model, as_volume(STACK[0])).is_cached(0)


def test_another_encoder_or_image_gets_its_own_store(tiny_model, tmp_path):
    volume = as_volume(STACK[0])
    store = EmbeddingStore(tiny_model, volume, cache_root=tmp_path)
    store.plane(0)
    changed = STACK[0].copy()
    changed[5, 5] += 0.5
    other_image = EmbeddingStore(tiny_model, as_volume(changed), cache_root=tmp_path)
    other_tiling = EmbeddingStore(tiny_model, volume, tiling=Tiling(mode="never"), cache_root=tmp_path)
    tiny_model.encoder_id = "tiny:fine-tuned"
    other_encoder = EmbeddingStore(tiny_model, volume, cache_root=tmp_path)
    stores = [store, other_image, other_tiling, other_encoder]
    assert len({s.key for s in stores}) == 4 and len({s.path for s in stores}) == 4
    assert [s.is_cached(0) for s in stores] == [True, False, False, False]


def test_interrupted_store_encodes_only_the_missing_planes(tiny_model, encoded, tmp_path):
    volume = as_volume(STACK)
    store = EmbeddingStore(tiny_model, volume, cache_root=tmp_path)
    assert [e["cached"] for e in store.encode_all()] == [False, False, False]
    before = [store.plane(i).features for i in range(3)]
    zarr.open_group(str(store.path), mode="r+")["done"][1] = False  # as if killed while writing plane 1
    encoded.clear()
    resumed = EmbeddingStore(tiny_model, volume, cache_root=tmp_path)
    assert [resumed.is_cached(i) for i in range(3)] == [True, False, True]
    events = list(resumed.encode_all())
    assert [(e["plane"], e["cached"]) for e in events] == [(0, True), (1, False), (2, True)]
    assert encoded == [1]
    for i in range(3):
        torch.testing.assert_close(resumed.plane(i).features, before[i])
    assert encoded == [1]


def test_store_with_one_plane_done_encodes_the_other_two(tiny_model, encoded, tmp_path):
    volume = as_volume(STACK)
    EmbeddingStore(tiny_model, volume, cache_root=tmp_path).plane(0)
    store = EmbeddingStore(tiny_model, volume, cache_root=tmp_path)
    assert [e["cached"] for e in store.encode_all()] == [True, False, False]
    assert encoded == [1, 1, 1]


def test_encode_all_reports_each_plane_and_stops_when_asked(tiny_model, encoded, tmp_path):
    store = EmbeddingStore(tiny_model, as_volume(STACK), cache_root=tmp_path)
    events: list[dict] = []
    for event in store.encode_all(should_stop=lambda: len(events) == 2):
        events.append(event)
    assert events == [
        {"done": 1, "total": 3, "cached": False, "plane": 0},
        {"done": 2, "total": 3, "cached": False, "plane": 1},
    ]
    assert len(encoded) == 2 and not store.is_cached(2)
    events = list(store.encode_all(planes=[2, 0]))
    assert [(e["done"], e["total"], e["plane"], e["cached"]) for e in events] == [(1, 2, 2, False), (2, 2, 0, True)]
    assert len(encoded) == 3


def _first_cached_store(model, tmp_path) -> EmbeddingStore:
    store = EmbeddingStore(model, as_volume(STACK), cache_root=tmp_path)
    list(store.encode_all())
    return store


def _change_key(path):
    zarr.open_group(str(path), mode="r+").attrs["key"] = "written by something else"


def _delete_feature_metadata(path):
    (path / "features" / "zarr.json").unlink()


def _delete_done_metadata(path):
    (path / "done" / "zarr.json").unlink()


def _garbage_group_metadata(path):
    (path / "zarr.json").write_text("not json {")


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (_change_key, "its key or layout does not match"),
        (_delete_feature_metadata, "it cannot be read"),
        (_delete_done_metadata, "it cannot be read"),
        (_garbage_group_metadata, "it cannot be read"),
    ],
)
def test_unusable_store_is_rebuilt_or_refused_when_strict(tiny_model, encoded, tmp_path, caplog, damage, problem):
    path = _first_cached_store(tiny_model, tmp_path).path
    damage(path)
    encoded.clear()
    with pytest.raises(CacheError, match=re.escape(f"embedding cache {path} is unusable: {problem}")):
        EmbeddingStore(tiny_model, as_volume(STACK), cache_root=tmp_path, strict=True)
    with caplog.at_level(logging.WARNING):
        rebuilt = EmbeddingStore(tiny_model, as_volume(STACK), cache_root=tmp_path)
    assert f"rebuilding embedding cache {path}" in caplog.text
    assert [rebuilt.is_cached(i) for i in range(3)] == [False, False, False]
    rebuilt.plane(1)
    assert encoded == [1]
    assert EmbeddingStore(tiny_model, as_volume(STACK), cache_root=tmp_path, strict=True).is_cached(1)


def test_damaged_chunk_is_encoded_again_or_refused_when_strict(tiny_model, encoded, tmp_path):
    store = _first_cached_store(tiny_model, tmp_path)
    expected = store.plane(1).features
    for chunk in (store.path / "features" / "c" / "1").rglob("*"):
        if chunk.is_file():
            chunk.write_bytes(b"\x00garbage")
    encoded.clear()
    strict = EmbeddingStore(tiny_model, as_volume(STACK), cache_root=tmp_path, strict=True)
    with pytest.raises(CacheError, match=re.escape(f"embedding cache {store.path} is unusable: plane 1 cannot")):
        strict.plane(1)
    repaired = EmbeddingStore(tiny_model, as_volume(STACK), cache_root=tmp_path)
    torch.testing.assert_close(repaired.plane(1).features, expected)
    assert encoded == [1]
    torch.testing.assert_close(
        EmbeddingStore(tiny_model, as_volume(STACK), cache_root=tmp_path).plane(1).features, expected
    )
    assert encoded == [1]


def test_memory_only_store_writes_nothing(tiny_model, encoded, tmp_path):
    volume = as_volume(STACK[0])
    store = EmbeddingStore(tiny_model, volume, cache_root=False)
    assert store.path is None and not store.is_cached(0)
    assert list(store.encode_all()) == [{"done": 1, "total": 1, "cached": False, "plane": 0}]
    features = store.plane(0).features
    assert encoded == [1]  # encode_all's work is kept, not done twice
    assert list(tmp_path.iterdir()) == []
    on_disk = EmbeddingStore(tiny_model, volume, cache_root=tmp_path / "disk").plane(0).features
    torch.testing.assert_close(features, on_disk)


@pytest.mark.parametrize("shape", [(300, 1000), (40, 1000), (1000, 65), (64, 65)])
@pytest.mark.parametrize("overlap", [0, 16, 64])
def test_tiles_cover_the_plane_with_at_least_the_requested_overlap(shape, overlap):
    size = 64
    tiles, scale = tile_grid(shape, size, Tiling(overlap=overlap))
    assert scale == 1.0
    rows, cols = tiles[:, 2] - tiles[:, 0], tiles[:, 3] - tiles[:, 1]
    assert (tiles[:, :2] >= 0).all() and (tiles[:, 2] <= shape[0]).all() and (tiles[:, 3] <= shape[1]).all()
    assert (rows == min(size, shape[0])).all() and (cols == min(size, shape[1])).all()
    covered = np.zeros(shape, int)
    for r0, c0, r1, c1 in tiles:
        covered[r0:r1, c0:c1] += 1
    assert covered.min() >= 1
    wanted = min(overlap, size // 2)  # an overlap of half a tile or more is capped at half a tile
    for axis, length in enumerate(shape):
        starts = np.unique(tiles[:, axis])
        if length > size:
            assert (starts[:-1] + size - starts[1:]).min() >= wanted
            assert starts[-1] + size == length
    assert len(tiles) == len(np.unique(tiles[:, 0])) * len(np.unique(tiles[:, 1]))


def test_300_by_1000_plane_grid():
    tiles, _ = tile_grid((300, 1000), 64, Tiling(overlap=16))
    assert len(np.unique(tiles[:, 0])) == 6 and len(np.unique(tiles[:, 1])) == 21


@pytest.mark.parametrize(("shape", "scale"), [((50, 40), 64 / 50), ((64, 64), 1.0), ((30, 64), 1.0)])
def test_plane_up_to_the_input_size_is_one_resized_tile(shape, scale):
    tiles, got = tile_grid(shape, 64, Tiling())
    assert tiles.tolist() == [[0, 0, *shape]] and got == pytest.approx(scale)


def test_tiling_never_resizes_the_whole_plane():
    tiles, scale = tile_grid((300, 1000), 64, Tiling(mode="never"))
    assert tiles.tolist() == [[0, 0, 300, 1000]] and scale == pytest.approx(0.064)
    (tile,) = tile_inputs(np.zeros((300, 1000, 3), np.float32), tiles, scale)
    assert tile.shape == (1, 3, 19, 64)


def test_tiling_options_are_checked():
    with pytest.raises(ValueError, match="tiling mode must be 'auto' or 'never', got 'always'"):
        Tiling(mode="always")
    with pytest.raises(ValueError, match="tile overlap must be ≥ 0, got -1"):
        Tiling(overlap=-1)


def test_tiled_store_embeds_every_tile(tiny_model, encoded):
    image = np.random.default_rng(1).random((150, 90)).astype(np.float32)
    store = EmbeddingStore(tiny_model, as_volume(image), tiling=Tiling(overlap=16), cache_root=False, batch_size=4)
    embedding = store.plane(0)
    assert embedding.tiles.tolist() == [[r, c, r + 64, c + 64] for r in (0, 43, 86) for c in (0, 26)]
    assert embedding.features.shape == (6, 32, 8, 8) and embedding.scale == 1.0
    assert embedding.plane_shape == (150, 90) and embedding.input_size == 64
    assert encoded == [4, 2]


# data safety: concurrent writers, unusable folders, damaged chunks, non-finite values


def test_concurrent_stores_on_one_cache_all_succeed_and_agree(tiny_model, tmp_path):
    expected = [EmbeddingStore(tiny_model, as_volume(STACK), cache_root=False).plane(i).features for i in range(3)]
    errors: list[BaseException] = []

    def encode(root, order):
        try:
            store = EmbeddingStore(tiny_model, as_volume(STACK), cache_root=root)
            for i in order:
                torch.testing.assert_close(store.plane(i).features, expected[i])
        except BaseException as error:
            errors.append(error)

    for trial in range(6):
        orders = [[0, 1, 2], [2, 1, 0], [1, 0, 2], [0, 2, 1]]
        threads = [threading.Thread(target=encode, args=(tmp_path / str(trial), o)) for o in orders]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    final = EmbeddingStore(tiny_model, as_volume(STACK), cache_root=tmp_path / "0", strict=True)
    assert all(final.is_cached(i) for i in range(3))


@pytest.mark.parametrize("via", ["cache_root", "SAMTUNE_CACHE_DIR"])
def test_an_unusable_cache_folder_falls_back_to_memory_with_a_warning(tiny_model, tmp_path, monkeypatch, via):
    blocker = tmp_path / "a file"
    blocker.write_text("")
    if via == "SAMTUNE_CACHE_DIR":
        monkeypatch.setenv("SAMTUNE_CACHE_DIR", str(blocker))
    root = blocker if via == "cache_root" else blocker / "embeddings"
    with pytest.warns(CacheWarning, match=re.escape(f"embedding cache folder {root} cannot be used")) as caught:
        store = EmbeddingStore(tiny_model, as_volume(STACK), cache_root=blocker if via == "cache_root" else None)
    assert (via if via == "SAMTUNE_CACHE_DIR" else "--cache-dir (cache_root)") in str(caught[0].message)
    assert store.path is None and store.plane(1).features.shape == (1, 32, 8, 8)


def test_a_disk_full_while_writing_keeps_going_in_memory(tiny_model, tmp_path, monkeypatch):
    store = EmbeddingStore(tiny_model, as_volume(STACK), cache_root=tmp_path)

    def full(features):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(embeddings, "features_checksum", full)
    with pytest.warns(CacheWarning, match="No space left on device"):
        features = store.plane(0).features
    assert torch.isfinite(features).all() and store.plane(1) is not None


def test_a_deleted_chunk_under_a_done_plane_is_encoded_again_not_read_as_zeros(tiny_model, encoded, tmp_path):
    store = _first_cached_store(tiny_model, tmp_path)
    expected = store.plane(1).features
    chunks = [p for p in (store.path / "features" / "c" / "1").rglob("*") if p.is_file()]
    assert chunks
    for chunk in chunks:
        chunk.unlink()
    encoded.clear()
    again = EmbeddingStore(tiny_model, as_volume(STACK), cache_root=tmp_path)
    assert again.is_cached(1)  # marked done, but its data is checked before use
    torch.testing.assert_close(again.plane(1).features, expected)
    assert encoded == [1]


def test_values_beyond_float32_give_finite_embeddings(tiny_model, tmp_path):
    image = np.random.default_rng(0).uniform(-1e300, 1e300, (40, 40))
    features = EmbeddingStore(tiny_model, as_volume(image), cache_root=tmp_path).plane(0).features
    assert torch.isfinite(features).all() and features.abs().sum() > 0


def test_non_finite_embeddings_are_never_cached(tiny_model, tmp_path):
    with torch.no_grad():
        next(tiny_model.sam.image_encoder.parameters()).fill_(float("nan"))
    store = EmbeddingStore(tiny_model, as_volume(STACK), cache_root=tmp_path)
    with pytest.raises(ImageError, match="NaN or infinite embeddings for plane 0"):
        store.plane(0)
    assert not EmbeddingStore(tiny_model, as_volume(STACK), cache_root=tmp_path).is_cached(0)


def test_a_plane_outside_the_image_is_named(tiny_model):
    with pytest.raises(IndexError, match=r"plane 3 does not exist: the image has 3 plane\(s\), numbered 0 to 2"):
        EmbeddingStore(tiny_model, as_volume(STACK), cache_root=False).is_cached(3)
