"""OME-Zarr images in, OME-Zarr labels out, through the ``ome-zarr`` package (no metadata parsed by hand).

An OME-Zarr image is a multiscale pyramid: it is segmented on its full-resolution level, and the labels are written
into the image's own ``labels/`` group (the NGFF labels convention), with the image's axes, levels and coordinate
transformations, so viewers overlay them on the image at every level.
"""

from __future__ import annotations

import logging
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .image import ImageError
from .io import OutputError

DEFAULT_LABELS_NAME = "samtune"


@dataclass
class OmeZarrImage:
    """The full-resolution level of an OME-Zarr image.

    ``data``: the level as a numpy array with the axes ``axes`` (e.g. ``("c", "z", "y", "x")``; a time axis of size
    1 is dropped, so ``axes`` may be shorter than the file's). ``level_shapes``: the shapes of all levels, finest
    first, with the file's axes.
    """

    path: Path
    data: np.ndarray
    axes: tuple[str, ...]
    level_shapes: list[tuple[int, ...]]

    @property
    def channel_axis(self) -> int | None:
        """The index of the channel axis in ``data`` (None when the image has none)."""
        return self.axes.index("c") if "c" in self.axes else None


def is_ome_zarr(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a Zarr store (a ``.zarr`` folder, e.g. ``image.ome.zarr``)."""
    path = Path(path)
    return path.suffix.lower() == ".zarr" and (path.is_dir() or not path.exists())


def read_ome_zarr(path: str | os.PathLike) -> OmeZarrImage:
    """Read the full-resolution level of the first multiscale image at ``path``.

    Raises ``ImageError`` naming the store for a missing store, one without a multiscale image, and a time series
    (more than one time point: segment one time point at a time).
    """
    path = Path(path)
    if not path.is_dir():
        raise ImageError(f"OME-Zarr image {path} does not exist (an OME-Zarr image is a folder ending in .zarr)")
    node = _image_node(path)
    axes = tuple(_axis_names(node.metadata.get("axes"), node.data[0].ndim))
    levels = [tuple(int(n) for n in level.shape) for level in node.data]
    data = np.asarray(node.data[0])
    if "t" in axes:
        if data.shape[axes.index("t")] != 1:
            raise ImageError(
                f"OME-Zarr image {path} is a time series of {data.shape[axes.index('t')]} time points: segment one "
                "time point at a time (e.g. save it as its own image)"
            )
        data = np.take(data, 0, axis=axes.index("t"))
        axes = tuple(a for a in axes if a != "t")
    return OmeZarrImage(path, data, axes, levels)


def write_ome_zarr_labels(
    path: str | os.PathLike, labels: np.ndarray, name: str = DEFAULT_LABELS_NAME, *, overwrite: bool = False
) -> Path:
    """Write ``labels`` (the image's spatial shape: ``(Z,) Y, X``) into the image's ``labels/<name>`` group.

    The label image gets the image's axes (time and channel axes of size 1), as many levels as the image (nearest
    neighbour downsampling) and the image's coordinate transformations. Raises ``OutputError`` when ``labels/<name>``
    exists and not ``overwrite``, ``ImageError`` when ``labels`` does not have the image's spatial shape. Returns the
    path of the label group.
    """
    import zarr
    from ome_zarr.io import parse_url
    from ome_zarr.writer import write_labels

    path = Path(path)
    target = labels_path(path, name, overwrite=overwrite)
    node = _image_node(path)
    axes = _axis_names(node.metadata.get("axes"), node.data[0].ndim)
    full = tuple(int(n) for n in node.data[0].shape)
    spatial = tuple(n for a, n in zip(axes, full) if a not in ("t", "c"))
    if labels.shape != spatial:
        raise ImageError(f"labels of shape {labels.shape} do not fit OME-Zarr image {path}, whose planes are {spatial}")
    shaped = labels.reshape(tuple(1 if a in ("t", "c") else n for a, n in zip(axes, full)))
    shaped = shaped.astype(np.uint16 if labels.max(initial=0) < 2**16 else np.uint32)
    # the image's own downsampling, level by level (relative to the full resolution, as ome-zarr expects)
    factors = [
        {a: (max(1, full[i] // level.shape[i]) if a in ("x", "y", "z") else 1) for i, a in enumerate(axes)}
        for level in node.data[1:]
    ]
    with _quiet():
        fmt = parse_url(str(path)).fmt
    if target.exists():
        shutil.rmtree(target)
    try:
        write_labels(
            shaped,
            zarr.open_group(str(path), mode="r+"),
            name=name,
            axes=list(axes),
            fmt=fmt,
            scaler=None,
            scale_factors=factors,
            coordinate_transformations=node.metadata.get("coordinateTransformations")[: len(factors) + 1],
        )
    except BaseException:  # interrupted or failed: leave no half-written label image behind
        shutil.rmtree(target, ignore_errors=True)
        raise
    return target


def labels_path(path: str | os.PathLike, name: str = DEFAULT_LABELS_NAME, *, overwrite: bool = False) -> Path:
    """Where ``write_ome_zarr_labels`` writes; raises ``OutputError`` before any work when it must not."""
    path = Path(path)
    if not name or "/" in name or name.startswith("."):
        raise OutputError(f"labels name {name!r} cannot be a folder name: use letters, digits, '-' or '_'")
    target = path / "labels" / name
    if target.exists() and not overwrite:
        raise OutputError(f"labels {target} already exist: choose another name, or add --overwrite to replace them")
    if not os.access(path, os.W_OK):
        raise OutputError(f"cannot write labels into OME-Zarr image {path}: the folder is not writable")
    return target


def read_ome_zarr_labels(path: str | os.PathLike, name: str = DEFAULT_LABELS_NAME) -> list[np.ndarray]:
    """The levels of the label image ``labels/<name>`` of the OME-Zarr image at ``path``, finest first."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    with _quiet():
        location = parse_url(str(Path(path) / "labels" / name))
        if location is None:
            raise ImageError(f"OME-Zarr image {path} has no labels '{name}'")
        node = next(iter(Reader(location)()))
        return [np.asarray(level) for level in node.data]


def _image_node(path: Path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    with _quiet():
        location = parse_url(str(path))
        if location is None:
            raise ImageError(f"{path} is not a Zarr store")
        for node in Reader(location)():
            if node.data and any(isinstance(spec, Multiscales) for spec in node.specs):
                return node
    raise ImageError(f"{path} holds no OME-Zarr multiscale image (no 'multiscales' metadata with data)")


def _axis_names(axes: list | None, ndim: int) -> list[str]:
    if not axes:  # OME-Zarr 0.1/0.2 have no axes: the 5D layout was fixed
        return list("tczyx"[-ndim:])
    return [a["name"] if isinstance(a, dict) else str(a) for a in axes]


@contextmanager
def _quiet():
    """ome-zarr logs a warning for every store of another format version than its newest: not the user's problem."""
    logger = logging.getLogger("ome_zarr")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
