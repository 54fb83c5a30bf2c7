"""The ``samtune`` command line: list models, precompute embeddings, segment from a prompt file, fine-tune on image
and label folders, segment without prompts, score a result.

Each subcommand is a thin layer over ``napari_samtune.core`` (the same ``Segmenter`` and ``fine_tune`` the napari
widgets use), so the command line and the GUI give the same results. Problems with the user's input (a model, image,
folder, prompt file, adapter or cache that cannot be used) end with exit code 2 and a one-line message, without a
traceback; Ctrl-C ends with exit code 130 and leaves no half-written file.
"""

from __future__ import annotations

import argparse
import io
import math
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from .core import metrics
from .core.automatic import InstanceSettings, segment_without_prompts
from .core.datasets import DatasetError, list_images, load_folder_pairs
from .core.embedding_cache import CacheError, clear_cache, embeddings_root, list_stores, max_cache_bytes
from .core.image import ImageError
from .core.io import TIFF_SUFFIXES, OutputError, atomic_write, check_output, read_image
from .core.models.registry import (
    BUNDLED_NAME,
    MODEL_SOURCES,
    ModelError,
    SamModel,
    available_models,
    cache_dir,
    load_model,
    model_purpose,
)
from .core.omezarr import DEFAULT_LABELS_NAME, is_ome_zarr, labels_path, read_ome_zarr, write_ome_zarr_labels
from .core.predictor import PromptError
from .core.prompt_files import check_fits, label_ids, paint_prompts, read_prompts
from .core.segmenter import Segmenter
from .core.training.adapters import AdapterError, apply_adapter, load_adapter, save_adapter
from .core.training.data import DataError, prepare_training_data
from .core.training.fine_tune import AUTO, METHODS, FineTuneResult, fine_tune
from .core.training.loop import TrainConfig, TrainEvent, TrainingError


class UsageError(ValueError):
    """Options that do not go together; the message says which and what to give instead."""


T = TypeVar("T")
USER_ERRORS = (
    ModelError,
    ImageError,
    PromptError,
    CacheError,
    DatasetError,
    DataError,
    AdapterError,
    TrainingError,
    UsageError,
    OutputError,
)


def write_labels(path: str | Path, labels: np.ndarray) -> None:
    """Write a label image (TIFF, or any format imageio writes, e.g. PNG) atomically, as uint16 when the ids fit."""
    path = Path(path)
    labels = labels.astype(np.uint16 if labels.max(initial=0) < 2**16 else np.uint32)
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            buffer = io.BytesIO()
            tifffile.imwrite(buffer, labels)
            data = buffer.getvalue()
        else:
            import imageio.v3 as iio

            data = iio.imwrite("<bytes>", labels, extension=path.suffix)
    except Exception as error:  # the format cannot hold this label image (e.g. a stack or 32-bit ids in PNG)
        raise ImageError(f"cannot write labels to {path} ({error}); write a .tif instead") from error
    atomic_write(path, lambda handle: handle.write(data))


def _progress(events: Iterable, total: int, desc: str, unit: str = "plane") -> Iterable:
    """tqdm over a core progress generator (hidden when stderr is not a terminal)."""
    from tqdm import tqdm

    return tqdm(events, total=total, desc=desc, unit=unit, disable=None, leave=False)


def _result_of(job: Generator[object, None, T], total: int, desc: str) -> T:
    """Run a core progress generator under a tqdm bar, one tick per event; returns the generator's return value."""
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit="plane", disable=None, leave=False) as bar:
        while True:
            try:
                next(job)
            except StopIteration as stop:
                return stop.value
            bar.update()


def _train(run: Iterator[TrainEvent]) -> tuple[FineTuneResult, list[TrainEvent]]:
    """Run ``fine_tune``'s generator under a tqdm bar (step/total, loss, validation); returns its result and events."""
    from tqdm import tqdm

    events: list[TrainEvent] = []
    with tqdm(desc="fine-tuning", unit="step", disable=None, leave=False) as bar:
        while True:
            try:
                event = next(run)
            except StopIteration as stop:
                return stop.value, events
            events.append(event)
            bar.total, bar.n = event.total, event.step  # the automatic search revises its total as it goes
            loss, best = _headline_loss(event), event.best
            parts = [f"loss {loss:.3g}"] if loss is not None else []
            parts += [f"validation best {best:.3f}"] if best is not None else []
            bar.set_postfix_str(", ".join(parts), refresh=False)
            bar.refresh()


