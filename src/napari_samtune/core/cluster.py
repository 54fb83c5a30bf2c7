"""Where block-wise segmentation runs: a dask client for a local cluster or an existing one, and which inputs are
large enough to be segmented block by block (``batch.segment_large_image``) rather than whole."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .batch import BatchError, open_source, torch_threads_per_worker

LARGE_SIDE = 4096  # pixels: a zarr/TIFF plane with a longer side is segmented block-wise by default


def is_zarr_or_tiff(path: str | Path) -> bool:
    name = str(path).lower().rstrip("/")
    return name.endswith((".zarr", ".tif", ".tiff"))


def wants_block_wise(path: str | Path, block: int | None) -> bool:
    """True for a zarr / OME-Zarr / TIFF input with ``block`` given, or one plane longer than ``LARGE_SIDE`` px."""
    if not is_zarr_or_tiff(path):
        return False
    if block is not None:
        return True
    try:
        shape = open_source(path).open().shape
    except BatchError:  # a stack, or not one plane: the whole-image path handles (or refuses) it
        return False
    return max(shape[:2]) > LARGE_SIDE


@contextmanager
def dask_client(workers: int = 1, threads_per_worker: int = 1, scheduler: str | None = None) -> Iterator[object]:
    """A ``distributed.Client``: of the cluster at ``scheduler`` (an address such as ``tcp://host:8786``), else of a
    new local cluster of ``workers`` processes with ``threads_per_worker`` threads each (torch limited to as many);
    closed on exit."""
    import distributed

    if scheduler is not None:
        with distributed.Client(scheduler) as client:
            yield client
        return
    with (
        distributed.LocalCluster(
            n_workers=workers, threads_per_worker=threads_per_worker, processes=True, dashboard_address=None
        ) as local,
        distributed.Client(local) as client,
    ):
        client.run(torch_threads_per_worker, threads_per_worker)
        yield client
