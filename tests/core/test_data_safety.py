"""Never lose the user's data: outputs never replace inputs or existing files unasked, a failed final write keeps the
result elsewhere, the embedding cache survives concurrent writers, damaged chunks, unwritable folders and non-finite
values, adapter files are verified, and memory stays bounded for many objects."""

from __future__ import annotations

import errno
import os
import stat
import time

import numpy as np
import pytest
import tifffile
import torch

from napari_samtune.cli import finetune as cli  # the finetune command, whose fine_tune is replaced
from napari_samtune.cli import main
from napari_samtune.core import io
from napari_samtune.core.embeddings import EmbeddingStore
from napari_samtune.core.image import ImageError, as_volume
from napari_samtune.core.models import save_model
from napari_samtune.core.predictor import ObjectPrompt, Predictor
from napari_samtune.core.prompt_files import FilePrompt, paint_prompts
from napari_samtune.core.segmenter import Segmenter
from napari_samtune.core.training.adapters import load_adapter

from .conftest import TINY, make_model
from .test_cli import PROMPTS_CSV, STACK, write_disc_folders


@pytest.fixture
def setup(tmp_path) -> dict:
    checkpoint = tmp_path / "tiny.pt"
    save_model(make_model().sam, TINY, checkpoint)
    tifffile.imwrite(tmp_path / "stack.tif", STACK)
    (tmp_path / "prompts.csv").write_text(PROMPTS_CSV)
    model = ["--model", "custom", "--checkpoint", str(checkpoint), "--device", "cpu"]
    return {"tmp": tmp_path, "model": model, "image": tmp_path / "stack.tif", "prompts": tmp_path / "prompts.csv"}


def segment(setup: dict, out, *extra: str) -> int:
    args = ["segment", str(setup["image"]), "--prompts", str(setup["prompts"]), "--out", str(out)]
    return main([*args, *setup["model"], "--cache-dir", str(setup["tmp"] / "cache"), *extra])


# outputs


def test_segment_never_writes_over_its_input_image_even_with_overwrite(setup, capsys):
    before = setup["image"].read_bytes()
    for extra in ([], ["--overwrite"]):
        assert segment(setup, setup["image"], *extra) == 2
        assert "is the input file" in capsys.readouterr().err
    assert setup["image"].read_bytes() == before


def test_an_existing_output_is_replaced_only_with_overwrite(setup, capsys):
    out = setup["tmp"] / "labels.tif"
    out.write_bytes(b"earlier result")
    assert segment(setup, out) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err
    assert out.read_bytes() == b"earlier result"
    assert segment(setup, out, "--overwrite") == 0
    assert tifffile.imread(out).shape == STACK.shape


def test_an_output_without_suffix_is_refused_before_any_work(setup, capsys):
    assert segment(setup, setup["tmp"] / "labels") == 2
    assert "has no file type suffix" in capsys.readouterr().err


def test_predict_into_its_own_folder_never_replaces_the_images(setup, capsys):
    folder = setup["tmp"] / "images"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", STACK[0])
    before = (folder / "a.tif").read_bytes()
    assert main(["predict", str(folder), "--out", str(folder), "--overwrite", *setup["model"]]) == 2
    assert "is the input file" in capsys.readouterr().err
    assert (folder / "a.tif").read_bytes() == before


