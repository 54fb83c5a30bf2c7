"""The fine-tune widget: training hands the adapted model to the prompt widget, cancel and errors change nothing,
prompt-free results, and adapters that load back through the prompt widget's model picker."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from qtpy.QtCore import QTimer

from napari_samtune._qt.model_choice import ADAPTER_FILE
from napari_samtune.core.automatic import segment_automatic, segment_without_prompts
from napari_samtune.core.jobs import drive
from napari_samtune.core.models import load_model, save_model
from napari_samtune.core.predictor import ObjectPrompt
from napari_samtune.core.segmenter import Segmenter
from tests.core.conftest import TINY, make_model

from .conftest import open_prompt_widget

WIDGET = "Fine-tune on current layers"
PROMPT_WIDGET = "Segment with prompts"
PROMPT = [ObjectPrompt(points=np.array([[20.0, 20.0]]), labels=np.ones(1))]


def add_discs(viewer, size: int = 64, planes: int | None = None, name: str = "discs"):
    """A grey image of bright discs on a noisy background and its instance labels (a stack with ``planes``)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    images, labels = [], []
    for _ in range(planes or 1):
        lab = np.zeros((size, size), np.int32)
        for i, (r, c, radius) in enumerate([(20, 20, 10), (44, 40, 13)]):
            r, c = r + rng.integers(-3, 4), c + rng.integers(-3, 4)
            lab[(yy - r) ** 2 + (xx - c) ** 2 < radius**2] = i + 1
        images.append(np.clip(30 + 180 * (lab > 0) + rng.normal(0, 8, lab.shape), 0, 255).astype(np.uint8))
        labels.append(lab)
    image = np.stack(images) if planes else images[0]
    label = np.stack(labels) if planes else labels[0]
    return viewer.add_image(image, name=name), viewer.add_labels(label, name=f"{name} labels")


def open_finetune_widget(viewer, image, labels, steps: int = 3, method: str = "interactive"):
    _, widget = viewer.window.add_plugin_dock_widget("napari-samtune", WIDGET)
    widget.image.value, widget.labels_layer.value = image, labels
    widget.steps.value, widget.method.value = steps, method
    return widget


def encoded(model, image) -> Segmenter:
    segmenter = Segmenter(model, cache_root=False)
    segmenter.set_image(image, rgb=False)
    list(segmenter.encode())
    return segmenter


def run(job):
    """Iterate a job generator; its return value."""
    return drive(job)


def logits(model, image) -> np.ndarray:
    return encoded(model, image).segment(PROMPT, return_logits=True).logits


def test_fine_tune_makes_the_adapted_model_the_prompt_widgets(make_napari_viewer):
    viewer = make_napari_viewer()
    image, labels = add_discs(viewer)
    prompt = open_prompt_widget(viewer)
    before = prompt.loaded_model
    widget = open_finetune_widget(viewer, image, labels)
    widget.fine_tune.native.click()

    result = widget.result
    assert result is not None and not result.cancelled and result.training.steps == 3
    assert prompt.loaded_model is result.model and result.model is not before
    assert widget.save_adapter.enabled and "grid of clicks" in widget.prompt_free.tooltip  # no learned prompts
    assert not widget.export_bioimageio.enabled  # BioImage.IO packages are of prompt-free (BLO) models only
    widget.prompt_free.native.click()
    everything = segment_without_prompts(encoded(result.model, image.data))
    np.testing.assert_array_equal(viewer.layers["discs prompt-free"].data, run(everything))
    assert len(widget.plot.losses) == 3 and widget.plot.validations
    assert widget.status.value.startswith("done: validation")

    viewer.layers["prompts"].add([[20.0, 20.0]])
    prompt.segment.native.click()
    segmenter, prompts, _ = prompt.current_object()
    assert segmenter.model is result.model
    new = segmenter.segment(prompts, return_logits=True).logits
    assert not np.allclose(new, logits(before, image.data))  # the prompt widget now predicts differently
    np.testing.assert_allclose(new, logits(result.model, image.data), atol=1e-5)


def test_a_prompt_widget_opened_after_a_fine_tune_uses_the_adapted_model(make_napari_viewer):
    viewer = make_napari_viewer()
    image, labels = add_discs(viewer)
    widget = open_finetune_widget(viewer, image, labels, steps=2)
    widget.set_model(make_model())
    widget.fine_tune.native.click()
    assert widget.result is not None and not widget.result.cancelled

    _, prompt = viewer.window.add_plugin_dock_widget("napari-samtune", PROMPT_WIDGET)
    assert prompt.loaded_model is widget.result.model