def _headline_loss(event: TrainEvent) -> float | None:
    """A step's total loss: ``"loss"``, else the mean of its levels' ``".../loss"`` (BLO); None before any step."""
    if "loss" in event.losses:
        return event.losses["loss"]
    levels = [v for k, v in event.losses.items() if k.endswith("/loss")]
    return float(np.mean(levels)) if levels else None


def _load_model(args: argparse.Namespace) -> SamModel:
    name = args.model or ("custom" if args.checkpoint else BUNDLED_NAME)
    return load_model(name, checkpoint=args.checkpoint, device=args.device)


def _segmenter(args: argparse.Namespace, model: SamModel, image_path: str) -> Segmenter:
    segmenter = Segmenter(model, cache_root=args.cache_dir)
    if is_ome_zarr(image_path):  # its full-resolution level; the channel axis is in its metadata
        image = read_ome_zarr(image_path)
        channel_axis = image.channel_axis if args.channel_axis is None else args.channel_axis
        segmenter.set_image(image.data, channel_axis=channel_axis, channel=args.channel)
    else:
        segmenter.set_image(read_image(image_path), channel_axis=args.channel_axis, channel=args.channel)
    return segmenter


def _check_labels_output(args: argparse.Namespace, image: Path, out: Path | None, inputs: list) -> None:
    """Refuse an output before any work: ``out``, or without it the labels group of an OME-Zarr ``image``."""
    if out is not None:
        check_output(out, inputs=inputs, overwrite=args.overwrite)
    elif is_ome_zarr(image):
        labels_path(image, args.labels_name, overwrite=args.overwrite)
    else:
        raise UsageError(f"give --out: only an OME-Zarr image (.zarr) can hold its labels itself, not {image}")


def _save_labels(args: argparse.Namespace, image: Path, out: Path | None, labels: np.ndarray) -> Path:
    if out is None:
        return write_ome_zarr_labels(image, labels, args.labels_name, overwrite=args.overwrite)
    write_labels(out, labels)
    return out


