"""Prompt files for batch segmentation: points and boxes per object, read from CSV or JSON.

CSV: one prompt per row, columns ``object,kind,row,col[,row1,col1],label[,plane]`` (extra columns are ignored)::

    object,kind,row,col,row1,col1,label,plane
    1,point,120,88,,,1,0
    1,point,131,95,,,0,0
    2,box,40,40,90,110,,0

JSON: a list of records with the same keys, e.g. ``[{"object": 1, "kind": "point", "row": 120, "col": 88,
"label": 1}]``. ``kind`` is ``point`` (``label`` 1 = positive, 0 = negative) or ``box`` (corners ``row, col`` and
``row1, col1``). ``plane`` (default 0) is the plane of a 3D stack. The rows of one object on one plane form one
prompt (its points plus at most one box); an object prompted on several planes keeps one label id on all of them.
Coordinates are (row, col) pixels, as everywhere in napari-samtune.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .predictor import ObjectPrompt, PromptError

if TYPE_CHECKING:
    from .segmenter import Segmenter

COLUMNS = "object,kind,row,col[,row1,col1],label[,plane]"
_LABELS = {"1": 1, "0": 0, "positive": 1, "negative": 0}


@dataclass(frozen=True)
class FilePrompt:
    """One object's prompt on one plane. ``name`` is the object's entry in the file; ``origin`` says where in the
    file it came from, for error messages (e.g. ``"prompts.csv lines 2, 3"``)."""

    name: str
    plane: int
    prompt: ObjectPrompt
    origin: str = ""


def read_prompts(path: str | Path) -> list[FilePrompt]:
    """Read a ``.csv`` or ``.json`` prompt file; raises ``PromptError`` naming the file, line and problem."""
    path = Path(path)
    if not path.is_file():
        raise PromptError(f"prompt file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: spreadsheets often write a byte-order mark
    except (OSError, UnicodeDecodeError) as error:
        raise PromptError(f"cannot read prompt file {path}: {error}") from error
    if suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        header = [name.strip().lower() for name in reader.fieldnames or []]
        missing = [c for c in ("object", "kind", "row", "col") if c not in header]
        if missing:
            raise PromptError(f"{path.name} has no column {', '.join(map(repr, missing))}; expected columns {COLUMNS}")
        reader.fieldnames = header
        records = [(reader.line_num, row) for row in reader if any(_text(v) for k, v in row.items() if k)]
        return parse_records(records, path.name, "line")
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise PromptError(f"{path.name} is not valid JSON: {error}") from error
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise PromptError(f"{path.name} must hold a JSON list of records with keys {COLUMNS}")
        return parse_records(list(enumerate(data, start=1)), path.name, "record")
    raise PromptError(f"prompt file {path} must end in .csv or .json, not {suffix or 'nothing'!r}")


def parse_records(
    records: Iterable[tuple[int, Mapping]], source: str = "prompts", unit: str = "record"
) -> list[FilePrompt]:
    """Group ``(line number, record)`` pairs into one ``FilePrompt`` per (object, plane), in order of first
    appearance. Error messages name ``source`` and the ``unit`` (e.g. ``"prompts.csv line 4: ..."``)."""
    groups: dict[tuple[str, int], dict] = {}
    for line, record in records:
        at = f"{source} {unit} {line}"
        name = _text(record.get("object"))
        if not name:
            raise PromptError(f"{at}: 'object' is empty; give every row the id or name of its object")
        kind = _text(record.get("kind")).lower()
        if kind not in ("point", "box"):
            raise PromptError(f"{at}: 'kind' must be 'point' or 'box', got {record.get('kind')!r}")
        plane = _number(record, "plane", at, default=0.0)
        if plane != int(plane) or plane < 0:
            raise PromptError(f"{at}: 'plane' must be a whole number ≥ 0, got {record.get('plane')!r}")
        group = groups.setdefault((name, int(plane)), {"points": [], "labels": [], "box": None, "lines": []})
        group["lines"].append(line)
        corner = (_number(record, "row", at), _number(record, "col", at))
        if kind == "point":
            label = _LABELS.get(_text(record.get("label")).lower())
            if label is None:
                raise PromptError(
                    f"{at}: point 'label' must be 1 (positive) or 0 (negative), got {record.get('label')!r}"
                )
            group["points"].append(corner)
            group["labels"].append(label)
        else:
            if _text(record.get("label")) not in ("", "1", "positive"):
                raise PromptError(f"{at}: a box is always positive; leave 'label' empty or 1")
            if group["box"] is not None:
                raise PromptError(
                    f"{at}: object {name!r} already has a box on plane {int(plane)}; give one box per object"
                )
            far = (_number(record, "row1", at), _number(record, "col1", at))
            if far[0] < corner[0] or far[1] < corner[1]:
                raise PromptError(
                    f"{at}: box corner (row1, col1) = {far} must not be above or left of (row, col) = {corner}"
                )
            group["box"] = np.array([*corner, *far])
    prompts = []
    for (name, plane), group in groups.items():
        lines = group["lines"]
        origin = f"{source} {unit}{'s' if len(lines) > 1 else ''} {', '.join(map(str, lines))}"
        if group["box"] is None and not any(group["labels"]):
            raise PromptError(
                f"{origin}: object {name!r} on plane {plane} has only negative points; add a positive one"
            )
        points = np.array(group["points"]).reshape(-1, 2) if group["points"] else None
        labels = np.array(group["labels"]) if group["points"] else None
        prompts.append(FilePrompt(name, plane, ObjectPrompt(points, labels, group["box"]), origin))
    if not prompts:
        raise PromptError(f"{source} holds no prompts")
    return prompts


def check_fits(prompts: list[FilePrompt], n_planes: int, plane_shape: tuple[int, int]) -> None:
    """Refuse prompts on planes the image does not have, or points outside the plane, naming the object."""
    h, w = plane_shape
    for p in prompts:
        if p.plane >= n_planes:
            raise PromptError(
                f"{p.origin}: object {p.name!r} is on plane {p.plane} but the image has {n_planes} plane(s)"
            )
        points = p.prompt.points if p.prompt.points is not None else np.zeros((0, 2))
        outside = (points < 0).any(1) | (points[:, 0] > h - 1) | (points[:, 1] > w - 1)
        if outside.any():
            raise PromptError(
                f"{p.origin}: object {p.name!r} has point {tuple(points[outside][0].tolist())} (row, col) outside the "
                f"image plane of shape {(h, w)}"
            )


def label_ids(prompts: list[FilePrompt]) -> dict[str, int]:
    """The label id of each object: its own name when every name is a positive integer, else 1, 2, … in order of
    first appearance."""
    names = list(dict.fromkeys(p.name for p in prompts))
    if all(n.isdigit() and int(n) > 0 for n in names):
        return {n: int(n) for n in names}
    return {n: i for i, n in enumerate(names, start=1)}


def paint_prompts(
    segmenter: Segmenter, prompts: list[FilePrompt], labels: np.ndarray, batch_size: int = 256
) -> Iterator[int]:
    """Segment every prompt and paint its object's id into ``labels`` ``(Z, H, W)``, plane by plane; yields each
    plane when done. Objects are segmented ``batch_size`` at a time, so memory stays bounded however many objects
    the file holds; later objects paint over earlier ones, as in ``masks_to_labels``."""
    ids = label_ids(prompts)
    for plane in sorted({p.plane for p in prompts}):
        on_plane = [p for p in prompts if p.plane == plane]
        for start in range(0, len(on_plane), batch_size):
            batch = on_plane[start : start + batch_size]
            masks = segmenter.segment([p.prompt for p in batch], plane).masks
            for p, mask in zip(batch, masks):
                labels[plane][mask] = ids[p.name]
        yield plane


def _text(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _number(record: Mapping, key: str, at: str, default: float | None = None) -> float:
    text = _text(record.get(key))
    if not text:
        if default is not None:
            return default
        raise PromptError(f"{at}: {key!r} is missing; expected columns {COLUMNS}")
    try:
        value = float(text)
    except ValueError:
        raise PromptError(f"{at}: {key!r} is {text!r}, not a number") from None
    if not math.isfinite(value):
        raise PromptError(f"{at}: {key!r} is {text!r}, not a finite number")
    return value
