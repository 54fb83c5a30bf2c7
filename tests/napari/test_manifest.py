"""The npe2 manifest: it validates, and every widget and sample it lists opens in a viewer."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import import_module, resources
from pathlib import Path

import numpy as np
import pytest
from napari.layers import Image, Labels
from npe2 import PluginManifest

MANIFEST = PluginManifest.from_file(str(resources.files("napari_samtune") / "napari.yaml"))
WIDGETS = {w.display_name: w.command for w in MANIFEST.contributions.widgets}


def command_target(command_id: str):
    """The Python object a manifest command points at."""
    command = next(c for c in MANIFEST.contributions.commands if c.id == command_id)
    module, name = command.python_name.split(":")
    return getattr(import_module(module), name)


def test_manifest_imports_resolve():
    assert MANIFEST.name == "napari-samtune"
    MANIFEST.validate_imports()


@pytest.mark.parametrize("name", WIDGETS)
def test_every_widget_opens(make_napari_viewer, name):
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget("napari-samtune", name)
    assert isinstance(widget, command_target(WIDGETS[name]))
    assert dock.name.startswith(name)


def test_every_sample_loads_an_image_and_its_labels(make_napari_viewer):
    viewer = make_napari_viewer()  # one viewer for all samples: a viewer costs seconds
    for sample in MANIFEST.contributions.sample_data:
        viewer.layers.clear()
        viewer.open_sample("napari-samtune", sample.key)
        image, labels = viewer.layers
        assert isinstance(image, Image) and isinstance(labels, Labels), sample.key
        spatial = image.data.shape[:-1] if image.rgb else image.data.shape
        assert labels.data.shape == spatial, sample.key
        assert image.data.dtype == np.uint8 and labels.data.max() >= 1, sample.key


def test_samples_are_fixed():
    from napari_samtune import _sample_data

    first, again = _sample_data.nuclei(), _sample_data.nuclei()
    assert np.array_equal(first[0][0], again[0][0]) and np.array_equal(first[1][0], again[1][0])


def test_widgets_are_in_the_layers_menu(make_napari_viewer):
    from napari._app_model import get_app_model

    make_napari_viewer()
    app = get_app_model()
    segment = {item.command.id for item in app.menus.get_menu("napari/layers/segment") if hasattr(item, "command")}
    visualize = {item.command.id for item in app.menus.get_menu("napari/layers/visualize") if hasattr(item, "command")}
    assert {"napari-samtune.prompt_widget", "napari-samtune.finetune_widget"} <= segment
    assert "napari-samtune.uncertainty_widget" in visualize


def test_opening_a_widget_after_the_canvas_exists_does_not_crash_napari():
    """As when a user opens a widget from the menu: napari's OpenGL canvas exists before the plugin (and torch) is
    imported. With Mesa's OpenGL (Xvfb, remote desktops) importing triton then killed the process (segfault)."""
    code = (
        "import napari; viewer = napari.Viewer(); "
        "viewer.window.add_plugin_dock_widget('napari-samtune', 'Segment with prompts'); print('opened')"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env)
    assert result.returncode == 0 and "opened" in result.stdout, result.stderr[-3000:]


def test_hub_metadata_manifest_and_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    assert MANIFEST.visibility == "public"
    assert {"Segmentation", "Annotation"} <= {str(c.value) for c in MANIFEST.categories}
    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    assert "Framework :: napari" in project["classifiers"]
    assert {"Homepage", "Documentation"} <= set(project["urls"])
    assert project["entry-points"]["napari.manifest"]["napari-samtune"] == "napari_samtune:napari.yaml"
