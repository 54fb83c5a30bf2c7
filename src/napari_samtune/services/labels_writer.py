"""napari's 'Save Selected Layers' for Labels: a TIFF file, or the labels of an OME-Zarr image.

The npe2 writer hook gets the layer's data and metadata, not the layer, so this needs no napari import. A TIFF is
written atomically (``core.io.write_labels``: the old file or the complete new one, never half of it); into an
existing OME-Zarr image, the labels go to its ``labels/<layer name>`` group (``core.omezarr``), replacing an earlier
save of the same layer and never touching the image itself.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from ..core.io import TIFF_SUFFIXES, OutputError, write_labels
from ..core.omezarr import DEFAULT_LABELS_NAME, is_ome_zarr, write_ome_zarr_labels


def write_labels_layer(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 single-layer writer: save a Labels layer's ``data`` (``(Z,) Y, X`` integer ids; a multiscale layer's
    full-resolution level) to ``path``; returns the written paths.

    ``.tif``/``.tiff``: a uint16 (or uint32) TIFF. ``.zarr``: an existing OME-Zarr image whose planes have the
    labels' shape. Raises ``OutputError`` for a ``.zarr`` that is not an OME-Zarr image, ``ImageError`` when the labels
    do not fit it.
    """
    if isinstance(data, list | tuple):  # multiscale: level 0 holds every label
        data = data[0]
    labels = np.asarray(data)
    target = Path(path)
    if target.suffix.lower() in TIFF_SUFFIXES:
        return [str(write_labels(target, labels))]
    if not (is_ome_zarr(target) and target.is_dir()):
        raise OutputError(
            f"{target} is not an OME-Zarr image: labels are saved into the image they belong to (choose its .zarr "
            "folder), or as a .tif file"
        )
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", str(meta.get("name") or "")).strip("_") or DEFAULT_LABELS_NAME
    return [str(write_ome_zarr_labels(target, labels, name, overwrite=True))]
