"""``samtune finetune``: fine-tune a copy of a model on image/label folders and write an adapter file."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..core.datasets import list_images, load_folder_pairs
from ..core.io import check_output, read_image
from ..core.jobs import drive
from ..core.models.registry import cache_dir
from ..core.training import distributed
from ..core.training.adapters import save_adapter
from ..core.training.data import prepare_training_data
from ..core.training.fine_tune import AUTO, METHODS, fine_tune
from ..core.training.loop import TrainConfig, TrainEvent, headline_loss
from ..core.training.methods import FineTuneResult
from .common import UsageError, int_list, load_args_model, positive


def add_commands(commands: argparse._SubParsersAction, model: argparse.ArgumentParser) -> None:
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
    finetune.add_argument("--budget", type=positive(float), metavar="SECONDS", help="stop after this much time")
    finetune.add_argument("--steps", type=positive(int), default=300, help="training steps (default 300)")
    finetune.add_argument("--seed", type=int, default=0, help="seed of the validation split and training (default 0)")
    finetune.add_argument(
        "--classes",
        type=int_list,
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
    finetune.add_argument(
        "--nproc",
        type=positive(int),
        default=1,
        help="train in N processes on this machine (one per GPU), re-launched through torchrun (docs/scaling.md)",
    )
    finetune.set_defaults(run=cmd_finetune, interrupted="nothing was written")


def _train(run: Iterator[TrainEvent]) -> tuple[FineTuneResult, list[TrainEvent]]:
    """Run ``fine_tune``'s generator under a tqdm bar (step/total, loss, validation); returns its result and events."""
    from tqdm import tqdm

    events: list[TrainEvent] = []
    with tqdm(desc="fine-tuning", unit="step", disable=None, leave=False) as bar:

        def show(event: TrainEvent) -> None:
            events.append(event)
            bar.total, bar.n = event.total, event.step  # the automatic search revises its total as it goes
            loss, best = headline_loss(event.losses), event.best
            parts = [f"loss {loss:.3g}"] if loss is not None else []
            parts += [f"validation best {best:.3f}"] if best is not None else []
            bar.set_postfix_str(", ".join(parts), refresh=False)
            bar.refresh()

        return drive(run, show), events


def cmd_finetune(args: argparse.Namespace) -> int:
    """Fine-tune a copy of the model on image/label folder pairs; write what changed as an adapter file."""
    if args.nproc > 1 and not distributed.launched_by_torchrun():
        return distributed.relaunch_with_torchrun(args.nproc, args.argv)
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
    group = distributed.init_from_env(device=args.device) if distributed.launched_by_torchrun() else None
    if group is None:
        run = fine_tune(load_args_model(args), data, args.method, config=config, cache_root=args.cache_dir)
    else:  # one of several processes (torchrun): its share of the data on its device; rank 0 saves
        args.device = str(group.device)
        run = distributed.distributed_fine_tune(
            load_args_model(args), data, group, args.method, config=config, cache_root=args.cache_dir
        )
    result, events = _train(run)
    if group is not None and not group.is_main:
        return 0
    if result.training.steps == 0:
        raise UsageError(
            f"no training step fitted in the budget of {args.budget:g} s ({result.training.stopped}); nothing was "
            "written: give a larger --budget"
        )
    save_adapter(result.adapter, args.output, fallback=cache_dir() / "unsaved adapters")
    losses = [loss for e in events if (loss := headline_loss(e.losses)) is not None]
    quarter = max(1, len(losses) // 4)
    training = result.training
    print(
        f"{result.adapter.method}: {training.steps} step(s) in {training.elapsed_s:.0f} s ({training.stopped})"
        + (f", loss {np.mean(losses[:quarter]):.4f} → {np.mean(losses[-quarter:]):.4f}" if losses else "")
    )
    print(f"validation score {events[0].validation:.4f} before → {training.best_validation:.4f} after (best kept)")
    print(f"adapter → {args.output}")
    return 0
