"""``samtune predict`` on a zarr image runs block-wise on a local dask cluster; ``samtune finetune --nproc N``
re-launches itself through torchrun."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from napari_samtune.cli import main
from napari_samtune.core import batch
from napari_samtune.core.training import distributed

from .test_batch import SETTINGS, _disc_image


def test_predict_on_a_zarr_with_block_writes_the_block_wise_labels_on_a_local_cluster(tmp_path, capsys):
    pytest.importorskip("distributed")
    image, centres = _disc_image()
    zarr.create_array(tmp_path / "image.zarr", data=image, chunks=(128, 128))
    out = tmp_path / "labels.zarr"
    args = ["predict", str(tmp_path / "image.zarr"), "--block", "210", "--out", str(out), "--device", "cpu"]
    args += ["--workers", "2", "--threads-per-worker", "1", "--points-per-side", "8", "--min-score", "0"]
    assert main([*args, "--min-stability", "0"]) == 0
    assert "4 blocks" in capsys.readouterr().out
    here = tmp_path / "here.zarr"
    list(batch.segment_large_image(str(tmp_path / "image.zarr"), here, batch.ModelSpec(), block=210, settings=SETTINGS))
    labels = np.asarray(zarr.open_group(out)["labels"])
    assert np.array_equal(labels, np.asarray(zarr.open_group(here)["labels"])) and all(labels[c] for c in centres)
    assert main(["predict", str(tmp_path / "image.zarr"), "--block", "210", "--out", str(tmp_path / "x.tif")]) == 2


def test_finetune_with_nproc_relaunches_itself_through_torchrun(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(distributed, "relaunch_with_torchrun", lambda n, argv: calls.append((n, argv)) or 0)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    argv = ["finetune", str(tmp_path / "images"), str(tmp_path / "masks"), "--output", str(tmp_path / "a.samtune")]
    assert main([*argv, "--nproc", "2"]) == 0
    assert calls == [(2, [*argv, "--nproc", "2"])]
