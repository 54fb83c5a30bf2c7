"""The scripted API drives a whole session on a viewer: open → prompt → commit → fine-tune → uncertainty → save."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_samtune.api import SamSession
from napari_samtune.core.segmenter import Segmenter, masks_to_labels
from napari_samtune.core.training.adapters import load_adapter
from napari_samtune.services.layers import LayerError
from napari_samtune.services.uncertainty import PROMPT_FREE
from tests.core.conftest import make_model
from tests.core.test_propagation import ellipsoids

from .conftest import open_prompt_widget
from .test_finetune_widget import add_discs
from .test_prompt_widget import oracle_segment


def test_a_scripted_session_from_sample_to_adapter(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    prompt_widget = open_prompt_widget(viewer)
    model = make_model()
    session = SamSession(viewer, model=model)
    image = session.open_sample("nuclei")
    assert image.name == "nuclei" and session.labels.name == "nuclei labels"
    assert session.encode().is_encoded(0)

    masks = session.prompt(points=[[60, 60], [90, 200]], point_labels=[1, 0], boxes=[[100, 90, 180, 200]])
    assert masks.shape == (2, 256, 256) and masks.any()
    np.testing.assert_array_equal(viewer.layers["preview"].data, masks_to_labels(masks))
    assert list(viewer.layers["prompts"].features["label"]) == ["positive", "negative"]
    assert session.commit() == [1, 2]
    np.testing.assert_array_equal(viewer.layers["segmentation"].data, masks_to_labels(masks))
    assert len(viewer.layers["prompts"].data) == 0 and not viewer.layers["preview"].data.any()

    steps = []
    result = session.fine_tune(method="interactive", seconds=60, steps=2, on_event=lambda e: steps.append(e.step))
    assert result.training.steps == 2 and steps[-1] == 2 and session.model is result.model
    assert prompt_widget.loaded_model is result.model  # the open widget follows the session
    again = session.fine_tune(method="interactive", steps=1)
    assert again.adapter.base_sha256 == model.weights_sha256 and session.base_model is model  # from the base again

    session.prompt(points=[[60, 60]])
    layer = session.show_uncertainty(source="entropy")
    assert layer.name == "uncertainty" and layer.data.shape == (256, 256)
    assert 0.0 <= layer.data.min() and layer.data.max() <= 1.0
    position = session.next_uncertain_region()
    assert position is not None and tuple(np.round(viewer.camera.center[-2:])) == position

    path = session.save_adapter(tmp_path / "nuclei.pt")
    assert load_adapter(path).method == "interactive"
    picture = session.screenshot(tmp_path / "nuclei.png")
    assert (tmp_path / "nuclei.png").is_file() and picture.ndim == 3
    session.save_labels(tmp_path / "segmentation.tif")
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "segmentation.tif"), viewer.layers["segmentation"].data)


def test_propagate_through_a_stack_and_prompt_free_segmentation_of_any_model(make_napari_viewer, monkeypatch):
    truth = ellipsoids()
    viewer = make_napari_viewer()
    viewer.add_image((40 + 150 * (truth > 0)).astype(np.uint8), name="cells")
    session = SamSession(viewer, model=make_model(), cache_root=False)
    session.use_image("cells")
    with monkeypatch.context() as patch:
        patch.setattr(Segmenter, "segment", oracle_segment(truth))
        session.prompt(points=[[4, 20, 20]])
        assert viewer.dims.current_step[0] == 4
        assert session.propagate() == [1]
    np.testing.assert_array_equal(viewer.layers["segmentation"].data, truth == 1)  # planes 2-6

    session.use_image(viewer.add_image(truth[4].astype(np.uint8), name="flat"))
    session.prompt(points=[[48, 48]])  # the prompt layers of the stack are replaced by 2D ones
    with pytest.raises(LayerError, match="is 2D"):
        session.propagate()
    everything = session.segment_automatic(name="flat, every object")  # no learned prompts: a grid of clicks
    assert everything.data.shape == (64, 64) and everything.data.dtype == np.int32


def test_prompt_free_segmentation_after_blo_on_a_stack(make_napari_viewer):
    viewer = make_napari_viewer()
    add_discs(viewer, planes=2)
    session = SamSession(viewer, model=make_model(), cache_root=False)
    with pytest.raises(LayerError, match="no image"):
        session.prompt(points=[[0, 20, 20]])
    session.use_image("discs", "discs labels")
    session.prompt(points=[[1, 20, 20]])
    assert viewer.dims.current_step[0] == 1  # the view went to the prompt's plane
    session.fine_tune(method="blo", steps=2)
    segmented = session.segment_automatic()
    assert segmented.name == "discs prompt-free" and segmented.data.shape == (2, 64, 64)
    assert set(np.unique(segmented.data)) <= {0, 1}  # class values of the learned prompts
    layer = session.show_uncertainty(source=PROMPT_FREE)
    assert layer.data[1].any() and not layer.data[0].any()