def test_written_files_get_the_users_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = io.atomic_write(tmp_path / "labels.tif", lambda handle: handle.write(b"x"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


@pytest.fixture
def folders(tmp_path) -> dict:
    images, masks = write_disc_folders(tmp_path)
    checkpoint = tmp_path / "tiny.pt"
    save_model(make_model().sam, TINY, checkpoint)
    model = ["--model", "custom", "--checkpoint", str(checkpoint), "--device", "cpu"]
    return {"args": ["finetune", str(images), str(masks), *model, "--steps", "2"], "tmp": tmp_path}


def test_finetune_checks_the_output_folder_before_training(folders, monkeypatch, capsys):
    monkeypatch.setattr(cli, "fine_tune", lambda *a, **k: pytest.fail("trained although the output is unwritable"))
    (folders["tmp"] / "a file").write_text("")
    assert main([*folders["args"], "--output", str(folders["tmp"] / "a file" / "cells.samtune")]) == 2
    err = capsys.readouterr().err
    assert "cannot write into" in err and "a file" in err and len(err.strip().splitlines()) == 1


def test_finetune_keeps_the_adapter_elsewhere_when_the_final_write_fails(folders, monkeypatch, capsys):
    target = folders["tmp"] / "out" / "cells.samtune"
    write = io.atomic_write

    def failing(path, *args):
        if path == target:
            raise PermissionError(errno.EACCES, "Permission denied")
        return write(path, *args)

    monkeypatch.setattr(io, "atomic_write", failing)
    assert main([*folders["args"], "--output", str(target)]) == 2
    err = capsys.readouterr().err
    assert f"could not write {target} (Permission denied); the result was kept at " in err
    kept = err.split("kept at ")[1].split(": move it")[0]
    assert load_adapter(kept).method == "interactive"


# memory for many objects


def test_many_objects_are_decoded_in_bounded_batches_with_the_same_masks(tiny_model, monkeypatch):
    from napari_samtune.core import predictor

    segmenter = Segmenter(tiny_model, cache_root=False)
    segmenter.set_image(STACK[0])
    rng = np.random.default_rng(1)
    prompts = [ObjectPrompt(points=rng.uniform(0, 59, (1, 2))) for _ in range(150)]
    alone = np.stack([segmenter.segment([p]).masks[0] for p in prompts[:5]])
    sizes = []
    decode = predictor.decode_prepared

    def counting(sam, prepared, coords, labels):
        sizes.append(len(coords))
        return decode(sam, prepared, coords, labels)

    monkeypatch.setattr(predictor, "decode_prepared", counting)
    masks = segmenter.segment(prompts).masks
    # each object is decoded once on its tile, and at most once more on the whole plane when it reaches a tile edge
    assert max(sizes) <= Predictor.max_objects_per_call and 150 <= sum(sizes) <= 300
    np.testing.assert_array_equal(masks[:5], alone)


def test_prompt_file_objects_are_painted_a_batch_at_a_time(tiny_model, monkeypatch):
    segmenter = Segmenter(tiny_model, cache_root=False)
    segmenter.set_image(STACK)
    prompts = [FilePrompt(str(i + 1), i % 2, ObjectPrompt(points=np.array([[i % 60, 2 * i % 70]]))) for i in range(25)]
    expected = np.zeros((2, 60, 70), np.uint32)
    for _ in paint_prompts(segmenter, prompts, expected, batch_size=1000):
        pass
    calls = []
    real = segmenter.segment
    monkeypatch.setattr(segmenter, "segment", lambda p, plane: calls.append(len(p)) or real(p, plane))
    labels = np.zeros_like(expected)
    assert list(paint_prompts(segmenter, prompts, labels, batch_size=4)) == [0, 1]
    assert max(calls) == 4
    np.testing.assert_array_equal(labels, expected)


# bad input: one line, exit code 2, the problem named


def test_unknown_or_missing_devices_are_named(setup, monkeypatch, capsys):
    setup["model"][-1] = "tpu9"
    assert segment(setup, setup["tmp"] / "a.tif") == 2
    assert "unknown device 'tpu9'" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    setup["model"][-1] = "cuda"
    assert segment(setup, setup["tmp"] / "a.tif") == 2
    err = capsys.readouterr().err
    assert "asks for a CUDA GPU but PyTorch sees none" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "is empty"), (b"\x89PNG junk", "not a valid .png file"), (None, "is a folder, not an image file")],
    ids=["empty", "junk", "folder"],
)
def test_unreadable_images_are_named(setup, capsys, content, message):
    image = setup["tmp"] / "bad.png"
    if content is None:
        image.mkdir()
    else:
        image.write_bytes(content)
    setup["image"] = image
    assert segment(setup, setup["tmp"] / "a.tif") == 2
    err = capsys.readouterr().err
    assert message in err and str(image) in err and len(err.strip().splitlines()) == 1


def test_a_corrupt_image_in_finetune_folders_is_named(folders, capsys):
    images = folders["tmp"] / "images"
    (images / "cell_3.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert main([*folders["args"], "--output", str(folders["tmp"] / "cells.samtune")]) == 2
    err = capsys.readouterr().err
    assert f"cannot read image {images / 'cell_3.png'}" in err and len(err.strip().splitlines()) == 1


def test_a_training_set_of_tiny_objects_is_refused_with_a_message(folders, capsys):
    import imageio.v3 as iio

    for path in (folders["tmp"] / "masks").iterdir():
        labels = np.zeros((64, 64), np.uint8)
        labels[30:32, 30:32] = 1
        iio.imwrite(path, labels)
    assert main([*folders["args"], "--output", str(folders["tmp"] / "cells.samtune")]) == 2
    assert "no object of at least 10 pixels" in capsys.readouterr().err


@pytest.mark.parametrize("budget", ["nan", "inf", "-1"])
def test_a_budget_that_is_not_a_finite_positive_number_is_refused(folders, budget, capsys):
    with pytest.raises(SystemExit) as stop:
        main([*folders["args"], "--output", str(folders["tmp"] / "c.samtune"), "--budget", budget])
    assert stop.value.code == 2 and "expected a finite number > 0" in capsys.readouterr().err


def test_a_budget_too_short_for_one_step_writes_nothing(folders, capsys):
    out = folders["tmp"] / "cells.samtune"
    assert main([*folders["args"], "--output", str(out), "--budget", "1e-9"]) == 2
    assert "no training step fitted in the budget" in capsys.readouterr().err
    assert not out.exists()


def test_predict_says_when_it_finds_no_object(setup, capsys):
    out = setup["tmp"] / "labels.tif"
    assert main(["predict", str(setup["image"]), "--out", str(out), "--min-score", "2", *setup["model"]]) == 0
    assert "warning: no object found in" in capsys.readouterr().err


def test_ctrl_c_while_starting_ends_with_a_line_not_a_traceback(monkeypatch, capsys):
    import sys

    from napari_samtune.__main__ import main as launch

    class Interrupting:
        def find_spec(self, name, *args):
            if name == "napari_samtune.cli":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "napari_samtune.cli")
    monkeypatch.setattr(sys, "meta_path", [Interrupting(), *sys.meta_path])
    assert launch(["models"]) == 130
    assert capsys.readouterr().err == "samtune: interrupted while starting (nothing was done)\n"


