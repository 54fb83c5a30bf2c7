"""The ``samtune`` command line, run in-process with a tiny random model saved to a checkpoint file."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_samtune.cli import main
from napari_samtune.core import metrics
from napari_samtune.core.models import load_model, save_model
from napari_samtune.core.predictor import ObjectPrompt
from napari_samtune.core.segmenter import Segmenter

from .conftest import TINY, make_model

STACK = (np.random.default_rng(0).random((2, 60, 70)) * 255).astype(np.uint8)
PROMPTS_CSV = """object,kind,row,col,row1,col1,label,plane
7,point,20,30,,,1,0
7,point,50,60,,,0,0
3,box,5,10,40,45,,0
7,point,30,35,,,1,1
"""


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    """A tiny model checkpoint, a 2-plane TIFF stack, a prompt CSV and an embedding cache folder."""
    checkpoint = tmp_path / "tiny.pt"
    save_model(make_model().sam, TINY, checkpoint)
    tifffile.imwrite(tmp_path / "stack.tif", STACK)
    (tmp_path / "prompts.csv").write_text(PROMPTS_CSV)
    return {
        "model": ["--model", "custom", "--checkpoint", str(checkpoint), "--device", "cpu"],
        "checkpoint": checkpoint,
        "image": tmp_path / "stack.tif",
        "prompts": tmp_path / "prompts.csv",
        "cache": tmp_path / "embeddings",
        "out": tmp_path / "labels.tif",
    }


def test_models_lists_the_names_load_model_accepts(capsys):
    assert main(["models"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == ["samtune_small", "vit_b", "vit_l", "vit_h", "custom"]


def test_encode_then_segment_gives_the_segmenter_masks_one_id_per_object(files, capsys):
    image, cache = str(files["image"]), ["--cache-dir", str(files["cache"])]
    assert main(["encode", image, *files["model"], *cache]) == 0
    assert "2 plane(s) ready (0 already cached)" in capsys.readouterr().out
    assert main(["encode", image, *files["model"], *cache]) == 0
    assert "2 plane(s) ready (2 already cached)" in capsys.readouterr().out

    args = ["segment", image, "--prompts", str(files["prompts"]), "--out", str(files["out"])]
    assert main([*args, *files["model"], *cache]) == 0
    assert "2 object(s) on 2 plane(s)" in capsys.readouterr().out
    labels = tifffile.imread(files["out"])
    assert labels.shape == STACK.shape and labels.dtype == np.uint16
    assert set(np.unique(labels)) == {0, 3, 7}  # the objects' own integer names are their ids

    segmenter = Segmenter(load_model("custom", checkpoint=files["checkpoint"], device="cpu"), cache_root=files["cache"])
    segmenter.set_image(STACK)
    plane0 = segmenter.segment(
        [
            ObjectPrompt(points=np.array([[20, 30], [50, 60]]), labels=np.array([1, 0])),
            ObjectPrompt(box=np.array([5, 10, 40, 45])),
        ],
        plane=0,
    ).masks
    plane1 = segmenter.segment([ObjectPrompt(points=np.array([[30, 35]]))], plane=1).masks
    expected = np.zeros_like(labels)
    expected[0][plane0[0]] = 7
    expected[0][plane0[1]] = 3  # later rows paint on top
    expected[1][plane1[0]] = 7
    np.testing.assert_array_equal(labels, expected)


def test_evaluate_prints_foreground_and_instance_scores(tmp_path, capsys):
    pred, truth = np.zeros((40, 40), np.uint16), np.zeros((40, 40), np.uint16)
    pred[0:10, 0:10] = 1  # 100 px
    truth[0:10, 5:15] = 1  # overlaps pred by 50 px: IoU 50/150, Dice 100/200
    pred[20:30, 20:30] = 2
    truth[20:30, 20:30] = 5  # identical object, another id
    tifffile.imwrite(tmp_path / "pred.tif", pred)
    tifffile.imwrite(tmp_path / "truth.tif", truth)
    files = [str(tmp_path / "pred.tif"), str(tmp_path / "truth.tif")]

    assert main(["evaluate", *files]) == 0
    out = capsys.readouterr().out
    assert "IoU               0.6000" in out  # foreground: 150 / 250
    assert "Dice              0.7500" in out
    assert f"boundary IoU      {metrics.boundary_iou(pred, truth):.4f}" in out

    assert main(["evaluate", *files, "--instances"]) == 0
    out = capsys.readouterr().out
    assert "objects: 2 predicted, 2 true, 1 matched at IoU ≥ 0.5" in out
    assert "F1                0.5000" in out
    assert "mean matched IoU  0.6667" in out  # (1 + 1/3) / 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"image": "missing.tif"}, "image file .*missing.tif does not exist"),
        ({"csv": "object,kind,row,col,label\n1,point,abc,4,1\n"}, r"prompts.csv line 2: 'row' is 'abc', not a number"),
        ({"csv": "object,kind,x,y,label\n1,point,3,4,1\n"}, r"prompts.csv has no column 'row', 'col'"),
        (
            {"csv": "object,kind,row,col,label\n1,point,3,400,1\n"},
            r"prompts.csv line 2: object '1' has point .* outside",
        ),
        ({"csv": "object,kind,row,col,label,plane\n1,point,3,4,1,5\n"}, r"on plane 5 but the image has 2 plane"),
        ({"model": ["--model", "vit_x"]}, r"unknown model 'vit_x'"),
        ({"model": ["--model", "custom", "--checkpoint", "nope.pt"]}, r"checkpoint file nope.pt does not exist"),
    ],
    ids=["missing-image", "bad-number", "missing-columns", "point-outside", "bad-plane", "bad-model", "bad-checkpoint"],
)
def test_bad_input_exits_2_with_a_one_line_message(files, capsys, change, message):
    if "csv" in change:
        files["prompts"].write_text(change["csv"])
    image = change.get("image", str(files["image"]))
    model = change.get("model", files["model"])
    code = main(["segment", image, "--prompts", str(files["prompts"]), "--out", str(files["out"]), *model])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("samtune segment: error: ") and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err
    assert not files["out"].exists()


def test_evaluate_refuses_label_images_of_different_shapes(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((10, 10), np.uint8))
    tifffile.imwrite(tmp_path / "b.tif", np.zeros((10, 12), np.uint8))
    assert main(["evaluate", str(tmp_path / "a.tif"), str(tmp_path / "b.tif")]) == 2
    assert "prediction has shape (10, 10) but target has (10, 12)" in capsys.readouterr().err
