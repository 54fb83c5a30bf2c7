"""The ``samtune`` command line, run in-process with tiny random models saved to checkpoint files."""

from __future__ import annotations

import re
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import torch

from napari_samtune.cli import finetune as cli  # the finetune command, whose fine_tune is replaced
from napari_samtune.cli import main
from napari_samtune.core import metrics
from napari_samtune.core.automatic import InstanceSettings, segment_automatic, segment_instances
from napari_samtune.core.datasets import load_folder_pairs
from napari_samtune.core.jobs import drive
from napari_samtune.core.models import load_model, save_model
from napari_samtune.core.models.registry import available_models
from napari_samtune.core.predictor import ObjectPrompt
from napari_samtune.core.segmenter import Segmenter
from napari_samtune.core.training.adapters import apply_adapter, load_adapter
from napari_samtune.core.training.data import prepare_training_data
from napari_samtune.core.training.fine_tune import fine_tune
from napari_samtune.core.training.loop import TrainConfig

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
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [*available_models(), "custom"]
    line = next(line for line in lines if line.startswith("vit_b_lm"))
    assert "light microscopy" in line  # one line on what each is for
    assert "bundled" in next(line for line in lines if line.startswith("samtune_small_v1"))
    assert "medsam_vit_b" in lines[-2] and "needs --checkpoint" in lines[-2]


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


# fine-tune and predict: small synthetic folders of bright discs (two classes) and tiny model checkpoints


