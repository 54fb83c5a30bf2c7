"""``samtune predict`` on images too large for memory: block-wise on a dask cluster (``core.batch``), into a zarr."""

from __future__ import annotations

import argparse

from ..core.automatic import InstanceSettings
from ..core.batch import BatchError, ModelSpec, segment_large_image
from ..core.cluster import LARGE_SIDE, dask_client, wants_block_wise
from ..core.models.registry import BUNDLED_NAME
from .common import UsageError, positive

__all__ = ["add_options", "predict_block_wise", "wants_block_wise"]


def add_options(predict: argparse.ArgumentParser) -> None:
    group = predict.add_argument_group(
        "large images",
        f"a zarr / OME-Zarr / TIFF plane longer than {LARGE_SIDE} px (or any with --block) is segmented "
        "block-wise on dask into --out LABELS.zarr; a re-run finishes an interrupted one",
    )
    group.add_argument("--block", type=positive(int), help="block side in pixels (default 2048)")
    group.add_argument("--workers", type=positive(int), default=1, help="local dask workers (processes; default 1)")
    group.add_argument("--threads-per-worker", type=positive(int), default=1, help="threads per worker (default 1)")
    group.add_argument("--scheduler", metavar="ADDRESS", help="an existing dask cluster (tcp://host:8786) instead")


def predict_block_wise(args: argparse.Namespace) -> int:
    """Segment ``args.input`` block by block into the zarr group ``args.out`` (array ``labels``), with progress."""
    from tqdm import tqdm

    if args.out is None or not str(args.out).rstrip("/").endswith(".zarr"):
        raise UsageError(f"{args.input} is segmented block-wise into a zarr store: give --out LABELS.zarr")
    spec = ModelSpec(
        name=args.model or ("custom" if args.checkpoint else BUNDLED_NAME),
        checkpoint=None if args.checkpoint is None else str(args.checkpoint),
        adapter=None if args.adapter is None else str(args.adapter),
        device=args.device or "cpu",
    )
    settings = InstanceSettings(
        points_per_side=args.points_per_side, min_score=args.min_score, min_stability=args.min_stability
    )
    where = args.scheduler or f"{args.workers} local worker(s) × {args.threads_per_worker} thread(s)"
    bars: dict[str, tqdm] = {}
    try:
        with dask_client(args.workers, args.threads_per_worker, args.scheduler) as client:
            job = segment_large_image(
                args.input, args.out, spec, block=args.block or 2048, settings=settings, client=client
            )
            for event in job:
                if event["stage"] not in bars:
                    bars[event["stage"]] = tqdm(total=event["total"], desc=event["stage"], unit="block", disable=None)
                bars[event["stage"]].n = event["done"]
                bars[event["stage"]].refresh()
    except BatchError as error:
        raise UsageError(str(error)) from error
    finally:
        for bar in bars.values():
            bar.close()
    total = next(iter(bars.values())).total if bars else 0
    print(f"{args.input} → {args.out} (array 'labels'): {total} blocks on {where}")
    return 0
