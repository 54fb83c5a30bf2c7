"""Prompt-free segmentation of a large Image layer (dask / zarr-backed, possibly multiscale) block by block, as a job.

``core.batch.segment_large_image`` does the work: it reads the layer's full-resolution array by region and writes a
zarr store under the user cache folder (``<cache>/blocks/<layer>-<key>.zarr``). The store is resumable, so a cancelled
run goes on where it stopped when started again with the same image, model and block size. The result is shown as a
Labels layer reading the store's ``labels`` array lazily: nothing holds the whole image or its labels in memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Callable, Generator
from pathlib import Path

import dask.array as da
from napari.layers import Image, Labels

from ..core.batch import ArraySource, segment_large_image
from ..core.models.registry import BUNDLED_NAME, SamModel, cache_dir, load_model
from .layers import LayerError, image_data, spatial_shape


def block_source(image: Image) -> ArraySource:
    """The full-resolution 2D plane of ``image`` to read block by block; a stack is refused with a reason."""
    if len(spatial_shape(image)) != 2:
        raise LayerError(
            f"image {image.name!r} is a stack; 'Segment large image' takes one 2D plane: "
            "make a layer of one slice (or use 'Segment with prompts')"
        )
    return ArraySource(array=image_data(image))


def store_for(image: Image, model: SamModel, block: int) -> Path:
    """Where the blocks of ``image`` segmented by ``model`` go: one store per layer name, model and block size, so
    that a re-run resumes and another model or block size never meets a store it cannot use."""
    key = hashlib.sha1(f"{model.name}:{model.weights_sha256}:{block}".encode())
    if model.prompt_embeddings is not None:  # learned prompts change the result on the same weights
        key.update(model.prompt_embeddings.detach().cpu().numpy().tobytes())
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", image.name).strip("._") or "image"
    return cache_dir() / "blocks" / f"{name}-{key.hexdigest()[:10]}.zarr"


def large_image_job(
    image: Image,
    model: SamModel | None,
    block: int,
    should_stop: Callable[[], bool] = lambda: False,
) -> Generator[dict, None, Path | None]:
    """Segment ``image`` block-wise with ``model`` (None: the bundled one, loaded here); yields progress dicts for
    ``workers.run_job``. Returns the zarr store (its ``labels`` array: uint32 of the image's ``(H, W)`` shape), or
    None when ``should_stop`` ended it; the store then keeps the finished blocks for the next run."""
    source = block_source(image)
    if model is None:
        yield {"stage": f"loading {BUNDLED_NAME}"}
        model = load_model(BUNDLED_NAME)
    output = store_for(image, model, block)
    output.parent.mkdir(parents=True, exist_ok=True)
    yield {"stage": "segment"}
    with contextlib.closing(segment_large_image(source, output, model, block=block)) as events:
        for event in events:
            if should_stop():
                return None
            yield event
    return output


def labels_layer(image: Image, output: Path) -> Labels:
    """A Labels layer over ``image`` showing the store's ``labels`` array, read lazily through dask."""
    labels = da.from_zarr(str(output), component="labels")
    return Labels(labels, name=f"{image.name} labels", scale=image.scale[-2:], translate=image.translate[-2:])
