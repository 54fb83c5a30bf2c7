"""OME-Zarr: multiscale images read at full resolution, labels written next to the image, and through the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr.format import FormatV04
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Reader
from ome_zarr.writer import write_image

from napari_samtune.cli import main
from napari_samtune.core.image import ImageError
from napari_samtune.core.io import OutputError
from napari_samtune.core.models import save_model
from napari_samtune.core.omezarr import (
    is_ome_zarr,
    read_ome_zarr,
    read_ome_zarr_labels,
    write_ome_zarr_labels,
)

from .conftest import TINY, make_model
from .test_cli import PROMPTS_CSV, STACK


def _write(path, data, axes: str, version: str = "0.5", scale_factors=(2, 4)):
    root = zarr.open_group(str(path), mode="w", zarr_format=2 if version == "0.4" else 3)
    spatial = [a for a in axes if a in "zyx"]
    factors = [{a: (f if a in "yx" else 1) for a in spatial} for f in scale_factors]
    write_image(data, root, axes=axes, scale_factors=factors, fmt=FormatV04() if version == "0.4" else None)
    return path


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_multiscale_round_trip_full_resolution_in_labels_at_every_level(tmp_path, version):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, (1, 2, 3, 64, 80), dtype=np.uint8)  # t c z y x
    path = _write(tmp_path / "cells.ome.zarr", data, "tczyx", version)
    assert is_ome_zarr(path) and not is_ome_zarr(tmp_path)

    image = read_ome_zarr(path)
    assert image.axes == ("c", "z", "y", "x") and image.channel_axis == 0
    np.testing.assert_array_equal(image.data, data[0])  # the full-resolution level, time point dropped
    assert [s[-2:] for s in image.level_shapes] == [(64, 80), (32, 40), (16, 20)]

    labels = np.zeros((3, 64, 80), np.uint32)
    labels[1, 10:30, 20:50] = 5
    target = write_ome_zarr_labels(path, labels)
    assert target == path / "labels" / "samtune"
    levels = read_ome_zarr_labels(path)
    assert [level.shape for level in levels] == [(1, 1, 3, 64, 80), (1, 1, 3, 32, 40), (1, 1, 3, 16, 20)]
    np.testing.assert_array_equal(levels[0][0, 0], labels)
    assert set(np.unique(levels[1])) == {0, 5}  # nearest neighbour: no invented ids

    # ome-zarr itself sees a label image of this image, with the image's coordinate transformations
    nodes = list(Reader(parse_url(str(target)))())
    assert any(isinstance(spec, Label) for node in nodes for spec in node.specs)
    label_node = next(n for n in nodes if n.data)
    image_node = next(n for n in Reader(parse_url(str(path)))() if n.data)
    assert label_node.metadata["coordinateTransformations"] == image_node.metadata["coordinateTransformations"]


def test_labels_are_never_replaced_without_overwrite_and_must_fit(tmp_path):
    path = _write(tmp_path / "img.ome.zarr", np.zeros((40, 50), np.uint8), "yx")
    write_ome_zarr_labels(path, np.ones((40, 50), np.uint8))
    with pytest.raises(OutputError, match=r"already exist.*--overwrite"):
        write_ome_zarr_labels(path, np.ones((40, 50), np.uint8))
    write_ome_zarr_labels(path, np.full((40, 50), 2, np.uint8), overwrite=True)
    assert read_ome_zarr_labels(path)[0].max() == 2
    with pytest.raises(ImageError, match=r"\(40, 50\)"):
        write_ome_zarr_labels(path, np.ones((4, 5), np.uint8), "other")
    assert not (path / "labels" / "other").exists()


def test_time_series_and_missing_or_foreign_stores_are_named(tmp_path):
    with pytest.raises(ImageError, match="does not exist"):
        read_ome_zarr(tmp_path / "nowhere.ome.zarr")
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w").create_array("x", shape=(4,), dtype="u1")
    with pytest.raises(ImageError, match="no OME-Zarr multiscale image"):
        read_ome_zarr(tmp_path / "plain.zarr")
    path = _write(tmp_path / "movie.ome.zarr", np.zeros((3, 32, 32), np.uint8), "tyx")
    with pytest.raises(ImageError, match="time series of 3 time points"):
        read_ome_zarr(path)


@pytest.fixture
def model_args(tmp_path) -> list[str]:
    checkpoint = tmp_path / "tiny.pt"
    save_model(make_model().sam, TINY, checkpoint)
    return ["--model", "custom", "--checkpoint", str(checkpoint), "--device", "cpu"]


def test_cli_segment_writes_labels_into_the_ome_zarr_image(tmp_path, model_args, capsys):
    (tmp_path / "prompts.csv").write_text(PROMPTS_CSV)
    path = _write(tmp_path / "stack.ome.zarr", STACK, "zyx")
    tifffile.imwrite(tmp_path / "stack.tif", STACK)
    common = ["--prompts", str(tmp_path / "prompts.csv"), "--cache-dir", str(tmp_path / "cache"), *model_args]
    assert main(["segment", str(path), *common]) == 0
    assert "labels/samtune" in capsys.readouterr().out
    assert main(["segment", str(tmp_path / "stack.tif"), "--out", str(tmp_path / "labels.tif"), *common]) == 0
    np.testing.assert_array_equal(read_ome_zarr_labels(path)[0], tifffile.imread(tmp_path / "labels.tif"))

    assert main(["segment", str(path), *common]) == 2  # the labels exist now
    assert "already exist" in capsys.readouterr().err
    assert main(["segment", str(tmp_path / "stack.tif"), *common]) == 2
    assert "give --out" in capsys.readouterr().err


def test_cli_predict_segments_the_full_resolution_level(tmp_path, model_args):
    rng = np.random.default_rng(1)
    image = (rng.random((3, 64, 64)) * 255).astype(np.uint8)  # c y x
    path = _write(tmp_path / "cells.ome.zarr", image, "cyx")
    tifffile.imwrite(tmp_path / "cells.tif", image)
    common = ["--points-per-side", "4", "--min-score", "0", "--min-stability", "0", *model_args]
    assert main(["predict", str(path), "--labels-name", "cells", *common]) == 0
    out = tmp_path / "cells_labels.tif"
    assert main(["predict", str(tmp_path / "cells.tif"), "--out", str(out), "--channel-axis", "0", *common]) == 0
    levels = read_ome_zarr_labels(path, "cells")
    assert levels[0].shape == (1, 64, 64) and len(levels) == 3
    np.testing.assert_array_equal(levels[0][0], tifffile.imread(out))
