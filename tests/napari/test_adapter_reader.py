"""Dropping a .samtune adapter on the viewer: no layer, the adapter becomes the prompt widget's model."""

from __future__ import annotations

import pytest
import torch
from npe2 import PluginManager

from napari_samtune._qt.adapter_reader import get_adapter_reader
from napari_samtune._qt.model_choice import ADAPTER_FILE
from napari_samtune._qt.prompt_widget import PromptWidget
from napari_samtune.core.models import load_model
from napari_samtune.core.training.adapters import Adapter, save_adapter
from napari_samtune.services.models import ADAPTER


@pytest.fixture
def adapter_file(tmp_path):
    """An adapter of the bundled model whose decoder is the base's, slightly changed (a real, loadable file)."""
    base = load_model("samtune_small", device="cpu")
    decoder = {k: v + 0.01 if v.is_floating_point() else v for k, v in base.sam.mask_decoder.state_dict().items()}
    adapter = Adapter(
        base_name=base.name,
        base_sha256=base.weights_sha256,
        architecture=base.architecture.to_dict(),
        method="interactive",
        metrics={"best_validation": 0.812},
        modules={"mask_decoder": decoder},
    )
    return save_adapter(adapter, tmp_path / "nuclei.samtune"), decoder


def test_npe2_offers_the_reader_for_samtune_files_only(adapter_file, tmp_path):
    path, _ = adapter_file
    manager = PluginManager.instance()
    manager.discover()
    readers = [r.plugin_name for r in manager.iter_compatible_readers([str(path)])]
    assert "napari-samtune" in readers
    (tmp_path / "image.tif").write_bytes(b"")
    assert get_adapter_reader(str(tmp_path / "image.tif")) is None
    assert get_adapter_reader(str(tmp_path / "missing.samtune")) is None


def test_dropping_an_adapter_makes_it_the_prompt_widgets_model(make_napari_viewer, adapter_file):
    path, decoder = adapter_file
    viewer = make_napari_viewer()
    viewer.open_sample("napari-samtune", "nuclei")
    viewer.window.add_plugin_dock_widget("napari-samtune", "Segment with prompts")  # adds its prompt layers
    layers_before = [layer.name for layer in viewer.layers]
    viewer.window._qt_viewer._qt_open([str(path)], stack=False)  # what a drop does: reader picked by file name
    assert [layer.name for layer in viewer.layers] == layers_before  # no layer for an adapter
    widgets = [w for w in viewer.window.dock_widgets.values() if isinstance(w, PromptWidget)]
    assert len(widgets) == 1
    widget = widgets[0]
    assert widget.model.value == ADAPTER_FILE and widget._model_request() == (ADAPTER, None, str(path))

    widget.encode.native.click()  # loads the bundled base model with the adapter applied
    assert widget.embeddings.value == "cached"
    assert torch.equal(
        widget.loaded_model.sam.mask_decoder.state_dict()["iou_token.weight"], decoder["iou_token.weight"]
    )

    viewer.window._qt_viewer._qt_open([str(path)], stack=False)  # a second drop reuses the docked widget
    assert sum(isinstance(w, PromptWidget) for w in viewer.window.dock_widgets.values()) == 1


def test_a_damaged_adapter_is_refused_and_a_good_one_docks_the_widget(make_napari_viewer, adapter_file, tmp_path):
    path = tmp_path / "broken.samtune"
    path.write_bytes(b"not an adapter")
    viewer = make_napari_viewer()
    with pytest.raises(Exception, match="cannot read adapter file"):
        viewer.open(str(path), plugin="napari-samtune")
    assert not any(isinstance(w, PromptWidget) for w in viewer.window.dock_widgets.values())
    viewer.window._qt_viewer._qt_open([str(adapter_file[0])], stack=False)
    widgets = [w for w in viewer.window.dock_widgets.values() if isinstance(w, PromptWidget)]
    assert len(widgets) == 1 and widgets[0].adapter.value == adapter_file[0]
