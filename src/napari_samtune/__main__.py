"""``samtune`` and ``python -m napari_samtune``: start the command line.

Importing torch and the core takes seconds; a Ctrl-C meanwhile ends with a one-line message and exit code 130, like
a Ctrl-C later on, instead of an import traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``samtune`` with ``argv`` (default: the process arguments); returns the exit code."""
    try:
        from .cli import main as run
    except KeyboardInterrupt:
        print("samtune: interrupted while starting (nothing was done)", file=sys.stderr)
        return 130
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
