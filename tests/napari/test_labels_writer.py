"""The labels writer through napari's plugin manager: TIFF files and labels inside an OME-Zarr image."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_samtune.core.io import OutputError
from napari_samtune.core.omezarr import read_ome_zarr_labels
from napari_samtune.services.labels_writer import write_labels_layer
from tests.core.test_omezarr import _write

PLUGIN = "napari-samtune"


def _labels() -> np.ndarray:
    labels = np.zeros((64, 80), np.int32)
    labels[10:30, 20:50] = 3
    labels[40:60, 5:15] = 70000  # needs 32 bits
    return labels


def test_labels_layer_saved_as_tiff_through_the_plugin(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    layer = viewer.add_labels(_labels(), name="cells")
    written = viewer.layers.save(str(tmp_path / "cells.tif"), selected=True, plugin=PLUGIN)
    assert written == [str(tmp_path / "cells.tif")]
    np.testing.assert_array_equal(tifffile.imread(written[0]), layer.data)
    assert [p.name for p in tmp_path.iterdir()] == ["cells.tif"]  # no temporary file left behind

    layer.data[0, 0] = 1
    viewer.layers.save(str(tmp_path / "cells.tif"), selected=True, plugin=PLUGIN)  # napari asked about replacing
    assert tifffile.imread(tmp_path / "cells.tif")[0, 0] == 1


def test_labels_layer_saved_into_an_ome_zarr_image_at_every_level(make_napari_viewer, tmp_path):
    rng = np.random.default_rng(0)
    path = _write(tmp_path / "cells.ome.zarr", rng.integers(0, 255, (64, 80), dtype=np.uint8), "yx")
    viewer = make_napari_viewer()
    viewer.add_labels(_labels(), name="my cells")
    written = viewer.layers.save(str(path), selected=True, plugin=PLUGIN)
    assert written == [str(path / "labels" / "my_cells")]
    levels = read_ome_zarr_labels(path, "my_cells")
    assert [level.shape for level in levels] == [(64, 80), (32, 40), (16, 20)]
    np.testing.assert_array_equal(levels[0], _labels())


def test_a_zarr_that_is_not_an_image_is_refused(tmp_path):
    with pytest.raises(OutputError, match="not an OME-Zarr image"):
        write_labels_layer(str(tmp_path / "new.zarr"), _labels(), {"name": "cells"})
    assert not (tmp_path / "new.zarr").exists()
