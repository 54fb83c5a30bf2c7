"""Prompt-free segmentation of images too large for memory, block by block, on dask (local or any cluster).

The image (a zarr / OME-Zarr array, a TIFF read through its zarr view, or an in-memory array) is cut into square
blocks. Each block task encodes exactly the encoder tiles that the whole-image path would use around it (the global
tile grid of ``tile_grid``, so embeddings, learned-prompt logits and the click grid are the whole-image ones), segments
them, and writes its core into a zarr store. Nothing holds the whole image: tasks read their region and write their
block.

Labels: with learned prompts (a BLO adapter) class values, exact everywhere except where NMS-free blending makes no
difference (none: class logits of a core pixel come from the same tiles as in the whole image). Otherwise "every object"
instance labels: each block's objects get ids unique to the block; objects cut by a block border are merged afterwards
(two labels are one object when they meet across the border over at least half of the longer of their two runs
along it). The
seam handling: near a border, masks come from the block that owns the click, so an object may be cut slightly
differently than in the whole-image path; away from borders the result is the same.

Resumable: the store records which blocks are written (``done``) and relabelled (``final``); a re-run with the same
image, model and settings does only what is missing. Workers load the model once (``worker_segmenter`` is cached per
process), never per block.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .automatic import InstanceSettings, class_logits, grid_points, logits_to_result, renumber_labels, segment_instances
from .embeddings import PlaneEmbedding, Tiling, encode_tiles, tile_grid, tile_inputs
from .errors import SamtuneError
from .image import Normalization, Volume, intensity_range
from .models.registry import SamModel
from .predictor import Predictor

STORE_FORMAT = "napari-samtune-blocks/1"
ID_BITS = 20  # instance ids are (block index << ID_BITS) + local id until they are merged and renumbered


class BatchError(SamtuneError, ValueError):
    """A block-wise job that cannot run as asked; the message names the store or input and what to do."""


@dataclass(frozen=True)
class ModelSpec:
    """What a worker loads: a model name or checkpoint, optionally an adapter file (picklable, hashable)."""

    name: str = "samtune_small"
    checkpoint: str | None = None
    adapter: str | None = None
    device: str = "cpu"


def worker_segmenter(model: ModelSpec | SamModel) -> tuple[SamModel, Predictor]:
    """The model (loaded once per worker process for a ``ModelSpec``) and a predictor for it."""
    if isinstance(model, ModelSpec):
        return _load(model)
    return model, Predictor(model)


@functools.lru_cache(maxsize=2)
def _load(spec: ModelSpec) -> tuple[SamModel, Predictor]:
    from .models.registry import load_model

    model = load_model(spec.name, checkpoint=spec.checkpoint, device=spec.device)
    if spec.adapter is not None:
        from .training.adapters import apply_adapter, load_adapter

        model = apply_adapter(model, load_adapter(spec.adapter))
    return model, Predictor(model)


@dataclass(frozen=True)
class ArraySource:
    """An image to read by region: an in-memory array, or a zarr array at ``path`` (``component`` inside a group).

    ``(H, W)`` grey or ``(H, W, C)`` with C = 3 or 4 (RGB). TIFF files are read through tifffile's zarr view.
    """

    path: str | None = None
    component: str | None = None
    array: np.ndarray | None = None

    def open(self):
        if self.array is not None:
            return self.array
        import zarr

        if self.path.lower().endswith((".tif", ".tiff")):
            import tifffile

            return zarr.open(tifffile.imread(self.path, aszarr=True), mode="r")
        node = zarr.open(self.path, mode="r")
        if self.component is not None:
            return node[self.component]
        if isinstance(node, zarr.Group):  # OME-Zarr multiscales: the full-resolution level is the first dataset
            datasets = node.attrs.get("multiscales", [{}])[0].get("datasets") or [{"path": "0"}]
            return node[datasets[0]["path"]]
        return node


def open_source(image: str | Path | np.ndarray, component: str | None = None) -> ArraySource:
    """An ``ArraySource`` for a path (zarr, OME-Zarr, TIFF) or an array; checks that it is one 2D plane."""
    source = ArraySource(array=image) if isinstance(image, np.ndarray) else ArraySource(str(image), component)
    try:
        data = source.open()
    except Exception as error:
        raise BatchError(f"cannot open {image} as a zarr array or TIFF: {error}") from error
    if not (data.ndim == 2 or (data.ndim == 3 and data.shape[-1] in (3, 4))):
        raise BatchError(
            f"{image}: block-wise segmentation takes one 2D plane (H, W) or (H, W, 3); got shape {data.shape}. "
            "Pass one plane of a stack (component=...) or segment it plane by plane."
        )
    return source


@dataclass(frozen=True)
class BlockPlan:
    """Blocks of ``block`` pixels over a plane of ``shape``, and the global encoder tiles (the whole-image ones)."""

    shape: tuple[int, int]
    block: int
    input_size: int
    tile_overlap: int = 64

    @functools.cached_property
    def tiles(self) -> np.ndarray:
        tiles, scale = tile_grid(self.shape, self.input_size, Tiling(overlap=self.tile_overlap))
        if scale != 1.0:
            raise BatchError(f"an image of {self.shape} fits the model input: segment it whole, not block-wise")
        return tiles

    @property
    def grid(self) -> tuple[int, int]:
        return -(-self.shape[0] // self.block), -(-self.shape[1] // self.block)

    def blocks(self) -> list[tuple[int, int]]:
        return [(i, j) for i in range(self.grid[0]) for j in range(self.grid[1])]

    def core(self, i: int, j: int) -> tuple[int, int, int, int]:
        b = self.block
        return i * b, j * b, min((i + 1) * b, self.shape[0]), min((j + 1) * b, self.shape[1])

    def context(self, i: int, j: int, margin: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """Indices of the global tiles meeting the core grown by ``margin``, and the region they cover."""
        r0, c0, r1, c1 = self.core(i, j)
        t = self.tiles
        near = (t[:, 0] < r1 + margin) & (t[:, 2] > r0 - margin) & (t[:, 1] < c1 + margin) & (t[:, 3] > c0 - margin)
        chosen = np.flatnonzero(near)
        sel = t[chosen]
        return chosen, (int(sel[:, 0].min()), int(sel[:, 1].min()), int(sel[:, 2].max()), int(sel[:, 3].max()))


def segment_block(
    source: ArraySource,
    plan: BlockPlan,
    index: tuple[int, int],
    spec: ModelSpec | SamModel,
    intensity: tuple[float, float],
    settings: InstanceSettings | None,
    store_path: str,
) -> int:
    """Segment block ``index`` and write its core into the store; returns its number of objects (classes: 0)."""
    import zarr

    model, predictor = worker_segmenter(spec)
    i, j = index
    r0, c0, r1, c1 = plan.core(i, j)
    # Clicks within one tile of the core decide its objects; their tiles (and those of the core) are encoded.
    margin = plan.input_size if model.prompt_embeddings is None else 0
    chosen, (g0, h0, g1, h1) = plan.context(i, j, margin)
    data = np.asarray(source.open()[g0:g1, h0:h1])
    volume = Volume(planes=data[None], low=intensity[0], high=intensity[1], is_stack=False)
    tiles = plan.tiles[chosen] - np.array([g0, h0, g0, h0])
    features = encode_tiles(model, tile_inputs(volume.plane(0), tiles, 1.0))
    embedding = PlaneEmbedding(features, tiles, 1.0, (g1 - g0, h1 - h0), model.img_size)
    store = zarr.open_group(store_path, mode="r+")
    core = (slice(r0 - g0, r1 - g0), slice(c0 - h0, c1 - h0))
    if model.prompt_embeddings is not None:
        classes = tuple(model.classes) or tuple(range(1, len(model.prompt_embeddings) + 1))
        labels = logits_to_result(class_logits(model, embedding, model.prompt_embeddings), classes).labels[core]
        store["labels"][r0:r1, c0:c1] = labels.astype(np.uint32)
        count = 0
    else:
        # The whole image's click grid near the core, so that every click is the one the whole-image path makes.
        clicks = grid_points(plan.shape, plan.input_size / (settings or InstanceSettings()).points_per_side)
        near = (np.abs(clicks - np.clip(clicks, [r0, c0], [r1 - 1, c1 - 1])) < margin).all(1)
        clicks = clicks[near]
        labels = segment_instances(predictor, embedding, settings, clicks=clicks - np.array([g0, h0]))
        labels = renumber_labels(labels[core])  # ids 1…count of the objects in the core only
        count = int(labels.max(initial=0))
        if count >= 1 << ID_BITS:
            raise BatchError(f"block {index} holds {count} objects, more than {(1 << ID_BITS) - 1}: use smaller blocks")
        block_id = i * plan.grid[1] + j
        store["raw"][r0:r1, c0:c1] = np.where(labels > 0, (block_id << ID_BITS) + labels, 0).astype(np.uint64)
    store["counts"][i, j] = count
    store["done"][i, j] = 1
    return count


def border_links(store, plan: BlockPlan) -> list[tuple[int, int]]:
    """Pairs of raw ids that are one object cut by a block border (see the module docstring for the rule)."""
    raw = store["raw"]
    links = []
    for i, j in plan.blocks():
        r0, c0, r1, c1 = plan.core(i, j)
        if r1 < plan.shape[0]:  # the border below
            links += _face_links(np.asarray(raw[r1 - 1, c0:c1]), np.asarray(raw[r1, c0:c1]))
        if c1 < plan.shape[1]:  # the border on the right
            links += _face_links(np.asarray(raw[r0:r1, c1 - 1]), np.asarray(raw[r0:r1, c1]))
    return links


def _face_links(a: np.ndarray, b: np.ndarray) -> list[tuple[int, int]]:
    both = (a > 0) & (b > 0)
    pairs, counts = np.unique(np.stack([a[both], b[both]]), axis=1, return_counts=True)
    run_a = dict(zip(*np.unique(a[a > 0], return_counts=True)))
    run_b = dict(zip(*np.unique(b[b > 0], return_counts=True)))
    return [(int(x), int(y)) for (x, y), n in zip(pairs.T, counts) if n >= 0.5 * max(run_a[x], run_b[y])]


def final_ids(store, plan: BlockPlan) -> dict[tuple[int, int], np.ndarray]:
    """Per block, the lookup local id → final label: merged across borders, numbered 1… over the whole image."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    counts = np.asarray(store["counts"])
    # node of (block b, local id k) = offsets[b] + k - 1
    offsets = np.concatenate([[0], np.cumsum(counts.ravel())]).astype(np.int64)
    n = int(offsets[-1])
    pairs = np.array(border_links(store, plan), dtype=np.uint64).reshape(-1, 2)
    blocks, local = (pairs >> ID_BITS).astype(np.int64), (pairs & ((1 << ID_BITS) - 1)).astype(np.int64)
    nodes = offsets[blocks] + local - 1
    graph = coo_matrix((np.ones(len(pairs)), (nodes[:, 0], nodes[:, 1])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    # Number objects in order of first appearance, so labels read top-left to bottom-right.
    _, first = np.unique(component, return_index=True)
    rank = np.empty(len(first), np.int64)
    rank[np.argsort(first)] = np.arange(1, len(first) + 1)
    final = rank[component] if n else np.zeros(0, np.int64)
    return {
        (i, j): np.concatenate([[0], final[offsets[b] : offsets[b + 1]]]).astype(np.uint32)
        for b, (i, j) in enumerate(plan.blocks())
    }


def relabel_block(store_path: str, plan: BlockPlan, index: tuple[int, int], lookup: np.ndarray) -> None:
    """Write block ``index``'s final labels from its raw ids and ``lookup`` (local id → final label)."""
    import zarr

    store = zarr.open_group(store_path, mode="r+")
    r0, c0, r1, c1 = plan.core(*index)
    raw = np.asarray(store["raw"][r0:r1, c0:c1])
    store["labels"][r0:r1, c0:c1] = lookup[(raw & ((1 << ID_BITS) - 1)).astype(np.int64)]
    store["final"][index] = 1


def _open_store(path: Path, plan: BlockPlan, layout: dict, instances: bool):
    import zarr

    if path.exists():
        store = zarr.open_group(str(path), mode="r+")
        saved = dict(store.attrs).get("layout")
        if saved != layout:
            raise BatchError(
                f"{path} holds a block-wise result of another image, model or settings ({saved}); "
                "choose another output, or delete it to start again"
            )
        return store
    store = zarr.open_group(str(path), mode="w")
    chunks = (plan.block, plan.block)
    store.create_array("labels", shape=plan.shape, chunks=chunks, dtype="uint32", fill_value=0)
    if instances:
        store.create_array("raw", shape=plan.shape, chunks=chunks, dtype="uint64", fill_value=0)
    for name in ("done", "final"):
        store.create_array(name, shape=plan.grid, chunks=(1, 1), dtype="uint8", fill_value=0)
    store.create_array("counts", shape=plan.grid, chunks=(1, 1), dtype="uint32", fill_value=0)
    store.attrs["layout"] = layout
    return store


def segment_large_image(
    image: str | Path | np.ndarray | ArraySource,
    output: str | Path,
    spec: ModelSpec | SamModel = ModelSpec(),
    *,
    block: int = 2048,
    settings: InstanceSettings | None = None,
    client=None,
) -> Iterator[dict]:
    """Segment ``image`` block-wise into the zarr group ``output`` (array ``labels``, uint32); yields progress.

    Events: ``{"stage": "segment" | "merge", "done": k, "total": n}``. ``spec``: what workers load (a ``ModelSpec``,
    loaded once per worker) or a loaded model (sent to the workers once). ``client``: a ``distributed.Client`` to run
    the blocks on (a local or remote cluster); None runs them one after another in this process. Re-running on the
    same output finishes an interrupted run.
    """
    source = image if isinstance(image, ArraySource) else open_source(image)
    data = source.open()
    model, _ = worker_segmenter(spec)
    plan = BlockPlan(tuple(data.shape[:2]), int(block), model.img_size)
    plan.tiles  # noqa: B018 (refuses images that fit the model input, before anything is written)
    instances = model.prompt_embeddings is None
    stride = max(1, int(np.ceil((data.size / 4_000_000) ** 0.5)))  # the sample the whole-image path takes
    low, high = intensity_range(np.asarray(data[::stride, ::stride])[None], Normalization())
    layout = {
        "format": STORE_FORMAT,
        "shape": list(plan.shape),
        "block": plan.block,
        "model": asdict(spec) if isinstance(spec, ModelSpec) else spec.name,
        "weights": model.weights_sha256,
        "settings": None if settings is None else asdict(settings),
        "intensity": [low, high],
    }
    layout = json.loads(json.dumps(layout))
    path = Path(output)
    store = _open_store(path, plan, layout, instances)
    done = np.asarray(store["done"])
    todo = [b for b in plan.blocks() if not done[b]]
    shared = spec if client is None or isinstance(spec, ModelSpec) else client.scatter(spec, broadcast=True)
    args = (shared, (low, high), settings, str(path))
    yield from _run(client, segment_block, [(source, plan, b, *args) for b in todo], "segment", len(plan.blocks()))
    if not instances:
        return
    final = np.asarray(store["final"])
    lookups = final_ids(store, plan)
    jobs = [(str(path), plan, b, lookups[b]) for b in plan.blocks() if not final[b]]
    yield from _run(client, relabel_block, jobs, "merge", len(plan.blocks()))


def _run(client, function, jobs: list[tuple], stage: str, total: int) -> Iterator[dict]:
    """Run ``function(*job)`` for every job on the dask cluster of ``client`` (or here, in order); yields progress."""
    start = total - len(jobs)
    if client is None:
        for k, job in enumerate(jobs, start + 1):
            function(*job)
            yield {"stage": stage, "done": k, "total": total}
        return
    from distributed import as_completed

    futures = [client.submit(function, *job, pure=False) for job in jobs]
    for k, future in enumerate(as_completed(futures), start + 1):
        future.result()  # re-raises a worker's error here
        yield {"stage": stage, "done": k, "total": total}


def torch_threads_per_worker(n: int) -> None:
    """Give each dask worker's torch ``n`` threads (call through ``client.run``): workers otherwise use every core."""
    torch.set_num_threads(n)
