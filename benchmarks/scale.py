"""Scaling out: dask.distributed for segmentation, torch.distributed for fine-tuning, each against its own baseline in
the same run.

Model: the bundled ``samtune_small`` made adapter-like: one learned-prompt class whose prompt tokens are those of a
box around the whole encoder frame (prompt-free segmentation runs as after BLO; the labels' quality is not measured).

(a) dask, 2-core machine:
  - a folder of 16 images (1024², TIFF), one task per image (read, encode, prompt-free labels, write), on a
    ``distributed.LocalCluster`` of 2 workers × 1 thread vs 1 worker × 1 thread; the model is sent to each worker once
    and loaded before the clock starts. TARGET: throughput ratio ≥ 1.7.
  - a large uint8 image made on disk as zarr (16,384²; ``--quick``: 4,096²), segmented block-wise
    (``core.batch.segment_large_image``, blocks of 2,048) on 2 workers × 1 thread. TARGET: the peak RSS of each
    process (each worker, measured inside it with ``resource.getrusage``, and this client process) ≤ 2 GB.
  - a crop of it small enough for the whole-image path (3,072²; ``--quick``: 1,536²): the whole-image labels
    (``Segmenter`` + ``segment_automatic``) against the block-wise ones (blocks of a third of the crop) on the same
    cluster. TARGET: identical pixels away from seams (more than one encoder input from a block border) = 1.
(b) torch.distributed, fine-tuning (interactive, mask decoder) on 8 synthetic scenes of 256²: 2 processes × 1 thread
    (gloo, ``torch.multiprocessing.spawn``) vs 1 process × 2 threads computing the same global batch (both ranks'
    micro-batches, the gradients averaged), 20 steps. TARGET: loss curves equal within 1e-4; the wall-time ratio of
    the 20 steps is reported.

Run: ``python benchmarks/scale.py [--quick] [--part dask|ddp|all]``. ``--quick`` took 13 minutes on the shared
2-core machine (docs/benchmarks.md, "Scale"); the full run's 16,384² image is 16 times the quick one's 4,096² (about
50 minutes there), so on 2 cores only ``--quick`` fits in 15 minutes.
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from napari_samtune.core import batch
from napari_samtune.core.automatic import segment_automatic
from napari_samtune.core.models import load_model
from napari_samtune.core.segmenter import Segmenter
from napari_samtune.core.training import distributed
from napari_samtune.core.training.data import prepare_training_data
from napari_samtune.core.training.interactive import InteractiveFineTuning, InteractiveSettings
from napari_samtune.core.training.loop import Level, TrainConfig, run_training
from napari_samtune.core.training.units import Augmentation

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import target

GB = 1024**3
STEPS = 20
WORLD = 2
DDP_CONFIG = TrainConfig(steps=STEPS, warmup_steps=2, validate_every=1000, seed=0)
DDP_SETTINGS = InteractiveSettings(units_per_step=2, objects_per_unit=4, augmentation=Augmentation.none())


def adapter_like_model():
    """``samtune_small`` with one learned-prompt class: the prompt tokens of a box around the whole frame."""
    model = load_model("samtune_small", device="cpu")
    side = float(model.img_size - 1)
    with torch.no_grad():
        tokens, _ = model.sam.prompt_encoder(points=None, boxes=torch.tensor([[0.0, 0.0, side, side]]), masks=None)
    model.prompt_embeddings = tokens.detach().clone()
    model.classes = (1,)
    return model


def disc_image(shape: tuple[int, int], seed: int) -> np.ndarray:
    """A dark noisy uint8 image with bright discs (radius 8–20 px, about one per 80² pixels)."""
    from skimage.draw import disk

    rng = np.random.default_rng(seed)
    image = rng.normal(40, 8, shape).astype(np.float32)
    for _ in range(shape[0] * shape[1] // 6400):
        rr, cc = disk(tuple(rng.integers(0, shape, 2)), int(rng.integers(8, 20)), shape=shape)
        image[rr, cc] += 120
    return np.clip(image, 0, 255).astype(np.uint8)


def make_large_zarr(path: Path, size: int, chunk: int = 1024) -> None:
    """A ``size``² uint8 zarr array written chunk by chunk (never whole in memory)."""
    import zarr

    array = zarr.create_array(str(path), shape=(size, size), chunks=(chunk, chunk), dtype="uint8")
    for r in range(0, size, chunk):
        for c in range(0, size, chunk):
            array[r : r + chunk, c : c + chunk] = disc_image((chunk, chunk), seed=r * size + c)


def segment_file(path: str, model, out: str) -> int:
    """One per-image task: read, encode, prompt-free labels, write; returns the foreground pixels."""
    import tifffile

    segmenter = Segmenter(model, cache_root=False)
    segmenter.set_image(tifffile.imread(path))
    labels = segment_automatic(model, segmenter.store.plane(0)).labels
    np.save(Path(out) / (Path(path).stem + ".npy"), labels)
    return int((labels > 0).sum())


def peak_rss() -> int:
    """This process's peak resident memory in bytes (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cluster(workers: int):
    import distributed as dd

    c = dd.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    client = dd.Client(c)
    client.run(batch.torch_threads_per_worker, 1)
    return c, client


