"""Shared pieces of the benchmarks: where the data is, model loading, TARGET lines, simulated prompts."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from napari_samtune.core.mask_geometry import interior_point

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def data_folder(name: str) -> Path:
    folder = DATA / name
    if not folder.is_dir():
        raise SystemExit(f"benchmark data {folder} is missing: this benchmark needs ../shared/data (see its README)")
    return folder


def target(name: str, value: float, op: str, goal: float) -> str:
    ok = {">=": value >= goal, "<=": value <= goal, ">": value > goal, "<": value < goal}[op]
    return f"TARGET {name}: {value:.4g} (goal {op} {goal}) {'PASS' if ok else 'MISS'}"


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images of each set (quick)")


def set_threads(n: int) -> None:
    torch.set_num_threads(n)


def click_row_col(mask: np.ndarray) -> np.ndarray:
    """One positive click at the object's interior point, as (row, col)."""
    x, y = interior_point(mask)
    return np.array([[y, x]])


def exact_box(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    return np.array([rows.min(), cols.min(), rows.max(), cols.max()], dtype=float)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
