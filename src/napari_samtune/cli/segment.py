"""``samtune encode``, ``samtune segment`` and ``samtune evaluate``: embeddings, objects from a prompt file, scores."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..core import metrics
from ..core.image import ImageError
from ..core.io import read_image
from ..core.omezarr import DEFAULT_LABELS_NAME
from ..core.prompt_files import check_fits, label_ids, paint_prompts, read_prompts
from .common import args_segmenter, check_labels_output, load_args_model, progress, save_labels


def add_commands(
    commands: argparse._SubParsersAction, model: argparse.ArgumentParser, image: argparse.ArgumentParser
) -> None:
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


def cmd_encode(args: argparse.Namespace) -> int:
    """Compute (or find cached) the embeddings of every plane of each image."""
    model = load_args_model(args)
    for image_path in args.images:
        segmenter = args_segmenter(args, model, image_path)
        events = list(progress(segmenter.encode(), segmenter.n_planes, Path(image_path).name))
        cached = sum(e["cached"] for e in events)
        where = segmenter.store.path or "memory only (see the warning)"
        print(f"{image_path}: {len(events)} plane(s) ready ({cached} already cached) in {where}")
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    """One label id per object of a prompt file, written as a label image the size of the input."""
    check_labels_output(args, Path(args.image), args.out, [args.image, args.prompts])
    prompts = read_prompts(args.prompts)
    segmenter = args_segmenter(args, load_args_model(args), args.image)
    check_fits(prompts, segmenter.n_planes, segmenter.plane_shape)
    planes = sorted({p.plane for p in prompts})
    for _ in progress(segmenter.encode(planes), len(planes), "encoding"):
        pass
    ids = label_ids(prompts)
    labels = np.zeros((segmenter.n_planes, *segmenter.plane_shape), np.uint32)
    for _ in progress(paint_prompts(segmenter, prompts, labels), len(planes), "segmenting"):
        pass
    out = save_labels(args, Path(args.image), args.out, labels if segmenter.store.volume.is_stack else labels[0])
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
