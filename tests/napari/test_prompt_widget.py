"""End to end through the prompt widget: prompts → segment → commit, undo, stacks and error reporting."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import torch
from napari.layers import Labels

from napari_samtune._qt.model_choice import CHECKPOINT_FILE
from napari_samtune.core.models import build_sam, save_model
from napari_samtune.core.predictor import ObjectPrompt
from napari_samtune.core.segmenter import Segmenter, masks_to_labels
from tests.core.conftest import TINY, make_model
from tests.core.test_propagation import ellipsoids
from tests.core.test_zoo import ARCH

from .conftest import open_prompt_widget


def core_masks(model, image, rgb: bool, prompts: list[ObjectPrompt], plane: int = 0) -> np.ndarray:
    """What the core alone predicts for ``prompts``: ``(N, H, W)`` bool."""
    segmenter = Segmenter(model, cache_root=False)
    segmenter.set_image(image, rgb=rgb)
    return segmenter.segment(prompts, plane).masks


def test_points_then_box_commit_as_new_labels_and_undo(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-samtune", "nuclei")
    model = make_model()
    widget = open_prompt_widget(viewer, model)
    image, points, boxes = viewer.layers["nuclei"], viewer.layers["prompts"], viewer.layers["boxes"]

    points.add([[60.0, 60.0]])
    widget.segment.native.click()
    first = core_masks(model, image.data, True, [ObjectPrompt(points=np.array([[60.0, 60.0]]), labels=np.ones(1))])
    assert first[0].any()
    np.testing.assert_array_equal(viewer.layers["preview"].data, first[0].astype(np.uint16))

    widget.commit.native.click()
    labels = viewer.layers["segmentation"]
    after_first = masks_to_labels(first)
    np.testing.assert_array_equal(labels.data, after_first)
    assert len(points.data) == 0 and not viewer.layers["preview"].data.any()

    box = np.array([100.0, 90.0, 180.0, 200.0])
    boxes.add_rectangles(np.array([[100.0, 90.0], [180.0, 200.0]]))
    widget.commit.native.click()
    second = core_masks(model, image.data, True, [ObjectPrompt(box=box)])
    np.testing.assert_array_equal(labels.data, masks_to_labels(second, after_first, start=2))
    assert boxes.nshapes == 0

    labels.undo()
    np.testing.assert_array_equal(labels.data, after_first)
    labels.undo()
    assert not labels.data.any()


def test_negative_points_and_box_grouping_reach_the_core(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-samtune", "em_membranes")
    model = make_model(seed=1)
    widget = open_prompt_widget(viewer, model)
    points, boxes = viewer.layers["prompts"], viewer.layers["boxes"]
    boxes.add_rectangles(np.array([[20.0, 20.0], [120.0, 120.0]]))
    points.add([[50.0, 50.0]])
    points.feature_defaults = {"label": "negative"}
    points.add([[60.0, 70.0]])
    widget.segment.native.click()
    expected = core_masks(
        model,
        viewer.layers["em membranes"].data,
        True,
        [
            ObjectPrompt(
                points=np.array([[50.0, 50.0], [60.0, 70.0]]), labels=np.array([1.0, 0.0]), box=[20, 20, 120, 120]
            )
        ],
    )
    np.testing.assert_array_equal(viewer.layers["preview"].data > 0, expected[0])


def test_stack_segments_only_the_current_slice(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-samtune", "nuclei_stack")
    model = make_model()
    widget = open_prompt_widget(viewer, model)
    stack = viewer.layers["nuclei stack"].data
    viewer.dims.current_step = (3, 0, 0)
    viewer.layers["prompts"].add([[3.0, 128.0, 128.0], [5.0, 40.0, 40.0]])  # the plane-5 point is not on view
    widget.commit.native.click()

    expected = core_masks(model, stack, False, [ObjectPrompt(points=np.array([[128.0, 128.0]]))], plane=3)
    labels = viewer.layers["segmentation"].data
    assert labels.shape == stack.shape and expected[0].any()
    np.testing.assert_array_equal(labels[3], expected[0].astype(np.int32))
    assert not np.delete(labels, 3, axis=0).any()
    assert widget.embeddings.value == "slice 3: cached"


def test_live_preview_follows_the_points_with_a_real_worker_thread(make_napari_viewer, qtbot, monkeypatch):
    monkeypatch.delenv("SAMTUNE_SYNC_WORKERS")
    viewer = make_napari_viewer()
    viewer.open_sample("napari-samtune", "polyp")
    widget = open_prompt_widget(viewer)
    assert widget.live_preview.value
    preview = viewer.layers["preview"]
    viewer.layers["prompts"].add([[128.0, 128.0]])
    # throttle, encoding thread, then the preview; the state line is updated by the encoding job's own signal, which
    # may arrive just after the preview's
    try:
        qtbot.waitUntil(lambda: preview.data.any() and widget.embeddings.value == "cached", timeout=10_000)
    except Exception:
        raise AssertionError(f"preview {preview.data.any()}, state {widget.embeddings.value!r}") from None
    assert widget.encode.text == "Encode"
    widget.clear_prompts.native.click()
    assert len(viewer.layers["prompts"].data) == 0 and not preview.data.any()

    points = viewer.layers["prompts"]
    viewer.window.remove_dock_widget(widget.native)
    widget.native.deleteLater()
    qtbot.wait(50)
    assert len(points.keymap) == 0
    points.add([[10.0, 10.0]])  # the layers outlive the widget: nothing may fire into it
    qtbot.wait(300)


def test_encode_shows_the_cache_state_and_loads_a_checkpoint(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-samtune", "nuclei")
    checkpoint = tmp_path / "tiny.pt"
    save_model(make_model().sam, TINY, checkpoint)
    _, widget = viewer.window.add_plugin_dock_widget("napari-samtune", "Segment with prompts")
    widget.model.value = CHECKPOINT_FILE
    widget.checkpoint.value = checkpoint
    assert widget.embeddings.value == "not computed yet"
    widget.encode.native.click()
    assert widget.embeddings.value == "cached"
    assert widget.encode.text == "Encode"


def test_multiscale_image_segments_at_full_resolution(make_napari_viewer):
    viewer = make_napari_viewer()
    big = np.asarray(viewer.open_sample("napari-samtune", "nuclei")[0].data)
    viewer.layers.clear()
    pyramid = viewer.add_image([big, big[::2, ::2]], multiscale=True, rgb=True, name="pyramid")
    model = make_model()
    widget = open_prompt_widget(viewer, model)
    viewer.layers["prompts"].add([[60.0, 60.0]])
    widget.commit.native.click()

    expected = core_masks(model, big, True, [ObjectPrompt(points=np.array([[60.0, 60.0]]), labels=np.ones(1))])
    labels = viewer.layers["segmentation"].data
    assert pyramid.multiscale and labels.shape == big.shape[:2] == viewer.layers["preview"].data.shape
    assert expected[0].any()
    np.testing.assert_array_equal(labels, expected[0].astype(np.int32))


def test_errors_are_notifications_not_exceptions(make_napari_viewer, errors, tmp_path):
    viewer = make_napari_viewer()
    widget = open_prompt_widget(viewer)
    widget.segment.native.click()
    assert "no image to segment" in errors[-1]

    viewer.open_sample("napari-samtune", "nuclei")
    viewer.layers["prompts"].add([[-30.0, 500.0]])
    widget.segment.native.click()
    assert "outside the image" in errors[-1]

    viewer.layers["prompts"].data = [[50.0, 50.0]]
    viewer.add_layer(Labels(np.zeros((10, 10), np.int32), name="segmentation"))
    widget.commit.native.click()
    assert "'segmentation'" in errors[-1] and "(10, 10)" in errors[-1]

    widget.model.value = CHECKPOINT_FILE
    widget.checkpoint.value = tmp_path / "missing.pt"
    widget.encode.native.click()
    assert "missing.pt does not exist" in errors[-1]


def oracle_segment(truth: np.ndarray, delay_s: float = 0.0):
    """A ``Segmenter.segment`` that returns the true object under each prompt's first point, or its box's centre
    (after ``delay_s``): the propagation tests check the walk and the layers, not a model's masks."""

    def segment(self, prompts, plane=0, **kwargs):
        time.sleep(delay_s)
        masks = []
        for prompt in prompts:
            where = prompt.points[0] if prompt.points is not None else (prompt.box[:2] + prompt.box[2:]) / 2
            row, col = np.round(where).astype(int)
            value = truth[plane, row, col]
            masks.append((truth[plane] == value) & (value > 0))
        return SimpleNamespace(masks=np.array(masks))

    return segment


