"""``samtune export``: a BLO adapter as a BioImage.IO model package that other tools run without samtune."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.io import check_output, read_image
from ..core.models.registry import SamModel, available_models, load_model
from ..core.training.adapters import Adapter, load_adapter
from .common import UsageError


def add_commands(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser("export", help="export a BLO adapter as a BioImage.IO model package (prompt-free)")
    export.add_argument("adapter", type=Path, metavar="ADAPTER", help="adapter file made by BLO prompt learning")
    export.add_argument("--model", help="the adapter's base model by name (default: the name the adapter records)")
    export.add_argument("--checkpoint", type=Path, help="the base model's checkpoint file, if it was loaded from one")
    export.add_argument("--bioimageio", type=Path, required=True, metavar="OUT.zip", help="package to write")
    export.add_argument(
        "--test-image",
        type=Path,
        help="image whose centre crop (the model input size) is the package's test image (default: synthetic nuclei)",
    )
    export.add_argument("--rgb", action="store_true", help="the model takes RGB images (default: grey)")
    export.add_argument("--name", help="model name in the package")
    export.add_argument("--author", action="append", help="author name (repeat for several; default napari-samtune)")
    export.add_argument("--license", default="BSD-3-Clause", help="SPDX license of the package (default BSD-3-Clause)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing package")
    export.set_defaults(run=cmd_export, interrupted="no package written")


def cmd_export(args: argparse.Namespace) -> int:
    """Write the BioImage.IO package of a BLO adapter on its base model."""
    from ..core.export.bioimageio import export_bioimageio

    if args.bioimageio.suffix != ".zip":
        raise UsageError(f"--bioimageio needs a .zip file name (a BioImage.IO package), got {args.bioimageio}")
    check_output(args.bioimageio, inputs=[args.adapter], overwrite=args.overwrite, option="--bioimageio")
    adapter = load_adapter(args.adapter)
    test_image = None if args.test_image is None else read_image(args.test_image)
    exported = export_bioimageio(
        load_base_model(args, adapter),
        adapter,
        args.bioimageio,
        test_image=test_image,
        rgb=args.rgb,
        name=args.name,
        authors=tuple(args.author or ("napari-samtune",)),
        license=args.license,
    )
    print(
        f"{args.adapter} → {exported.path} ({exported.size_bytes / 1e6:.1f} MB): input {exported.input_size} x "
        f"{exported.input_size}, probabilities of background and classes {list(exported.classes)}"
    )
    return 0


def load_base_model(args: argparse.Namespace, adapter: Adapter) -> SamModel:
    """The model the adapter was fine-tuned from (on the CPU, where the export traces it): --model/--checkpoint when
    given, else its name in the adapter."""
    if args.model or args.checkpoint:
        return load_model(args.model or "custom", checkpoint=args.checkpoint, device="cpu")
    if adapter.base_name not in available_models():
        raise UsageError(
            f"adapter {args.adapter} was fine-tuned from '{adapter.base_name}' loaded from a checkpoint file: give "
            "that file with --checkpoint"
        )
    return load_model(adapter.base_name, device="cpu")
