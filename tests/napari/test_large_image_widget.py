"""'Segment large image': a dask-backed image segmented block-wise with the session's model gives the whole-image
labels, shown as a Labels layer read lazily from the zarr store; a cancelled run resumes from its blocks."""

from __future__ import annotations

import dask.array as da
import numpy as np
import torch
import zarr
from napari.layers import Image, Labels

from napari_samtune.core.automatic import segment_automatic
from napari_samtune.core.jobs import drive
from napari_samtune.core.segmenter import Segmenter
from napari_samtune.services.large_image import large_image_job, store_for
from napari_samtune.services.session import session_for
from tests.core.conftest import make_model

WIDGET = "Segment large image"


def _model_with_learned_prompts():
    model = make_model()
    torch.manual_seed(0)
    model.prompt_embeddings = torch.randn(1, 2, model.sam.prompt_encoder.embed_dim)
    model.classes = (1,)
    return model


def _image() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 255, (600, 560)).astype(np.uint8)


def test_a_dask_image_is_segmented_blockwise_into_a_lazy_labels_layer(make_napari_viewer, errors):
    viewer = make_napari_viewer()
    pixels = _image()
    image = viewer.add_image(da.from_array(pixels, chunks=(256, 256)), name="big slide")
    model = _model_with_learned_prompts()
    session_for(viewer).use_model(model)
    _, widget = viewer.window.add_plugin_dock_widget("napari-samtune", WIDGET)
    widget.image.value = image
    widget.block.value = 300
    widget.run.clicked()
    assert not errors
    layer = viewer.layers["big slide labels"]
    assert isinstance(layer, Labels) and isinstance(layer.data, da.Array), "read lazily, not loaded"
    segmenter = Segmenter(model, cache_root=False)
    segmenter.set_image(pixels)
    whole = segment_automatic(model, segmenter.store.plane(0)).labels
    assert len(np.unique(whole)) == 2, "the random prompts find the class somewhere"
    assert np.array_equal(np.asarray(layer.data), whole)
    assert widget.run.text == WIDGET and widget.status.value.startswith("done")


def test_a_cancelled_run_keeps_its_blocks_and_the_next_one_resumes():
    image = Image(_image(), name="slide")
    model = _model_with_learned_prompts()
    asked = []

    def stop_after_two_blocks() -> bool:  # asked after each block
        asked.append(1)
        return len(asked) > 1

    assert drive(large_image_job(image, model, 300, stop_after_two_blocks)) is None
    output = store_for(image, model, 300)
    assert np.asarray(zarr.open_group(output)["done"]).sum() == 2
    events = list(large_image_job(image, model, 300))
    assert [e["done"] for e in events if "done" in e] == [3, 4], "only the missing blocks"
    assert np.asarray(zarr.open_group(output)["done"]).sum() == 4