def write_disc_folders(root: Path, n: int = 6, size: int = 64) -> tuple[Path, Path]:
    """``root/images`` (uint8 PNG) and ``root/masks`` (PNG labels 1 and 2, one disc each, so both read as two
    instances or as two classes), paired by file name."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    (root / "images").mkdir()
    (root / "masks").mkdir()
    for i in range(n):
        labels = np.zeros((size, size), np.uint8)
        for value in (1, 2):
            r = rng.uniform(9, 14)
            cy, cx = rng.uniform(r, size - r, 2)
            labels[((yy - cy) ** 2 + (xx - cx) ** 2 < r * r) & (labels == 0)] = value
        image = (20 + 90 * labels + rng.normal(0, 8, labels.shape)).clip(0, 255).astype(np.uint8)
        iio.imwrite(root / "images" / f"cell_{i}.png", image)
        iio.imwrite(root / "masks" / f"cell_{i}.png", labels)
    return root / "images", root / "masks"


@pytest.fixture
def folders(tmp_path) -> dict:
    images, masks = write_disc_folders(tmp_path)
    checkpoints = {}
    for seed in (0, 1):
        checkpoints[seed] = tmp_path / f"tiny{seed}.pt"
        save_model(make_model(seed=seed).sam, TINY, checkpoints[seed])
    return {
        "images": images,
        "masks": masks,
        "model": lambda seed=0: ["--model", "custom", "--checkpoint", str(checkpoints[seed]), "--device", "cpu"],
        "checkpoint": checkpoints,
        "adapter": tmp_path / "cells.samtune",
    }


def finetune_args(folders: dict, *extra: str) -> list[str]:
    args = ["finetune", str(folders["images"]), str(folders["masks"]), "--output", str(folders["adapter"])]
    return [*args, *folders["model"](), *extra]


def test_finetune_writes_the_adapter_fine_tune_makes_and_it_fits_the_base_model(folders, capsys):
    assert main(finetune_args(folders, "--steps", "12", "--seed", "3")) == 0
    out = capsys.readouterr().out
    assert "6 image(s): 4 training and 2 validation plane(s), instances, classes [1]" in out
    first, last = map(float, re.search(r"loss (\S+) → (\S+)", out).groups())
    assert last < first  # the mean loss of the last quarter of steps is below that of the first

    adapter = load_adapter(folders["adapter"])
    assert adapter.method == "interactive" and adapter.task == "instances" and adapter.classes == [1]
    assert adapter.metrics["steps"] == 12 and adapter.train_config["seed"] == 3
    assert f"→ {adapter.metrics['best_validation']:.4f} after" in out

    # The command is a plain wrapper: fine_tune on the same data with the same settings gives the same weights.
    base = load_model("custom", checkpoint=folders["checkpoint"][0], device="cpu")
    pairs = load_folder_pairs(folders["images"], folders["masks"])
    data = prepare_training_data([p.image for p in pairs], [p.labels for p in pairs], seed=3)
    run = fine_tune(base, data, config=TrainConfig(steps=12, seed=3), cache_root=False)
    expected = drive(run).adapter
    assert expected.modules.keys() == adapter.modules.keys() == {"mask_decoder"}
    for key, value in expected.modules["mask_decoder"].items():
        torch.testing.assert_close(adapter.modules["mask_decoder"][key], value)

    adapted = apply_adapter(base, adapter)  # loads onto the base model it was made from
    for key, value in adapted.sam.mask_decoder.state_dict().items():
        assert torch.equal(value, adapter.modules["mask_decoder"][key]), key


def test_finetune_blo_with_classes_then_predict_writes_class_labels(folders, tmp_path, capsys):
    assert main(finetune_args(folders, "--method", "blo", "--classes", "1,2", "--steps", "4")) == 0
    assert "semantic, classes [1, 2]" in capsys.readouterr().out
    adapter = load_adapter(folders["adapter"])
    assert adapter.method == "blo" and adapter.task == "semantic" and adapter.classes == [1, 2]
    assert adapter.prompt_embeddings.shape[:2] == (2, 4)  # two classes of four learned tokens (BLO's default)

    out_dir = tmp_path / "predicted"
    args = ["predict", str(folders["images"]), "--out", str(out_dir), "--adapter", str(folders["adapter"])]
    assert main([*args, *folders["model"]()]) == 0
    assert "semantic labels of classes [1, 2] from the learned prompts" in capsys.readouterr().out
    written = sorted(out_dir.iterdir())
    assert [p.name for p in written] == [f"cell_{i}.tif" for i in range(6)]

    model = apply_adapter(load_model("custom", checkpoint=folders["checkpoint"][0], device="cpu"), adapter)
    segmenter = Segmenter(model, cache_root=False)
    for path in written:
        labels = tifffile.imread(path)
        assert labels.shape == (64, 64) and labels.dtype == np.uint16
        segmenter.set_image(iio.imread(folders["images"] / f"{path.stem}.png"))
        np.testing.assert_array_equal(labels, segment_automatic(model, segmenter.store.plane(0)).labels)


def test_predict_without_learned_prompts_writes_instance_labels(folders, tmp_path, capsys):
    # A random model's predicted IoU and stability say nothing: with thresholds at 0 its masks still pass, so the
    # comparison below is on a real object (seed 1 makes masks under half the image; seed 0's cover all of it).
    image = folders["images"] / "cell_0.png"
    thresholds = ["--min-score", "0", "--min-stability", "0", "--points-per-side", "8"]
    assert main(["predict", str(image), "--out", str(tmp_path / "cell_0.tif"), *thresholds, *folders["model"](1)]) == 0
    assert "instance labels" in capsys.readouterr().out
    labels = tifffile.imread(tmp_path / "cell_0.tif")
    assert labels.shape == (64, 64) and labels.dtype == np.uint16

    segmenter = Segmenter(load_model("custom", checkpoint=folders["checkpoint"][1], device="cpu"), cache_root=False)
    segmenter.set_image(iio.imread(image))
    settings = InstanceSettings(points_per_side=8, min_score=0, min_stability=0)
    expected = segment_instances(segmenter.predictor, segmenter.store.plane(0), settings)
    assert 0 < (expected > 0).mean() < 1  # an object, not the whole image
    np.testing.assert_array_equal(labels, expected)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing-images", r"image folder .*nowhere does not exist"),
        ("no-pairs", r"no matching pairs: none of the 6 images in .*images has a label file with the same name"),
        ("auto-without-budget", r"method 'auto' searches within a time budget: give --budget SECONDS"),
        ("sum-without-unlabeled", r"method 'sum' also learns from unlabeled images: give --unlabeled FOLDER"),
        ("absent-class", r"class value\(s\) \[7\] occur in no label image"),
    ],
)
def test_finetune_bad_input_exits_2_with_a_one_line_message(folders, tmp_path, capsys, case, message):
    images, masks, extra = folders["images"], folders["masks"], []
    if case == "missing-images":
        images = tmp_path / "nowhere"
    elif case == "no-pairs":
        masks = tmp_path / "other_masks"
        masks.mkdir()
        iio.imwrite(masks / "mask_0.png", np.ones((64, 64), np.uint8))
    elif case == "auto-without-budget":
        extra = ["--method", "auto"]
    elif case == "sum-without-unlabeled":
        extra = ["--method", "sum"]
    else:
        extra = ["--classes", "1,7"]
    args = ["finetune", str(images), str(masks), "--output", str(folders["adapter"]), *folders["model"](), *extra]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("samtune finetune: error: ") and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err
    assert not folders["adapter"].exists()


def test_predict_refuses_an_adapter_of_another_base_model(folders, tmp_path, capsys):
    assert main(finetune_args(folders, "--steps", "1")) == 0
    capsys.readouterr()
    out = tmp_path / "labels.tif"
    args = ["predict", str(folders["images"] / "cell_0.png"), "--out", str(out), "--adapter", str(folders["adapter"])]
    assert main([*args, *folders["model"](1)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "was fine-tuned from another base model" in err and "give the --model/--checkpoint" in err
    assert not out.exists()


def test_ctrl_c_during_finetune_keeps_the_previous_adapter_file(folders, monkeypatch, capsys):
    folders["adapter"].write_bytes(b"previous adapter")

    def interrupted(*args, **kwargs):
        run = fine_tune(*args, **kwargs)
        for _ in range(3):
            yield next(run)
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "fine_tune", interrupted)
    assert main(finetune_args(folders, "--steps", "20", "--overwrite")) == 130
    assert "samtune finetune: interrupted (nothing was written)" in capsys.readouterr().err
    assert folders["adapter"].read_bytes() == b"previous adapter"
    assert [p.name for p in folders["adapter"].parent.iterdir() if p.name.startswith(".cells")] == []
