"""The BioImage.IO export job the fine-tune widget runs: the last BLO fine-tune as a prompt-free model package.

The layer is read on the main thread (``package_test_image``); the job (``bioimageio_export_job``) traces and writes
the package with ``core.export.bioimageio``.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path

import numpy as np
from napari.layers import Image

from ..core.export.bioimageio import BioimageioExport, ExportError, export_bioimageio
from ..core.models.registry import SamModel
from ..core.training.adapters import Adapter
from .layers import image_data, spatial_shape


def package_test_image(image: Image | None, input_size: int) -> tuple[np.ndarray | None, bool]:
    """The package's test image taken from ``image`` and whether the model takes RGB (its ``rgb`` flag).

    Returns the first plane of the full-resolution level, ``(H, W)`` or ``(H, W, 3|4)``; None (a synthetic grey
    scene) when no image is chosen or a grey one is smaller than ``input_size``.
    """
    if image is None:
        return None, False
    shape = spatial_shape(image)
    if min(shape[-2:]) < input_size and not image.rgb:
        return None, False
    data = image_data(image)
    return np.asarray(data[0] if len(shape) == 3 else data), image.rgb


def bioimageio_export_job(
    base: SamModel, adapter: Adapter, output: str | os.PathLike, test_image: np.ndarray | None, rgb: bool
) -> Generator[dict, None, BioimageioExport]:
    """Write the BioImage.IO package of ``adapter`` on ``base`` to ``output`` (a ``.zip``); returns what was written.

    Raises ``ExportError`` for a name that is not a ``.zip``, an adapter without learned prompts or a missing
    ``bioimageio.spec``.
    """
    output = Path(output)
    if output.suffix != ".zip":
        raise ExportError(f"a BioImage.IO package is a .zip file: choose a name ending in .zip, not {output.name!r}")
    yield {"stage": f"exporting to {output.name}"}
    return export_bioimageio(base, adapter, output, test_image=test_image, rgb=rgb)
