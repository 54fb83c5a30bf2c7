"""Block-wise segmentation of large images: equal to the whole-image path away from seams, objects across a block
border merged into one label, resumable, and the same on a dask cluster."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from skimage.draw import disk

from napari_samtune.core import batch as batch_module
from napari_samtune.core.automatic import InstanceSettings, segment_automatic, segment_instances
from napari_samtune.core.batch import BatchError, segment_large_image
from napari_samtune.core.models import load_model
from napari_samtune.core.segmenter import Segmenter

from .conftest import make_model

# The filters are not under test here (and the small model's logits are too soft for SAM's stability threshold).
SETTINGS = InstanceSettings(points_per_side=8, min_score=0.0, min_stability=0.0)


def _run(*args, **kwargs) -> list[dict]:
    return list(segment_large_image(*args, **kwargs))


def _disc_image() -> tuple[np.ndarray, list[tuple[int, int]]]:
    rng = np.random.default_rng(0)
    image = rng.normal(30, 4, (420, 400))
    centres = [(60, 70), (210, 200), (340, 80), (90, 330), (350, 320)]  # (210, 200) sits on the block corner
    for centre in centres:
        rr, cc = disk(centre, 22, shape=image.shape)
        image[rr, cc] += 150
    return np.clip(image, 0, 255).astype(np.uint8), centres


@pytest.fixture(scope="module")
def bundled():
    return load_model("samtune_small", device="cpu")


def test_learned_prompts_give_the_whole_image_labels_exactly(tmp_path):
    model = make_model()
    torch.manual_seed(0)
    model.prompt_embeddings = torch.randn(2, 2, model.sam.prompt_encoder.embed_dim)
    model.classes = (1, 2)
    image = np.random.default_rng(1).integers(0, 255, (150, 170)).astype(np.uint8)
    segmenter = Segmenter(model, cache_root=False)
    segmenter.set_image(image)
    whole = segment_automatic(model, segmenter.store.plane(0)).labels
    events = _run(image, tmp_path / "out.zarr", model, block=48)
    assert events[-1] == {"stage": "segment", "done": 16, "total": 16}
    labels = np.asarray(zarr.open_group(tmp_path / "out.zarr")["labels"])
    assert len(np.unique(whole)) == 3, "the random prompts give both classes somewhere"
    assert np.array_equal(labels, whole)


def test_every_object_blockwise_equals_the_whole_image_away_from_seams(tmp_path, bundled):
    image, centres = _disc_image()
    segmenter = Segmenter(bundled, cache_root=False)
    segmenter.set_image(image)
    whole = segment_instances(segmenter.predictor, segmenter.store.plane(0), SETTINGS)
    _run(image, tmp_path / "out.zarr", bundled, block=210, settings=SETTINGS)
    labels = np.asarray(zarr.open_group(tmp_path / "out.zarr")["labels"])
    found = [labels[c] for c in centres]
    assert all(found) and len(set(found)) == len(centres), "each disc has its own label"
    for c in centres[:1] + centres[2:]:  # away from seams the objects are exactly those of the whole-image path
        assert np.array_equal(labels == labels[c], whole == whole[c])
    assert set(np.unique(labels)) == set(range(len(np.unique(labels)))), "labels are numbered 1… without gaps"


def test_border_merge_joins_one_object_cut_in_two_and_not_a_fragment_touching_a_larger_one():
    plan = batch_module.BlockPlan((8, 8), 4, 4)
    store = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    raw = np.zeros((8, 8), np.uint64)
    top, bottom = 1 << batch_module.ID_BITS, 3 << batch_module.ID_BITS  # blocks (0, 1) and (1, 1)
    raw[1:4, 5:8] = top + 1  # one object cut by the horizontal border at row 4 ...
    raw[4:6, 5:8] = bottom + 1  # ... continues below over the same three columns
    raw[2:4, 0:1] = 1  # block (0, 0): a thin fragment on the border ...
    raw[4:7, 0:4] = (2 << batch_module.ID_BITS) + 1  # ... touching a wider object below: not the same object
    store.create_array("raw", data=raw)
    counts = np.array([[1, 1], [1, 1]], np.uint32)
    store.create_array("counts", data=counts)
    lookups = batch_module.final_ids(store, plan)
    final = {b: lookups[b][1] for b in plan.blocks()}
    assert final[(0, 1)] == final[(1, 1)]
    assert final[(0, 0)] != final[(1, 0)]
    assert sorted(set(final.values())) == [1, 2, 3]


def test_an_interrupted_run_resumes_with_the_missing_blocks_only(tmp_path, bundled, monkeypatch):
    image, _ = _disc_image()
    out = tmp_path / "out.zarr"
    run = segment_large_image(image, out, bundled, block=210, settings=SETTINGS)
    next(run), next(run)
    run.close()  # interrupted after two of the four blocks
    assert np.asarray(zarr.open_group(out)["done"]).sum() == 2
    calls = []
    original = batch_module.segment_block
    monkeypatch.setattr(batch_module, "segment_block", lambda *a: calls.append(a[2]) or original(*a))
    events = _run(image, out, bundled, block=210, settings=SETTINGS)
    assert len(calls) == 2 and [e["done"] for e in events if e["stage"] == "segment"] == [3, 4]
    resumed = np.asarray(zarr.open_group(out)["labels"])
    _run(image, tmp_path / "straight.zarr", bundled, block=210, settings=SETTINGS)
    assert np.array_equal(resumed, np.asarray(zarr.open_group(tmp_path / "straight.zarr")["labels"]))
    with pytest.raises(BatchError, match="another image"):
        _run(image[:400], out, bundled, block=210, settings=SETTINGS)


def test_small_images_and_stacks_are_refused_with_a_reason(tmp_path, bundled):
    with pytest.raises(BatchError, match="fits the model input"):
        _run(np.zeros((200, 200), np.uint8), tmp_path / "a.zarr", bundled)
    with pytest.raises(BatchError, match="one 2D plane"):
        _run(np.zeros((3, 400, 400), np.uint8), tmp_path / "b.zarr", bundled)


def test_a_zarr_image_on_a_local_dask_cluster_equals_the_in_process_run(tmp_path):
    distributed = pytest.importorskip("distributed")
    image, centres = _disc_image()
    zarr.create_array(tmp_path / "image.zarr", data=image, chunks=(128, 128))
    spec = batch_module.ModelSpec("samtune_small")
    _run(str(tmp_path / "image.zarr"), tmp_path / "here.zarr", spec, block=210, settings=SETTINGS)
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
    ):
        client.run(batch_module.torch_threads_per_worker, 1)
        _run(str(tmp_path / "image.zarr"), tmp_path / "there.zarr", spec, block=210, settings=SETTINGS, client=client)
    here = np.asarray(zarr.open_group(tmp_path / "here.zarr")["labels"])
    there = np.asarray(zarr.open_group(tmp_path / "there.zarr")["labels"])
    assert np.array_equal(here, there) and all(here[c] for c in centres)
