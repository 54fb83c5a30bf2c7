"""``samtune predict``: prompt-free labels for an image or a folder (learned prompts, else every object)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ..core.automatic import InstanceSettings, segment_without_prompts
from ..core.datasets import list_images
from ..core.omezarr import DEFAULT_LABELS_NAME, is_ome_zarr
from ..core.training.adapters import AdapterError, apply_adapter, load_adapter
from . import blocks
from .common import (
    UsageError,
    args_segmenter,
    check_labels_output,
    load_args_model,
    positive,
    progress,
    result_of,
    save_labels,
)


def add_commands(
    commands: argparse._SubParsersAction, model: argparse.ArgumentParser, image: argparse.ArgumentParser
) -> None:
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
        type=positive(int),
        default=defaults.points_per_side,
        help=f"without learned prompts: clicks per side of the grid (default {defaults.points_per_side})",
    )
    predict.add_argument(
        "--min-score",
        type=float,
        default=defaults.min_score,
        help="without learned prompts: predicted IoU an object needs (default: the model's calibrated value)",
    )
    predict.add_argument(
        "--min-stability",
        type=float,
        default=defaults.min_stability,
        help="without learned prompts: mask stability an object needs (default: the model's calibrated value)",
    )
    blocks.add_options(predict)
    predict.set_defaults(run=cmd_predict, interrupted="label images already written are complete")


def cmd_predict(args: argparse.Namespace) -> int:
    """Prompt-free labels for an image or every image of a folder: classes with learned prompts, else objects."""
    if blocks.wants_block_wise(args.input, args.block):
        return blocks.predict_block_wise(args)
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
        check_labels_output(args, image_path, out_path, inputs)
    model = load_args_model(args)
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
    for image_path, out_path in progress(list(zip(inputs, outputs)), len(inputs), "images", unit="image"):
        segmenter = args_segmenter(args, model, image_path)
        for _ in progress(segmenter.encode(), segmenter.n_planes, f"encoding {image_path.name}"):
            pass
        job = segment_without_prompts(segmenter, settings)
        labels = result_of(job, segmenter.n_planes, f"segmenting {image_path.name}")
        out_path = save_labels(args, image_path, out_path, labels)
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
