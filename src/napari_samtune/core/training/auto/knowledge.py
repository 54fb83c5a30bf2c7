"""Meta-knowledge: learning-curve records of configurations × tasks, the predictors fitted on them, and the small
file that ships them with the package (``napari_samtune/models/auto_meta.npz``, rebuilt by
``scripts/build_meta_knowledge.py``).

A *record* is one configuration trained on one task for its whole schedule: the validation curve at rungs
``0..RUNGS``, seconds per setup / step / validation, and the task's dataset meta-features. Records are kept one per
line in a JSONL file, so an interrupted build continues where it stopped.
"""

from __future__ import annotations

import datetime
import io
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from ...errors import SamtuneError
from ...io import atomic_write
from .features import DATASET_FEATURES, curve_examples, dataset_vector
from .predictors import COSTS, CostPredictor, PerformancePredictor, fit_costs, fit_performance
from .space import RUNGS, Configuration, encode, space_version

log = logging.getLogger(__name__)

META_FILE = "auto_meta.npz"


class MetaKnowledgeError(SamtuneError, ValueError):
    """A meta-knowledge file that cannot be used; the message says how to rebuild it."""


@dataclass
class MetaKnowledge:
    """Fitted predictors and where they come from. ``info``: space version, base model, the data sets and tasks
    (number of curves each) and each task's dataset meta-features, the methods seen, build date, excluded data
    sets."""

    performance: PerformancePredictor
    cost: CostPredictor
    info: dict = field(default_factory=dict)

    @property
    def methods(self) -> tuple[str, ...]:
        """Methods with curves in the meta-data (the search proposes no other)."""
        return tuple(self.info.get("methods", ()))


def cost_input(config: Configuration, data_vector: np.ndarray) -> np.ndarray:
    """Input of the cost predictor: configuration encoding and dataset meta-features."""
    return np.concatenate([encode(config), data_vector]).astype(np.float32)


def full_curve(record: dict) -> list[float] | None:
    """The record's curve at rungs ``0..RUNGS``: a diverged run scores 0 from the rung where it failed; None for a
    run that was cut short (unusable)."""
    curve = list(record["curve"])
    if len(curve) == RUNGS + 1:
        return curve
    if record.get("diverged") and curve:
        return curve + [0.0] * (RUNGS + 1 - len(curve))
    return None


def read_records(path: str | Path) -> list[dict]:
    """Records of a JSONL file (a half-written last line, from a killed build, is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("skipping an unreadable line of %s", path)
    return records


def fit_meta_knowledge(
    records: Iterable[dict],
    *,
    exclude: Sequence[str] = (),
    seed: int = 0,
    members: int = 5,
    epochs: int = 400,
) -> MetaKnowledge:
    """Fit the predictors on ``records`` of this search space, leaving out the data sets named in ``exclude``.

    The performance predictor learns from complete curves; the cost predictor from every record with its three
    costs, including runs cut for being too slow (their costs are what tells the search to avoid them)."""
    version = space_version()
    kept = [r for r in records if r.get("space_version") == version and r["dataset"] not in exclude]
    usable = [(r, curve) for r in kept if (curve := full_curve(r)) is not None]
    if len(usable) < 2:
        raise MetaKnowledgeError(
            f"only {len(usable)} usable learning curves (search space {version}, excluding {list(exclude)}): "
            "run scripts/build_meta_knowledge.py with more configurations or tasks"
        )
    inputs, targets, groups = [], [], []
    for i, (record, curve) in enumerate(usable):
        x, y = curve_examples(Configuration(record["config"]), dataset_vector(record["features"]), curve)
        inputs.append(x)
        targets.append(y)
        groups.append(np.full(len(y), i))
    cost_inputs = []
    seconds: dict[str, list[float]] = {name: [] for name in COSTS}
    for record in kept:
        if all(record.get(name) for name in COSTS):  # a run that diverged at once has no step time
            cost_inputs.append(cost_input(Configuration(record["config"]), dataset_vector(record["features"])))
            for name in COSTS:
                seconds[name].append(record[name])
    performance = fit_performance(
        np.concatenate(inputs),
        np.concatenate(targets),
        np.concatenate(groups),
        members=members,
        epochs=epochs,
        seed=seed,
    )
    cost = fit_costs(np.stack(cost_inputs), {k: np.asarray(v) for k, v in seconds.items()})
    datasets: dict[str, int] = {}
    tasks: dict[str, int] = {}
    for record, _ in usable:
        datasets[record["dataset"]] = datasets.get(record["dataset"], 0) + 1
        tasks[record["task"]] = tasks.get(record["task"], 0) + 1
    first = usable[0][0]
    info = {
        "space_version": version,
        "dataset_features": list(DATASET_FEATURES),
        "rungs": RUNGS,
        "curves": len(usable),
        "cost_records": len(cost_inputs),
        "datasets": datasets,
        "tasks": tasks,
        "task_features": {r["task"]: r["features"] for r, _ in usable},
        "methods": sorted({r["config"]["method"] for r, _ in usable}),
        "excluded": list(exclude),
        "model": first.get("model", ""),
        "model_sha256": first.get("model_sha256", ""),
        "device": first.get("device", ""),
        "built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    return MetaKnowledge(performance, cost, info)


def default_meta_path() -> Path:
    return Path(str(resources.files("napari_samtune") / "models" / META_FILE))


def save_meta_knowledge(meta: MetaKnowledge, path: str | Path) -> Path:
    """Write ``meta`` as a compressed ``.npz`` (float32 weights, ``info`` as JSON text), atomically."""
    arrays = {
        **{k: v.astype(np.float32) for k, v in meta.performance.to_arrays("perf_").items()},
        **{k: v.astype(np.float32) for k, v in meta.cost.to_arrays("cost_").items()},
        "info": np.array(json.dumps(meta.info)),
    }
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    path = atomic_write(path, lambda handle: handle.write(buffer.getvalue()))
    path.chmod(0o644)  # package data: readable by every user
    return path


def load_meta_knowledge(path: str | Path | None = None) -> MetaKnowledge:
    """The meta-knowledge at ``path`` (default: the file shipped with the package), checked against this search
    space."""
    path = Path(path) if path is not None else default_meta_path()
    rebuild = "rebuild it with `python scripts/build_meta_knowledge.py`"
    if not path.is_file():
        raise MetaKnowledgeError(f"meta-knowledge file {path} does not exist: reinstall napari-samtune or {rebuild}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        info = json.loads(str(arrays.pop("info")))
        meta = MetaKnowledge(
            PerformancePredictor.from_arrays(arrays, "perf_"), CostPredictor.from_arrays(arrays, "cost_"), info
        )
    except (OSError, ValueError, KeyError) as error:
        raise MetaKnowledgeError(f"cannot read meta-knowledge file {path} ({error}): {rebuild}") from error
    if info.get("space_version") != space_version() or info.get("dataset_features") != list(DATASET_FEATURES):
        raise MetaKnowledgeError(
            f"meta-knowledge file {path} was built for search space {info.get('space_version')} but this version of "
            f"napari-samtune has {space_version()}: {rebuild}"
        )
    return meta