def test_propagate_follows_each_object_through_the_stack_in_one_undo_step(make_napari_viewer, monkeypatch, errors):
    truth = ellipsoids()
    monkeypatch.setattr(Segmenter, "segment", oracle_segment(truth))
    viewer = make_napari_viewer()
    viewer.add_image((40 + 150 * (truth > 0)).astype(np.uint8), name="cells")
    widget = open_prompt_widget(viewer)
    viewer.dims.current_step = (4, 0, 0)
    viewer.layers["prompts"].add([[4.0, 20.0, 20.0]])
    viewer.layers["boxes"].add_rectangles(np.array([[4.0, 42, 42], [4, 42, 54], [4, 54, 54], [4, 54, 42]]))
    widget.propagate.native.click()

    labels = viewer.layers["segmentation"]
    # Boxed objects come first: id 1 is the boxed truth 2 (on all 9 planes), id 2 the clicked truth 1 (planes 2-6).
    np.testing.assert_array_equal(labels.data, np.choose(truth, [0, 2, 1]))
    assert len(viewer.layers["prompts"].data) == 0 and widget.propagate.text == "Propagate"
    labels.undo()
    assert not labels.data.any()

    viewer.add_image(truth[0].astype(np.uint8), name="flat")
    widget.image.value = viewer.layers["flat"]
    widget.propagate.native.click()
    assert "'flat' is 2D" in errors[-1]


