"""Image/label folder pairs: matching by file stem across suffixes, and the messages for folders that do not pair."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest

from napari_samtune.core.datasets import DatasetError, list_images, load_folder_pairs, load_pairs


def write(path, value: int, shape=(8, 9)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, np.full(shape, value, np.uint8))


def test_pairs_match_by_stem_across_suffixes_sorted_and_extra_labels_are_ignored(tmp_path):
    write(tmp_path / "images" / "b.png", 2)
    write(tmp_path / "images" / "a.tif", 1)
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    write(tmp_path / "masks" / "a.png", 11)
    write(tmp_path / "masks" / "b.tiff", 12)
    write(tmp_path / "masks" / "c.png", 13)  # no image: ignored
    pairs = load_folder_pairs(tmp_path / "images", tmp_path / "masks")
    assert [(p.name, int(p.image[0, 0]), int(p.labels[0, 0])) for p in pairs] == [("a", 1, 11), ("b", 2, 12)]
    assert [p.name for p in load_pairs(tmp_path)] == ["a", "b"]
    assert [p.name for p in load_folder_pairs(tmp_path / "images", tmp_path / "masks", limit=1)] == ["a"]


def test_folders_that_do_not_pair_raise_dataset_errors_naming_the_problem(tmp_path):
    with pytest.raises(DatasetError, match=r"image folder .*missing does not exist"):
        load_folder_pairs(tmp_path / "missing", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"image folder .*empty has no image files"):
        load_folder_pairs(tmp_path / "empty", tmp_path)
    write(tmp_path / "images" / "a.png", 1)
    write(tmp_path / "images" / "b.png", 1)
    write(tmp_path / "labels" / "mask_a.png", 1)
    with pytest.raises(DatasetError, match=r"no matching pairs: none of the 2 images .* \(e\.g\. a\.png ↔ a\.png\)"):
        load_folder_pairs(tmp_path / "images", tmp_path / "labels")
    write(tmp_path / "labels" / "a.png", 1)
    with pytest.raises(DatasetError, match=r"image b\.png has no label file with the same name in"):
        load_folder_pairs(tmp_path / "images", tmp_path / "labels")
    with pytest.raises(DatasetError, match=r"needs the sub-folders 'images/' and 'masks/'"):
        load_pairs(tmp_path)
    assert issubclass(DatasetError, FileNotFoundError)  # callers that caught FileNotFoundError still do
    assert [p.name for p in list_images(tmp_path / "images")] == ["a.png", "b.png"]
