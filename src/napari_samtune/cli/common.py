"""What the ``samtune`` commands share: the model and image options, loading them, progress bars, label outputs."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Generator, Iterable
from pathlib import Path
from typing import TypeVar

import numpy as np

from ..core.errors import SamtuneError
from ..core.io import check_output, read_image, write_labels
from ..core.jobs import drive
from ..core.models.registry import BUNDLED_NAME, SamModel, load_model
from ..core.omezarr import is_ome_zarr, labels_path, read_ome_zarr, write_ome_zarr_labels
from ..core.segmenter import Segmenter

T = TypeVar("T")


class UsageError(SamtuneError, ValueError):
    """Options that do not go together; the message says which and what to give instead."""


def model_and_image_options() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """Parent parsers: the model options (--model, --checkpoint, --device) and the image options."""
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
        "--channel",
        default="mean",
        type=channel_option,
        help="with --channel-axis: an index, 'mean' (default) or 'rgb'",
    )

    return model, image


def progress(events: Iterable, total: int, desc: str, unit: str = "plane") -> Iterable:
    """tqdm over a core progress generator (hidden when stderr is not a terminal)."""
    from tqdm import tqdm

    return tqdm(events, total=total, desc=desc, unit=unit, disable=None, leave=False)


def result_of(job: Generator[object, None, T], total: int, desc: str) -> T:
    """Run a core progress generator under a tqdm bar, one tick per event; returns the generator's return value."""
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit="plane", disable=None, leave=False) as bar:
        return drive(job, lambda _event: bar.update())


def load_args_model(args: argparse.Namespace) -> SamModel:
    name = args.model or ("custom" if args.checkpoint else BUNDLED_NAME)
    return load_model(name, checkpoint=args.checkpoint, device=args.device)


def args_segmenter(args: argparse.Namespace, model: SamModel, image_path: str) -> Segmenter:
    segmenter = Segmenter(model, cache_root=args.cache_dir)
    if is_ome_zarr(image_path):  # its full-resolution level; the channel axis is in its metadata
        image = read_ome_zarr(image_path)
        channel_axis = image.channel_axis if args.channel_axis is None else args.channel_axis
        segmenter.set_image(image.data, channel_axis=channel_axis, channel=args.channel)
    else:
        segmenter.set_image(read_image(image_path), channel_axis=args.channel_axis, channel=args.channel)
    return segmenter


def check_labels_output(args: argparse.Namespace, image: Path, out: Path | None, inputs: list) -> None:
    """Refuse an output before any work: ``out``, or without it the labels group of an OME-Zarr ``image``."""
    if out is not None:
        check_output(out, inputs=inputs, overwrite=args.overwrite)
    elif is_ome_zarr(image):
        labels_path(image, args.labels_name, overwrite=args.overwrite)
    else:
        raise UsageError(f"give --out: only an OME-Zarr image (.zarr) can hold its labels itself, not {image}")


def save_labels(args: argparse.Namespace, image: Path, out: Path | None, labels: np.ndarray) -> Path:
    if out is None:
        return write_ome_zarr_labels(image, labels, args.labels_name, overwrite=args.overwrite)
    return write_labels(out, labels)


def channel_option(text: str) -> int | str:
    return int(text) if text.lstrip("-").isdigit() else text


def int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, e.g. 1,2,3; got {text!r}") from None


def positive(kind: type) -> Callable[[str], int | float]:
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