def test_cancelling_propagation_changes_no_label(make_napari_viewer, monkeypatch, qtbot):
    monkeypatch.delenv("SAMTUNE_SYNC_WORKERS")
    truth = ellipsoids()
    monkeypatch.setattr(Segmenter, "segment", oracle_segment(truth, delay_s=0.2))
    viewer = make_napari_viewer()
    viewer.add_image((40 + 150 * (truth > 0)).astype(np.uint8), name="cells")
    widget = open_prompt_widget(viewer)
    widget.live_preview.value = False
    viewer.dims.current_step = (4, 0, 0)
    viewer.layers["prompts"].add([[4.0, 48.0, 48.0]])
    widget.propagate.native.click()
    qtbot.waitUntil(lambda: widget.propagate.text == "Cancel", timeout=5_000)
    qtbot.wait(500)  # a few planes into the walk
    widget.propagate.native.click()
    qtbot.waitUntil(lambda: widget.propagate.text == "Propagate", timeout=10_000)
    qtbot.wait(300)
    assert not viewer.layers["segmentation"].data.any()
    assert len(viewer.layers["prompts"].data) == 1  # the prompts stay for another try


def test_model_menu_lists_the_zoo_and_medsam_takes_a_local_file(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-samtune", "nuclei")
    _, widget = viewer.window.add_plugin_dock_widget("napari-samtune", "Segment with prompts")
    choices = widget.model.choices
    for name in ("vit_b_lm", "vit_l_em_organelles", "vit_b_histopathology", "vit_b_medical_imaging", "medsam_vit_b"):
        assert name in choices
    widget.model.value = "vit_b_em_organelles"
    assert "electron microscopy" in widget.model.tooltip
    assert widget._model_request() == ("vit_b_em_organelles", None, None)

    # MedSAM has no download address: its file is chosen in the widget, and loaded under MedSAM's name.
    checkpoint = tmp_path / "medsam_vit_b.pth"
    torch.save({"model": {"module." + k: v for k, v in build_sam(ARCH).state_dict().items()}}, checkpoint)
    widget.model.value = "medsam_vit_b"
    widget.checkpoint.value = checkpoint
    assert widget._model_request() == ("medsam_vit_b", str(checkpoint), None)
    widget.encode.native.click()
    assert widget.embeddings.value == "cached"
    assert widget.loaded_model.name == "medsam_vit_b" and float(widget.loaded_model.sam.pixel_std.max()) == 255