def test_api_shapes_are_checked_and_napari_corner_boxes_accepted(tiny_model):
    from napari_samtune.core.predictor import PromptError

    segmenter = Segmenter(tiny_model, cache_root=False)
    segmenter.set_image(STACK[0])
    with pytest.raises(PromptError, match=r"got shape \(2, 3\): for a point on a stack, pass its \(row, col\) and"):
        segmenter.segment_points([[0, 10, 20], [0, 30, 40]])
    with pytest.raises(PromptError, match="plane 1 does not exist: a 2D image has only plane 0"):
        segmenter.segment_points([[10, 20]], plane=1)
    corners = np.array([[[5, 10], [5, 40], [30, 40], [30, 10]], [[20, 5], [20, 25], [50, 25], [50, 5]]])
    boxes = np.array([[5, 10, 30, 40], [20, 5, 50, 25]])
    np.testing.assert_array_equal(segmenter.segment_boxes(corners).masks, segmenter.segment_boxes(boxes).masks)


def test_two_channel_images_suggest_a_channel_axis():
    with pytest.raises(ImageError, match=r"looks like a 2-channel image .*--channel-axis -1"):
        as_volume(np.zeros((64, 64, 2), np.uint8))


def test_encode_with_an_unusable_cache_folder_warns_on_one_line_and_succeeds(setup, capsys):
    blocker = setup["tmp"] / "not a folder"
    blocker.write_text("")
    assert main(["encode", str(setup["image"]), *setup["model"], "--cache-dir", str(blocker)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"samtune: warning: embedding cache folder {blocker} cannot be used")
    assert "--cache-dir" in err[0]


def test_a_corrupt_cached_official_checkpoint_is_called_corrupt_not_undownloadable(tmp_path, monkeypatch):
    import pooch

    from napari_samtune.core.models.registry import MODEL_SOURCES, ModelError, fetch_checkpoint

    source = MODEL_SOURCES["vit_b"]
    (tmp_path / source.filename).write_bytes(b"half a checkpoint")

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(pooch, "retrieve", offline)
    with pytest.raises(ModelError, match=r"the cached vit_b checkpoint .* is corrupt or incomplete"):
        fetch_checkpoint(source, tmp_path)


# cache size: least recently used stores go first, recent ones never; `samtune cache info|clear`


def test_the_cache_keeps_under_its_limit_by_removing_the_least_recently_used_stores(tiny_model, tmp_path):
    from napari_samtune.core.embedding_cache import RECENT_S, enforce_limit, list_stores

    paths = []
    for i, age in enumerate((3, 1, 2)):  # hours since last use
        store = EmbeddingStore(tiny_model, as_volume(STACK[0] + i), cache_root=tmp_path)
        store.plane(0)
        os.utime(store.path, (time.time() - age * 3600,) * 2)
        paths.append(store.path)
    sizes = {s.path: s.size_bytes for s in list_stores(tmp_path)}
    assert enforce_limit(tmp_path, limit=sum(sizes.values()) - sizes[paths[0]]) == [paths[0]]  # the oldest
    assert sorted(s.path for s in list_stores(tmp_path)) == sorted(paths[1:])
    os.utime(paths[2])  # used just now: spared even over the limit
    assert enforce_limit(tmp_path, limit=1) == [paths[1]]
    assert enforce_limit(tmp_path, limit=1, now=time.time() + RECENT_S + 1) == [paths[2]]


def test_cache_info_and_clear(setup, capsys):
    cache = setup["tmp"] / "cache"
    assert main(["encode", str(setup["image"]), *setup["model"], "--cache-dir", str(cache)]) == 0
    capsys.readouterr()
    assert main(["cache", "info", "--cache-dir", str(cache)]) == 0
    assert f"{cache}: 1 store(s)" in capsys.readouterr().out
    assert main(["cache", "clear", "--cache-dir", str(cache)]) == 0
    assert "removed 1 store(s)" in capsys.readouterr().out
    assert list(cache.iterdir()) == []


def test_sigterm_during_finetune_writes_nothing_and_keeps_the_previous_adapter(folders, monkeypatch, capsys):
    import signal

    from napari_samtune.core.training.fine_tune import fine_tune

    out = folders["tmp"] / "cells.samtune"
    out.write_bytes(b"previous adapter")

    def terminated(*args, **kwargs):
        run = fine_tune(*args, **kwargs)
        yield next(run)
        os.kill(os.getpid(), signal.SIGTERM)
        yield next(run)

    monkeypatch.setattr(cli, "fine_tune", terminated)
    assert main([*folders["args"], "--output", str(out), "--overwrite"]) == 130
    assert "interrupted (nothing was written)" in capsys.readouterr().err
    assert out.read_bytes() == b"previous adapter" and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".cells")] == []
