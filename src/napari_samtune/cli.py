"""The ``samtune`` command line: list models, precompute embeddings, segment from a prompt file, score a result.

Each subcommand is a thin layer over ``napari_samtune.core`` (the same ``Segmenter`` the napari widgets use), so
the command line and the GUI give the same masks. Problems with the user's input (a model, image, prompt file or
cache that cannot be used) end with exit code 2 and a one-line message, without a traceback.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .core import metrics
from .core.embeddings import CacheError
from .core.image import ImageError
from .core.io import atomic_write
from .core.models.registry import (
    BUNDLED_NAME,
    MODEL_SOURCES,
    ModelError,
    SamModel,
    available_models,
    cache_dir,
    load_model,
)
from .core.predictor import PromptError
from .core.prompt_files import check_fits, label_ids, read_prompts
from .core.segmenter import Segmenter

USER_ERRORS = (ModelError, ImageError, PromptError, CacheError)
TIFF_SUFFIXES = (".tif", ".tiff")


def read_image(path: str | Path) -> np.ndarray:
    """An image file as an array: TIFF via tifffile (all pages, so stacks stay 3D), anything else via imageio."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image file {path} does not exist")
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            return tifffile.imread(path)
        import imageio.v3 as iio

        return iio.imread(path)
    except Exception as error:  # each reader raises its own types for unreadable or unsupported files
        raise ImageError(f"cannot read image {path}: {error}") from error


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


def _progress(events: Iterable, total: int, desc: str) -> Iterable:
    """tqdm over a core progress generator (hidden when stderr is not a terminal)."""
    from tqdm import tqdm

    return tqdm(events, total=total, desc=desc, unit="plane", disable=None, leave=False)


def _load_model(args: argparse.Namespace) -> SamModel:
    name = args.model or ("custom" if args.checkpoint else BUNDLED_NAME)
    return load_model(name, checkpoint=args.checkpoint, device=args.device)


def _segmenter(args: argparse.Namespace, model: SamModel, image_path: str) -> Segmenter:
    segmenter = Segmenter(model, cache_root=args.cache_dir)
    segmenter.set_image(read_image(image_path), channel_axis=args.channel_axis, channel=args.channel)
    return segmenter


def cmd_models(args: argparse.Namespace) -> int:
    """Print the model names ``--model`` accepts."""
    for name in available_models():
        if name == BUNDLED_NAME:
            where = "bundled with the package, works offline"
        elif (cache_dir() / "checkpoints" / MODEL_SOURCES[name].filename).is_file():
            where = "official SAM, downloaded"
        else:
            where = "official SAM, downloaded on first use"
        print(f"{name:<14} {where}")
    print(f"{'custom':<14} any SAM state dict or samtune model file, with --checkpoint PATH")
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    """Compute (or find cached) the embeddings of every plane of each image."""
    model = _load_model(args)
    for image_path in args.images:
        segmenter = _segmenter(args, model, image_path)
        events = list(_progress(segmenter.encode(), segmenter.n_planes, Path(image_path).name))
        cached = sum(e["cached"] for e in events)
        print(f"{image_path}: {len(events)} plane(s) ready ({cached} already cached) in {segmenter.store.path}")
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    """One label id per object of a prompt file, written as a label image the size of the input."""
    prompts = read_prompts(args.prompts)
    segmenter = _segmenter(args, _load_model(args), args.image)
    check_fits(prompts, segmenter.n_planes, segmenter.plane_shape)
    planes = sorted({p.plane for p in prompts})
    for _ in _progress(segmenter.encode(planes), len(planes), "encoding"):
        pass
    ids = label_ids(prompts)
    labels = np.zeros((segmenter.n_planes, *segmenter.plane_shape), np.uint32)
    for plane in _progress(planes, len(planes), "segmenting"):
        on_plane = [p for p in prompts if p.plane == plane]
        masks = segmenter.segment([p.prompt for p in on_plane], plane).masks
        for p, mask in zip(on_plane, masks):
            labels[plane][mask] = ids[p.name]  # later objects paint over earlier ones, as in masks_to_labels
    write_labels(args.out, labels if segmenter.store.volume.is_stack else labels[0])
    print(f"{len(ids)} object(s) on {len(planes)} plane(s) → {args.out}")
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
    encode = commands.add_parser("encode", parents=[model, image], help="precompute image embeddings (all planes)")
    encode.add_argument("images", nargs="+", metavar="IMAGE")
    encode.set_defaults(run=cmd_encode)
    segment = commands.add_parser("segment", parents=[model, image], help="segment objects from a prompt file")
    segment.add_argument("image", metavar="IMAGE")
    segment.add_argument(
        "--prompts", required=True, type=Path, help="CSV or JSON; columns object,kind,row,col[,row1,col1],label[,plane]"
    )
    segment.add_argument("--out", required=True, type=Path, help="label image to write (.tif, or .png for 2D)")
    segment.set_defaults(run=cmd_segment)
    evaluate = commands.add_parser("evaluate", help="score predicted labels against ground-truth labels")
    evaluate.add_argument("prediction", metavar="PRED_LABELS")
    evaluate.add_argument("truth", metavar="GT_LABELS")
    evaluate.add_argument(
        "--instances", action="store_true", help="match objects one to one (F1, mean matched IoU) instead of foreground"
    )
    evaluate.add_argument("--threshold", type=float, default=0.5, help="IoU for a match with --instances (default 0.5)")
    evaluate.set_defaults(run=cmd_evaluate)
    return parser


def _channel(text: str) -> int | str:
    return int(text) if text.lstrip("-").isdigit() else text


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``samtune`` with ``argv`` (default: the process arguments); returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except USER_ERRORS as error:
        print(f"samtune {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"samtune {args.command}: interrupted (planes already encoded stay cached)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