def cmd_models(args: argparse.Namespace) -> int:
    """Print the model names ``--model`` accepts, what each is for and whether it is here yet."""
    for name in available_models():
        if name == BUNDLED_NAME:
            where = "bundled"
        elif (cache_dir() / "checkpoints" / MODEL_SOURCES[name].filename).is_file():
            where = "downloaded"
        elif MODEL_SOURCES[name].url is None:
            where = "needs --checkpoint"
        else:
            where = "downloaded on first use"
        print(f"{name:<22} {where:<24} {model_purpose(name)}")
    print(f"{'custom':<22} {'needs --checkpoint':<24} any SAM state dict (official, micro-sam or MedSAM layout)")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    """Show or clear the embedding cache."""
    root = embeddings_root(args.cache_dir)
    if args.action == "clear":
        count, freed = clear_cache(root)
        print(f"removed {count} store(s), {freed / 1e9:.2f} GB, from {root}")
        return 0
    stores = list_stores(root)
    limit = max_cache_bytes()
    print(f"{root}: {len(stores)} store(s), {sum(s.size_bytes for s in stores) / 1e9:.2f} GB", end="")
    print(f" (limit {limit / 1e9:g} GB, SAMTUNE_CACHE_MAX_GB)" if limit else " (no limit)")
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    """Compute (or find cached) the embeddings of every plane of each image."""
    model = _load_model(args)
    for image_path in args.images:
        segmenter = _segmenter(args, model, image_path)
        events = list(_progress(segmenter.encode(), segmenter.n_planes, Path(image_path).name))
        cached = sum(e["cached"] for e in events)
        where = segmenter.store.path or "memory only (see the warning)"
        print(f"{image_path}: {len(events)} plane(s) ready ({cached} already cached) in {where}")
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    """One label id per object of a prompt file, written as a label image the size of the input."""
    _check_labels_output(args, Path(args.image), args.out, [args.image, args.prompts])
    prompts = read_prompts(args.prompts)
    segmenter = _segmenter(args, _load_model(args), args.image)
    check_fits(prompts, segmenter.n_planes, segmenter.plane_shape)
    planes = sorted({p.plane for p in prompts})
    for _ in _progress(segmenter.encode(planes), len(planes), "encoding"):
        pass
    ids = label_ids(prompts)
    labels = np.zeros((segmenter.n_planes, *segmenter.plane_shape), np.uint32)
    for _ in _progress(paint_prompts(segmenter, prompts, labels), len(planes), "segmenting"):
        pass
    out = _save_labels(args, Path(args.image), args.out, labels if segmenter.store.volume.is_stack else labels[0])
    print(f"{len(ids)} object(s) on {len(planes)} plane(s) → {out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Compare a predicted label image with the ground truth."""
    pred, truth = read_image(args.prediction), read_image(args.truth)
    try:
        if args.instances:
            s = metrics.match_instances(pred, truth, threshold=args.threshold)
            print(f"objects: {s.n_pred} predicted, {s.n_true} true, {s.n_matched} matched at IoU ≥ {s.threshold:g}")
            rows = {"F1": s.f1, "precision": s.precision, "recall": s.recall, "mean matched IoU": s.mean_matched_iou}
        else:
            rows = {
                "IoU": metrics.iou(pred, truth),
                "Dice": metrics.dice(pred, truth),
                "boundary IoU": metrics.boundary_iou(pred, truth),
            }
    except ValueError as error:  # shapes or label values the metrics refuse
        raise ImageError(f"cannot compare {args.prediction} with {args.truth}: {error}") from error
    for name, value in rows.items():
        print(f"{name:<17} {value:.4f}")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    """Fine-tune a copy of the model on image/label folder pairs; write what changed as an adapter file."""
    if args.method == AUTO and args.budget is None:
        raise UsageError("method 'auto' searches within a time budget: give --budget SECONDS")
    if args.method == "sum" and args.unlabeled is None:
        raise UsageError("method 'sum' also learns from unlabeled images: give --unlabeled FOLDER")
    sources = [args.checkpoint] if args.checkpoint else []
    check_output(args.output, inputs=sources, overwrite=args.overwrite, option="--output")
    pairs = load_folder_pairs(args.images, args.labels)
    unlabeled = [read_image(path) for path in list_images(args.unlabeled, "unlabeled")] if args.unlabeled else []
    if args.unlabeled and not unlabeled:
        raise UsageError(f"unlabeled folder {args.unlabeled} has no image files: add images or leave --unlabeled out")
    data = prepare_training_data(
        [p.image for p in pairs],
        [p.labels for p in pairs],
        classes=args.classes,
        unlabeled=unlabeled,
        seed=args.seed,
        names=[f"image {p.name}" for p in pairs],
        all_objects_labeled=args.all_objects_labeled,
    )
    print(
        f"{len(pairs)} image(s): {len(data.train)} training and {len(data.validation)} validation plane(s), "
        f"{data.task}, classes {list(data.classes)}" + (f", {len(unlabeled)} unlabeled image(s)" if unlabeled else "")
    )
    config = TrainConfig(steps=args.steps, time_budget_s=args.budget, seed=args.seed)
    run = fine_tune(_load_model(args), data, args.method, config=config, cache_root=args.cache_dir)
    result, events = _train(run)
    if result.training.steps == 0:
        raise UsageError(
            f"no training step fitted in the budget of {args.budget:g} s ({result.training.stopped}); nothing was "
            "written: give a larger --budget"
        )
    save_adapter(result.adapter, args.output, fallback=cache_dir() / "unsaved adapters")
    losses = [loss for e in events if (loss := _headline_loss(e)) is not None]
    quarter = max(1, len(losses) // 4)
    training = result.training
    print(
        f"{result.adapter.method}: {training.steps} step(s) in {training.elapsed_s:.0f} s ({training.stopped})"
        + (f", loss {np.mean(losses[:quarter]):.4f} → {np.mean(losses[-quarter:]):.4f}" if losses else "")
    )
    print(f"validation score {events[0].validation:.4f} before → {training.best_validation:.4f} after (best kept)")
    print(f"adapter → {args.output}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Prompt-free labels for an image or every image of a folder: classes with learned prompts, else objects."""
    if args.input.is_dir() and not is_ome_zarr(args.input):
        inputs = list_images(args.input, "input")
        if not inputs:
            raise UsageError(f"input folder {args.input} has no image files")
        if args.out is None:
            raise UsageError(f"give --out FOLDER for the labels of the images in {args.input}")
        outputs = [args.out / f"{path.stem}{args.suffix}" for path in inputs]
    else:
        inputs, outputs = [args.input], [args.out]
    for image_path, out_path in zip(inputs, outputs):
        _check_labels_output(args, image_path, out_path, inputs)
    model = _load_model(args)
    if args.adapter is not None:
        adapter = load_adapter(args.adapter)
        if adapter.base_sha256 != model.weights_sha256:
            raise AdapterError(
                f"adapter {args.adapter} was fine-tuned from another base model ('{adapter.base_name}', weights "
                f"{adapter.base_sha256[:12]}…) than the loaded '{model.name}' ({model.weights_sha256[:12]}…): "
                "give the --model/--checkpoint it was fine-tuned from"
            )
        model = apply_adapter(model, adapter)
    if model.prompt_embeddings is not None:
        print(f"semantic labels of classes {list(model.classes)} from the learned prompts")
    else:
        print("instance labels: one id per object found from a grid of clicks")
    settings = InstanceSettings(
        points_per_side=args.points_per_side, min_score=args.min_score, min_stability=args.min_stability
    )
    for image_path, out_path in _progress(list(zip(inputs, outputs)), len(inputs), "images", unit="image"):
        segmenter = _segmenter(args, model, image_path)
        for _ in _progress(segmenter.encode(), segmenter.n_planes, f"encoding {image_path.name}"):
            pass
        job = segment_without_prompts(segmenter, settings)
        labels = _result_of(job, segmenter.n_planes, f"segmenting {image_path.name}")
        out_path = _save_labels(args, image_path, out_path, labels)
        found = len(np.unique(labels[labels > 0]))
        print(f"{image_path} → {out_path}: {found} label value(s)")
        if found == 0:
            hint = (
                "lower --min-score/--min-stability, or fine-tune"
                if model.prompt_embeddings is None
                else "the learned prompts found nothing: check the adapter on its training images"
            )
            print(f"samtune predict: warning: no object found in {image_path} ({hint})", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``samtune`` argument parser, one subparser per command."""
    parser = argparse.ArgumentParser(prog="samtune", description="Segment Anything for microscopy and medical images.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    model = argparse.ArgumentParser(add_help=False)
    model.add_argument(
        "--model", help=f"model name (see `samtune models`; default {BUNDLED_NAME}, or custom with --checkpoint)"
    )
    model.add_argument("--checkpoint", type=Path, help="checkpoint file: a SAM state dict or a samtune model file")
    model.add_argument("--device", help="cpu, cuda, mps… (default: the fastest available)")
    image = argparse.ArgumentParser(add_help=False)
    image.add_argument("--cache-dir", type=Path, help="embedding cache folder (default: the user cache folder)")
    image.add_argument("--channel-axis", type=int, help="axis holding channels, for multichannel images")
    image.add_argument(
        "--channel", default="mean", type=_channel, help="with --channel-axis: an index, 'mean' (default) or 'rgb'"
    )

    commands.add_parser("models", help="list the available models").set_defaults(run=cmd_models)
    cache = commands.add_parser("cache", help="show the embedding cache's size, or clear it")
    cache.add_argument("action", choices=["info", "clear"])
    cache.add_argument("--cache-dir", type=Path, help="embedding cache folder (default: the user cache folder)")
    cache.set_defaults(run=cmd_cache)
    encode = commands.add_parser("encode", parents=[model, image], help="precompute image embeddings (all planes)")
    encode.add_argument("images", nargs="+", metavar="IMAGE")
    encode.set_defaults(run=cmd_encode, interrupted="planes already encoded stay cached")
    segment = commands.add_parser("segment", parents=[model, image], help="segment objects from a prompt file")
    segment.add_argument("image", metavar="IMAGE")
    segment.add_argument(
        "--prompts", required=True, type=Path, help="CSV or JSON; columns object,kind,row,col[,row1,col1],label[,plane]"
    )
    segment.add_argument(
        "--out",
        type=Path,
        help="label image to write (.tif, or .png for 2D); default for an OME-Zarr image: its labels",
    )
    segment.add_argument("--labels-name", default=DEFAULT_LABELS_NAME, help="OME-Zarr labels name (default samtune)")
    segment.add_argument("--overwrite", action="store_true", help="replace --out if it exists (never an input)")
    segment.set_defaults(run=cmd_segment, interrupted="planes already encoded stay cached")
    evaluate = commands.add_parser("evaluate", help="score predicted labels against ground-truth labels")
    evaluate.add_argument("prediction", metavar="PRED_LABELS")
    evaluate.add_argument("truth", metavar="GT_LABELS")
    evaluate.add_argument(
        "--instances", action="store_true", help="match objects one to one (F1, mean matched IoU) instead of foreground"
    )
    evaluate.add_argument("--threshold", type=float, default=0.5, help="IoU for a match with --instances (default 0.5)")
    evaluate.set_defaults(run=cmd_evaluate)

    finetune = commands.add_parser(
        "finetune", parents=[model], help="fine-tune on image/label folder pairs and save an adapter file"
    )
    finetune.add_argument("images", type=Path, metavar="IMAGE_DIR", help="folder of images")
    finetune.add_argument(
        "labels", type=Path, metavar="LABEL_DIR", help="folder of label images named like the images (any suffix)"
    )
    finetune.add_argument("--output", required=True, type=Path, help="adapter file to write (e.g. nuclei.samtune)")
    finetune.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    finetune.add_argument(
        "--method",
        default="interactive",
        choices=[*METHODS, AUTO],
        help="interactive (prompted segmentation), blo (learned prompts: prompt-free), sum (+ --unlabeled), wesam "
        "(weak self-training from the labels' boxes), auto (searches within --budget); default interactive",
    )
    finetune.add_argument("--unlabeled", type=Path, metavar="DIR", help="folder of unlabeled images (for sum, auto)")
    finetune.add_argument("--budget", type=_positive(float), metavar="SECONDS", help="stop after this much time")
    finetune.add_argument("--steps", type=_positive(int), default=300, help="training steps (default 300)")
    finetune.add_argument("--seed", type=int, default=0, help="seed of the validation split and training (default 0)")
    finetune.add_argument(
        "--classes",
        type=_int_list,
        metavar="1,2,…",
        help="multi-class labels: the class values to learn (others count as background); default: inferred",
    )
    finetune.add_argument(
        "--all-objects-labeled",
        action="store_true",
        help="every object in the label images is labeled, so unlabeled pixels are background (default: labels may "
        "be partial; only labeled objects and the pixels right around them are known)",
    )
    finetune.add_argument("--cache-dir", type=Path, help="embedding cache folder (default: the user cache folder)")
    finetune.set_defaults(run=cmd_finetune, interrupted="nothing was written")

    predict = commands.add_parser(
        "predict", parents=[model, image], help="segment images without prompts (learned prompts, else every object)"
    )
    predict.add_argument("input", type=Path, metavar="IMAGE_OR_DIR")
    predict.add_argument(
        "--out",
        type=Path,
        help="label image to write, or a folder when IMAGE_OR_DIR is a folder; default for an OME-Zarr image: its "
        "labels group",
    )
    predict.add_argument("--labels-name", default=DEFAULT_LABELS_NAME, help="OME-Zarr labels name (default samtune)")
    predict.add_argument("--adapter", type=Path, help="adapter file from `samtune finetune` for this model")
    predict.add_argument("--overwrite", action="store_true", help="replace existing label files (never an input)")
    predict.add_argument("--suffix", default=".tif", help="label file type in an output folder (default .tif)")
    defaults = InstanceSettings()
    predict.add_argument(
        "--points-per-side",
        type=_positive(int),
        default=defaults.points_per_side,
        help=f"without learned prompts: clicks per side of the grid (default {defaults.points_per_side})",
    )
    predict.add_argument(
        "--min-score",
        type=float,
        default=defaults.min_score,
        help=f"without learned prompts: predicted IoU an object needs (default {defaults.min_score})",
    )
    predict.add_argument(
        "--min-stability",
        type=float,
        default=defaults.min_stability,
        help=f"without learned prompts: mask stability an object needs (default {defaults.min_stability})",
    )
    predict.set_defaults(run=cmd_predict, interrupted="label images already written are complete")
    return parser


def _channel(text: str) -> int | str:
    return int(text) if text.lstrip("-").isdigit() else text


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, e.g. 1,2,3; got {text!r}") from None


def _positive(kind: type) -> Callable[[str], int | float]:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def _show_warning(message: Warning | str, category: type, *args: object, **kwargs: object) -> None:
    print(f"samtune: warning: {message}", file=sys.stderr)  # one line, not Python's file:line: Category: form


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``samtune`` with ``argv`` (default: the process arguments); returns the exit code."""
    args = build_parser().parse_args(argv)
    # SIGTERM (kill, a job scheduler) ends a run like Ctrl-C: temporary files removed, nothing half-written.
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main_thread else None
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return args.run(args)
    except USER_ERRORS as error:
        print(f"samtune {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        done = getattr(args, "interrupted", None)
        print(f"samtune {args.command}: interrupted" + (f" ({done})" if done else ""), file=sys.stderr)
        return 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