def folder_throughput(model, folder: Path, workers: int) -> float:
    """Images per second on ``workers`` workers × 1 thread (the model sent and warmed up before timing)."""
    c, client = cluster(workers)
    try:
        shared = client.scatter(model, broadcast=True)
        out = tempfile.mkdtemp(dir=folder.parent)
        paths = sorted(str(p) for p in folder.glob("*.tif"))
        warm = [client.submit(segment_file, paths[0], shared, out, pure=False, workers=[w]) for w in client.nthreads()]
        client.gather(warm)
        start = time.perf_counter()
        client.gather([client.submit(segment_file, p, shared, out, pure=False) for p in paths])
        return len(paths) / (time.perf_counter() - start)
    finally:
        client.close()
        c.close()


def part_dask(quick: bool, work: Path) -> list[str]:
    import tifffile
    import zarr

    torch.set_num_threads(1)
    model = adapter_like_model()
    lines = []
    folder = work / "images"
    folder.mkdir()
    for k in range(16):
        tifffile.imwrite(folder / f"image_{k:02d}.tif", disc_image((1024, 1024), seed=k))
    one = folder_throughput(model, folder, 1)
    two = folder_throughput(model, folder, 2)
    print(f"folder of 16 images 1024²: 1 worker × 1 thread {one:.3f} images/s, 2 workers × 1 thread {two:.3f} images/s")
    lines.append(target("dask folder throughput ratio, 2 workers / 1 worker", two / one, ">=", 1.7))

    size, crop_size = (4096, 1536) if quick else (16384, 3072)
    start = time.perf_counter()
    make_large_zarr(work / "large.zarr", size)
    print(f"made a {size}² uint8 zarr on disk in {time.perf_counter() - start:.0f} s")
    c, client = cluster(2)
    try:
        start = time.perf_counter()
        for event in batch.segment_large_image(
            str(work / "large.zarr"), work / "large_labels.zarr", model, client=client
        ):
            if event["done"] % max(1, event["total"] // 8) == 0:
                print(f"  {event['stage']} {event['done']}/{event['total']} ({time.perf_counter() - start:.0f} s)")
        seconds = time.perf_counter() - start
        worker_rss = client.run(peak_rss)
        labels = zarr.open_group(str(work / "large_labels.zarr"))["labels"]
        foreground = float(np.mean([np.asarray(labels[r : r + 512, r : r + 512]).mean() for r in range(0, size, 2048)]))
        print(
            f"{size}² block-wise (blocks of 2048, 2 workers × 1 thread): {seconds:.0f} s, "
            f"{size * size / seconds / 1e6:.2f} Mpixel/s, foreground ≈ {foreground:.1%} on diagonal samples"
        )
        rss = [*worker_rss.values(), peak_rss()]
        print("peak RSS (GB): workers " + ", ".join(f"{v / GB:.2f}" for v in worker_rss.values()), end="")
        print(f"; client {peak_rss() / GB:.2f}")
        lines.append(target(f"peak RSS of each process, {size}² image (GB)", max(rss) / GB, "<=", 2.0))

        r0 = size // 2 - crop_size // 2
        crop = np.asarray(zarr.open(str(work / "large.zarr"), mode="r")[r0 : r0 + crop_size, r0 : r0 + crop_size])
        segmenter = Segmenter(model, cache_root=False)
        segmenter.set_image(crop)
        whole = segment_automatic(model, segmenter.store.plane(0)).labels
        block = crop_size // 3
        list(batch.segment_large_image(crop, work / "crop.zarr", model, block=block, client=client))
        blockwise = np.asarray(zarr.open_group(str(work / "crop.zarr"))["labels"])
    finally:
        client.close()
        c.close()
    near = np.zeros(crop.shape, bool)  # pixels within one encoder input of an inner block border
    for b in range(block, crop_size, block):
        near[max(0, b - model.img_size) : b + model.img_size] = True
        near[:, max(0, b - model.img_size) : b + model.img_size] = True
    same = whole == blockwise
    print(
        f"crop {crop_size}² (blocks of {block}): identical pixels {same.mean():.6f} overall, "
        f"{same[~near].mean():.6f} away from seams ({(~near).sum()} px), foreground {np.mean(whole > 0):.1%}"
    )
    lines.append(target("crop labels identical to the whole-image path away from seams", same[~near].mean(), ">=", 1.0))
    return lines


def ddp_data():
    from napari_samtune.core.synthetic import make_scenes

    scenes = make_scenes(8, seed=7, size=256, kind="nuclei")
    return prepare_training_data([s.image for s in scenes], [s.labels for s in scenes], all_objects_labeled=True)


def ddp_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    group = distributed.init_from_env(device="cpu")
    try:
        model = load_model("samtune_small", device="cpu")
        method = InteractiveFineTuning(
            model, distributed.shard_data(ddp_data(), rank, WORLD), DDP_SETTINGS, cache_root=False
        )
        run = distributed.run_training_distributed(method, DDP_CONFIG, group)
        losses, times = [], []
        for event in run:
            if "loss" in event.losses:
                losses.append(event.losses["loss"])
                times.append(time.perf_counter())
        # step time: from the end of step 1 (after the initial validation) to the end of the last step
        torch.save({"losses": losses, "seconds": times[-1] - times[0]}, Path(out) / f"rank{rank}.pt")
    finally:
        distributed.shutdown()


class GlobalBatch:
    """One process computing what the ranks compute together: each shard's micro-batch with that rank's random
    stream, the gradients averaged."""

    name = "interactive"

    def __init__(self, model, data) -> None:
        self.shards = [
            InteractiveFineTuning(model, distributed.shard_data(data, r, WORLD), DDP_SETTINGS, cache_root=False)
            for r in range(WORLD)
        ]

    def levels(self) -> list[Level]:
        params = self.shards[0].params
        return [Level("model", params, self._backward, DDP_SETTINGS.lr, DDP_SETTINGS.weight_decay)]

    def _backward(self, step: int, rng: np.random.Generator) -> dict[str, float]:
        rngs = [distributed.per_rank_rng(DDP_CONFIG.seed, step, r) for r in range(WORLD)]
        losses = [m._backward(step, g)["loss"] for m, g in zip(self.shards, rngs)]
        for p in self.shards[0].params:
            if p.grad is not None:
                p.grad /= WORLD
        return {"loss": float(np.mean(losses))}

    def validate(self) -> float:
        return self.shards[0].validate()


def part_ddp(work: Path) -> list[str]:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    mp.spawn(ddp_worker, args=(port, str(work)), nprocs=WORLD, join=True)
    ddp_total = time.perf_counter() - start
    ranks = [torch.load(work / f"rank{r}.pt") for r in range(WORLD)]

    torch.set_num_threads(2)
    start = time.perf_counter()
    method = GlobalBatch(load_model("samtune_small", device="cpu"), ddp_data())
    losses, times = [], []
    for event in run_training(method, DDP_CONFIG):
        if "loss" in event.losses:
            losses.append(event.losses["loss"])
            times.append(time.perf_counter())
    one_total = time.perf_counter() - start
    one_steps = times[-1] - times[0]
    ddp_steps = max(r["seconds"] for r in ranks)
    diff = float(np.max(np.abs(np.array(ranks[0]["losses"]) - np.array(losses))))
    print("losses (1 process × 2 threads):  " + " ".join(f"{v:.5f}" for v in losses))
    print("losses (2 processes × 1 thread): " + " ".join(f"{v:.5f}" for v in ranks[0]["losses"]))
    print(
        f"steps 2–{STEPS}: 1 process × 2 threads {one_steps:.1f} s, 2 processes × 1 thread {ddp_steps:.1f} s "
        f"(ratio {one_steps / ddp_steps:.2f}); whole runs incl. start-up and encoding: {one_total:.0f} s vs "
        f"{ddp_total:.0f} s"
    )
    return [
        target(f"DDP loss curve vs one process, max |difference| over {STEPS} steps", diff, "<=", 1e-4),
        f"REPORT DDP wall-time ratio (1 process × 2 threads / 2 processes × 1 thread): {one_steps / ddp_steps:.3f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 4,096² large image instead of 16,384²")
    parser.add_argument("--part", choices=("dask", "ddp", "all"), default="all")
    args = parser.parse_args()
    start = time.perf_counter()
    lines = []
    with tempfile.TemporaryDirectory(prefix="samtune-scale-") as tmp:
        if args.part in ("ddp", "all"):
            (Path(tmp) / "ddp").mkdir()
            lines += part_ddp(Path(tmp) / "ddp")
        if args.part in ("dask", "all"):
            (Path(tmp) / "dask").mkdir()
            lines += part_dask(args.quick, Path(tmp) / "dask")
    print(f"total {time.perf_counter() - start:.0f} s")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
