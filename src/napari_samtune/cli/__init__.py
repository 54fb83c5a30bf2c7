"""The ``samtune`` command line: list models, precompute embeddings, segment from a prompt file, fine-tune on image
and label folders, segment without prompts, score a result.

Each subcommand is a thin layer over ``napari_samtune.core`` (the same ``Segmenter`` and ``fine_tune`` the napari
widgets use), so the command line and the GUI give the same results; one module per command group (``info``,
``segment``, ``finetune``, ``predict``; shared options in ``common``). Problems with the user's input (any
``SamtuneError``: a model, image, folder, prompt file, adapter or cache that cannot be used) end with exit code 2 and
a one-line message, without a traceback; Ctrl-C ends with exit code 130 and leaves no half-written file.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import warnings
from collections.abc import Sequence

from ..core.errors import SamtuneError
from . import export, finetune, info, predict, segment
from .common import UsageError, model_and_image_options

__all__ = ["UsageError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``samtune`` argument parser, one subparser per command (each command group adds its own)."""
    parser = argparse.ArgumentParser(prog="samtune", description="Segment Anything for microscopy and medical images.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    model, image = model_and_image_options()
    info.add_commands(commands)
    segment.add_commands(commands, model, image)
    finetune.add_commands(commands, model)
    predict.add_commands(commands, model, image)
    export.add_commands(commands)
    return parser


def _show_warning(message: Warning | str, category: type, *args: object, **kwargs: object) -> None:
    print(f"samtune: warning: {message}", file=sys.stderr)  # one line, not Python's file:line: Category: form


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``samtune`` with ``argv`` (default: the process arguments); returns the exit code."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what a re-launch (finetune --nproc) passes on
    # SIGTERM (kill, a job scheduler) ends a run like Ctrl-C: temporary files removed, nothing half-written.
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main_thread else None
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return args.run(args)
    except SamtuneError as error:
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
