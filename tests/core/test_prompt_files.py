"""Prompt files: CSV and JSON give the same prompts, grouped per object and plane; bad rows are named."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_samtune.core.predictor import PromptError
from napari_samtune.core.prompt_files import check_fits, label_ids, parse_records, read_prompts

CSV = """object,kind,row,col,row1,col1,label,plane,note
cell a,point,10,20,,,1,0,first click
cell a,point,15,25,,,0,0,
cell b,box,1,2,30,40,,0,

cell a,point,5,6,,,positive,1,
"""
RECORDS = [
    {"object": "cell a", "kind": "point", "row": 10, "col": 20, "label": 1},
    {"object": "cell a", "kind": "point", "row": 15, "col": 25, "label": 0, "plane": 0},
    {"object": "cell b", "kind": "box", "row": 1, "col": 2, "row1": 30, "col1": 40},
    {"object": "cell a", "kind": "point", "row": 5, "col": 6, "label": "positive", "plane": 1},
]


def test_csv_and_json_give_one_prompt_per_object_and_plane(tmp_path):
    (tmp_path / "p.csv").write_text(CSV)
    (tmp_path / "p.json").write_text(json.dumps(RECORDS))
    for name in ("p.csv", "p.json"):
        prompts = read_prompts(tmp_path / name)
        assert [(p.name, p.plane) for p in prompts] == [("cell a", 0), ("cell b", 0), ("cell a", 1)]
        first, box, other_plane = (p.prompt for p in prompts)
        np.testing.assert_array_equal(first.points, [[10, 20], [15, 25]])
        np.testing.assert_array_equal(first.labels, [1, 0])
        assert first.box is None and box.points is None
        np.testing.assert_array_equal(box.box, [1, 2, 30, 40])
        np.testing.assert_array_equal(other_plane.points, [[5, 6]])
    assert prompts[0].origin == "p.json records 1, 2"
    assert read_prompts(tmp_path / "p.csv")[0].origin == "p.csv lines 2, 3"  # the blank line is skipped


def test_label_ids_keep_integer_names_and_number_other_names():
    def named(*names: str) -> list:
        return parse_records(
            [(i, {"object": n, "kind": "point", "row": 1, "col": 1, "label": 1}) for i, n in enumerate(names)]
        )

    assert label_ids(named("12", "3", "12")) == {"12": 12, "3": 3}
    assert label_ids(named("b", "a", "b")) == {"b": 1, "a": 2}
    assert label_ids(named("0", "1")) == {"0": 1, "1": 2}  # 0 is the background


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"kind": "circle"}, "record 1: 'kind' must be 'point' or 'box', got 'circle'"),
        ({"label": 2}, r"record 1: point 'label' must be 1 \(positive\) or 0 \(negative\), got 2"),
        ({"label": 0}, "records? 1: object 'a' on plane 0 has only negative points"),
        ({"col": "NaN"}, "record 1: 'col' is 'NaN', not a finite number"),
        ({"object": " "}, "record 1: 'object' is empty"),
        ({"plane": 1.5}, r"record 1: 'plane' must be a whole number ≥ 0, got 1.5"),
        ({"kind": "box", "row1": 0, "col1": 9, "label": ""}, r"must not be above or left of \(row, col\)"),
        ({"kind": "box", "row1": 9}, "record 1: 'col1' is missing"),
    ],
)
def test_bad_records_are_named(record, message):
    base = {"object": "a", "kind": "point", "row": 3, "col": 4, "label": 1}
    with pytest.raises(PromptError, match=message):
        parse_records([(1, {**base, **record})], "p.json", "record")


def test_a_second_box_for_an_object_is_refused():
    box = {"object": "a", "kind": "box", "row": 1, "col": 1, "row1": 5, "col1": 5}
    with pytest.raises(PromptError, match="record 2: object 'a' already has a box on plane 0"):
        parse_records([(1, box), (2, box)])


def test_files_that_cannot_be_prompt_files(tmp_path):
    (tmp_path / "p.txt").write_text(CSV)
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "dict.json").write_text('{"object": 1}')
    (tmp_path / "empty.csv").write_text("object,kind,row,col,label\n")
    for name, message in [
        ("missing.csv", "prompt file .*missing.csv does not exist"),
        ("p.txt", "must end in .csv or .json, not '.txt'"),
        ("bad.json", "bad.json is not valid JSON"),
        ("dict.json", "dict.json must hold a JSON list of records"),
        ("empty.csv", "empty.csv holds no prompts"),
    ]:
        with pytest.raises(PromptError, match=message):
            read_prompts(tmp_path / name)


def test_check_fits_names_the_object_outside_the_image():
    prompts = parse_records([(4, {"object": "a", "kind": "point", "row": 3, "col": 40, "label": 1})], "p.csv", "line")
    check_fits(prompts, n_planes=1, plane_shape=(50, 41))
    with pytest.raises(PromptError, match=r"p.csv line 4: object 'a' has point \(3.0, 40.0\) \(row, col\) outside"):
        check_fits(prompts, n_planes=1, plane_shape=(50, 40))
