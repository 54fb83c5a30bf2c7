"""'Refine labels': the objects of a Labels layer made elsewhere become mask prompts that the model refines."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from napari_samtune.core.models import load_model

from .conftest import open_prompt_widget


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_a_rough_disc_label_is_refined_towards_the_true_disc(make_napari_viewer, errors):
    yy, xx = np.mgrid[:256, :256]
    disc = (yy - 128) ** 2 + (xx - 120) ** 2 < 40**2
    rng = np.random.default_rng(0)
    image = (60 + 120 * disc + rng.normal(0, 10, disc.shape)).clip(0, 255).astype(np.uint8)
    rough = ndimage.binary_dilation(disc, iterations=12)
    viewer = make_napari_viewer()
    viewer.add_image(image, name="disc")
    widget = open_prompt_widget(viewer, load_model("samtune_small", device="cpu"))
    made_elsewhere = viewer.add_labels(rough.astype(np.int32) * 7, name="threshold")

    viewer.layers.selection.active = made_elsewhere
    widget.refine_labels.native.click()
    refined = viewer.layers["preview"].data > 0
    assert not errors
    assert iou(refined, disc) > iou(rough, disc) + 0.15  # rough 0.63; refined about 0.90

    widget.commit.native.click()
    labels = viewer.layers["segmentation"].data
    np.testing.assert_array_equal(labels > 0, refined)
    assert not viewer.layers["preview"].data.any()
    np.testing.assert_array_equal(made_elsewhere.data, rough.astype(np.int32) * 7)  # the source stays as it was


def test_refine_without_a_labels_layer_selected_says_what_to_select(make_napari_viewer, errors):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-samtune", "nuclei")
    widget = open_prompt_widget(viewer)
    viewer.layers.selection.active = viewer.layers["nuclei"]
    widget.refine_labels.native.click()
    assert errors and "select the Labels layer whose objects to refine" in errors[-1]

    viewer.add_labels(np.zeros((10, 10), np.int32), name="small")
    widget.refine_labels.native.click()
    assert "has shape (10, 10)" in errors[-1] and "'nuclei'" in errors[-1]