def test_cancel_keeps_the_model_and_every_layer_while_the_gui_stays_responsive(make_napari_viewer, qtbot, monkeypatch):
    monkeypatch.delenv("SAMTUNE_SYNC_WORKERS")
    viewer = make_napari_viewer()
    image, labels = add_discs(viewer)
    prompt = open_prompt_widget(viewer)
    before = prompt.loaded_model
    weights = {k: v.clone() for k, v in before.sam.state_dict().items()}
    data = {layer.name: np.array(layer.data) for layer in viewer.layers}
    widget = open_finetune_widget(viewer, image, labels, steps=10_000)

    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start(10)
    widget.fine_tune.native.click()
    assert widget.fine_tune.text == "Cancel"
    qtbot.waitUntil(lambda: len(widget.plot.losses) >= 3, timeout=60_000)  # training runs in a worker thread…
    assert len(ticks) >= 10  # … while the event loop keeps running
    widget.fine_tune.native.click()
    qtbot.waitUntil(lambda: widget.fine_tune.text == "Fine-tune", timeout=30_000)
    timer.stop()

    assert widget.result is None and widget.status.value == "cancelled: nothing changed"
    assert prompt.loaded_model is before
    assert all(torch.equal(v, weights[k]) for k, v in before.sam.state_dict().items())
    assert [layer.name for layer in viewer.layers] == list(data)
    assert all(np.array_equal(layer.data, data[layer.name]) for layer in viewer.layers)


def test_errors_are_notifications_and_change_nothing(make_napari_viewer, errors):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-samtune", WIDGET)
    widget.fine_tune.native.click()
    assert "no labeled image to learn from" in errors[-1]

    image, labels = add_discs(viewer)
    prompt = open_prompt_widget(viewer)
    before = prompt.loaded_model
    widget.image.value = image
    widget.labels_layer.value = viewer.add_labels(np.zeros((10, 10), np.int32), name="small")
    widget.fine_tune.native.click()
    assert "'small' has shape (10, 10) but image 'discs' has (64, 64)" in errors[-1]

    widget.labels_layer.value = viewer.add_labels(np.zeros((64, 64), np.int32), name="empty")
    widget.fine_tune.native.click()
    assert "are all 0" in errors[-1] and widget.status.value == "failed: nothing changed"

    widget.labels_layer.value, widget.method.value = labels, "sum"
    widget.fine_tune.native.click()
    assert "needs unlabeled images" in errors[-1]

    widget.save_adapter.native.click()  # disabled: nothing trained
    assert widget.result is None and prompt.loaded_model is before and widget.fine_tune.text == "Fine-tune"


def test_blo_gives_a_prompt_free_result_and_its_adapter_loads_in_the_prompt_widget(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    image, labels = add_discs(viewer)
    checkpoint = tmp_path / "tiny.pt"
    save_model(make_model().sam, TINY, checkpoint)
    widget = open_finetune_widget(viewer, image, labels, method="blo")
    widget.set_model(load_model("custom", checkpoint=checkpoint, device="cpu"))
    widget.pair_buttons.add_pair.native.click()
    assert widget.pairs.value == "pairs: discs + discs labels"
    widget.fine_tune.native.click()
    assert widget.prompt_free.enabled and "learned prompts" in widget.prompt_free.tooltip
    widget.prompt_free.native.click()
    segmented = viewer.layers["discs prompt-free"]
    assert segmented.data.shape == (64, 64) and segmented.data.dtype == np.int32
    expected = segment_automatic(widget.result.model, encoded(widget.result.model, image.data).store.plane(0))
    np.testing.assert_array_equal(segmented.data, expected.labels)  # the classes of the learned prompts

    widget.adapter_file.value = tmp_path / "discs.pt"
    widget.save_adapter.native.click()
    assert (tmp_path / "discs.pt").is_file()

    _, prompt = viewer.window.add_plugin_dock_widget("napari-samtune", "Segment with prompts")
    prompt.model.value = ADAPTER_FILE
    prompt.checkpoint.value, prompt.adapter.value = checkpoint, tmp_path / "discs.pt"
    prompt.encode.native.click()
    loaded = prompt.loaded_model
    assert loaded is not None and torch.equal(loaded.prompt_embeddings, widget.result.model.prompt_embeddings)
    np.testing.assert_allclose(logits(loaded, image.data), logits(widget.result.model, image.data), atol=1e-5)


def test_blo_result_exports_a_bioimageio_package(make_napari_viewer, tmp_path, errors):
    bioimageio_core = pytest.importorskip("bioimageio.core", reason="BioImage.IO export needs the extra [bioimageio]")
    viewer = make_napari_viewer()
    image, labels = add_discs(viewer)
    widget = open_finetune_widget(viewer, image, labels, steps=2, method="blo")
    assert not widget.export_bioimageio.enabled
    widget.set_model(make_model())
    widget.fine_tune.native.click()
    assert widget.export_bioimageio.enabled

    widget.package_file.value = tmp_path / "out" / "discs.txt"
    widget.export_bioimageio.native.click()
    assert "choose a name ending in .zip" in errors[-1] and not (tmp_path / "out").exists()

    widget.package_file.value = tmp_path / "out" / "discs.zip"
    widget.export_bioimageio.native.click()
    assert (tmp_path / "out" / "discs.zip").is_file() and widget.export_bioimageio.enabled
    descr = bioimageio_core.load_model_description(tmp_path / "out" / "discs.zip")
    raw = np.asarray(image.data, np.float32)[None, None]  # the test image: the chosen 64 x 64 image
    sample = bioimageio_core.predict(model=descr, inputs={"raw": raw})
    classes = len(widget.result.model.classes)
    assert sample.members["probabilities"].data.shape == (1, 1 + classes, TINY.img_size, TINY.img_size)
