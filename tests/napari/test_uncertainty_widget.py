"""The uncertainty widget: the map of the prompted object as a layer over the image, and the walk through the most
uncertain regions."""

from __future__ import annotations

import numpy as np

from napari_samtune.services.uncertainty import PROMPT_FREE

from .conftest import open_prompt_widget
from .test_finetune_widget import add_discs, open_finetune_widget

WIDGET = "Uncertainty"


def prompted(viewer, point: list[float]):
    """The prompt widget on the viewer's image with one positive click at ``point``, segmented (so encoded)."""
    prompt = open_prompt_widget(viewer)
    viewer.layers["prompts"].add([point])
    prompt.segment.native.click()
    _, widget = viewer.window.add_plugin_dock_widget("napari-samtune", WIDGET)
    return prompt, widget


def test_uncertainty_layer_over_the_image_and_next_region_moves_the_view(make_napari_viewer):
    viewer = make_napari_viewer()
    add_discs(viewer)
    _, widget = prompted(viewer, [20.0, 20.0])
    for source in ("prompt", "tta", "entropy"):
        widget.source.value = source
        widget.show_uncertainty.native.click()
        layer = viewer.layers["uncertainty"]
        assert layer.data.shape == (64, 64) and layer.data.dtype == np.float32
        assert 0.0 <= layer.data.min() and layer.data.max() <= 1.0 and layer.data.max() > 0
        assert tuple(layer.contrast_limits) == (0.0, 1.0) and layer.colormap.name == "inferno"
        assert layer.opacity == 0.6 and layer.blending == "additive"
    assert [lay.name for lay in viewer.layers].count("uncertainty") == 1  # updated, not added again

    viewer.camera.center = (0.0, 0.0)
    centres = []
    for _ in range(2):
        widget.next_region.native.click()
        centres.append(tuple(np.round(viewer.camera.center[-2:])))
    assert centres[0] != (0.0, 0.0) and centres[1] != centres[0]  # moved, then to a region not visited yet
    row, col = (int(c) for c in centres[0])
    data = viewer.layers["uncertainty"].data
    assert data[row, col] > np.median(data)


def test_next_region_shows_its_plane_in_a_stack(make_napari_viewer):
    viewer = make_napari_viewer()
    add_discs(viewer, planes=3)
    viewer.dims.current_step = (2, 0, 0)
    _, widget = prompted(viewer, [2.0, 20.0, 20.0])
    widget.source.value = "entropy"
    widget.show_uncertainty.native.click()
    data = viewer.layers["uncertainty"].data
    assert data.shape == (3, 64, 64) and data[2].any() and not data[:2].any()
    viewer.dims.current_step = (0, 0, 0)
    widget.next_region.native.click()
    assert viewer.dims.current_step[0] == 2


def test_prompt_free_uncertainty_after_blo(make_napari_viewer):
    viewer = make_napari_viewer()
    image, labels = add_discs(viewer)
    prompt, widget = prompted(viewer, [20.0, 20.0])
    open_finetune_widget(viewer, image, labels, method="blo").fine_tune.native.click()
    prompt.encode.native.click()  # the adapted model's embeddings
    widget.source.value = PROMPT_FREE
    widget.show_uncertainty.native.click()
    data = viewer.layers["uncertainty"].data
    assert data.shape == (64, 64) and 0.0 <= data.min() and data.max() <= 1.0


def test_errors_are_notifications(make_napari_viewer, errors):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-samtune", WIDGET)
    widget.show_uncertainty.native.click()
    assert "open 'Segment with prompts'" in errors[-1]
    widget.next_region.native.click()
    assert "no 'uncertainty' layer" in errors[-1]

    add_discs(viewer)
    prompt = open_prompt_widget(viewer)
    widget.show_uncertainty.native.click()
    assert "not encoded yet" in errors[-1]
    prompt.encode.native.click()
    widget.show_uncertainty.native.click()
    assert "no object prompted" in errors[-1]
    widget.source.value = PROMPT_FREE
    widget.show_uncertainty.native.click()
    assert "has no learned prompts" in errors[-1]
