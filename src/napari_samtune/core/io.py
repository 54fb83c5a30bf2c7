"""Reading images and writing results without ever losing the user's data.

Writes are atomic (a file is either the old one or the complete new one, never half-written) and get the user's
usual permissions. ``check_output`` refuses, before any work is done, an output that would replace an input or an
existing file (unless asked to), or that cannot be written at all; ``write_or_keep`` keeps a result that was expensive
to make in a fallback folder when its destination fails at the last moment.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .errors import SamtuneError
from .image import ImageError

TIFF_SUFFIXES = (".tif", ".tiff")


class OutputError(SamtuneError, ValueError):
    """An output path that must not or cannot be written; the message names it and what to do."""


def _umask() -> int:
    # /proc tells without changing anything; os.umask can only be read by setting it (racy with other threads).
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(handle)`` on a temporary file beside ``path``, then rename it onto ``path``.

    The file gets the permissions a plainly created file would have (``0o666`` less the umask), not the temporary
    file's private ``0o600``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_torch_save(obj: object, path: str | os.PathLike) -> Path:
    import torch

    return atomic_write(path, lambda handle: torch.save(obj, handle))


def check_output(
    path: str | os.PathLike,
    *,
    inputs: Iterable[str | os.PathLike] = (),
    overwrite: bool = False,
    option: str = "--out",
) -> Path:
    """Refuse, before any work, an output file that cannot or must not be written; returns it as a ``Path``.

    Refused: no file-type suffix, an existing folder, one of ``inputs`` (never replaced, even with ``overwrite``), an
    existing file unless ``overwrite``, and a folder where no file can be created. ``option`` names the setting in
    the messages.
    """
    path = Path(path)
    if not path.suffix:
        raise OutputError(f"{option} {path} has no file type suffix: add one, e.g. {path.name}.tif")
    if path.is_dir():
        raise OutputError(f"{option} {path} is a folder: give a file name inside it")
    for source in inputs:
        if _same_file(path, Path(source)):
            raise OutputError(
                f"{option} {path} is the input file {source}: writing there would destroy it; choose another name"
            )
    if path.exists() and not overwrite:
        raise OutputError(f"{option} {path} already exists: choose another name, or add --overwrite to replace it")
    check_writable(path.parent, option)
    return path


def check_writable(folder: str | os.PathLike, option: str = "output") -> None:
    """Raise ``OutputError`` unless a file can be created in ``folder`` (created if missing)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".samtune-probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise OutputError(
            f"cannot write into {folder} ({error.strerror or error}): choose a writable place for {option}"
        ) from error


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def write_or_keep(path: str | os.PathLike, write: Callable[[BinaryIO], None], fallback: str | os.PathLike) -> Path:
    """``atomic_write`` to ``path``; if that fails, write to the folder ``fallback`` (else the temporary folder) and
    raise ``OutputError`` saying where the result was kept. A result that cannot be written anywhere re-raises."""
    path = Path(path)
    try:
        return atomic_write(path, write)
    except OSError as error:
        reason = error.strerror or str(error)
        for folder in (Path(fallback), Path(tempfile.gettempdir())):
            try:
                kept = atomic_write(_free_name(folder / path.name), write)
            except OSError:
                continue
            raise OutputError(
                f"could not write {path} ({reason}); the result was kept at {kept}: move it where you want it"
            ) from error
        raise


def _free_name(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        n += 1
    return candidate


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as an array: TIFF via tifffile (all pages, so stacks stay 3D), anything else via imageio.

    Raises ``ImageError`` naming the file for a missing path, a folder, an empty file or content that is not an image.
    """
    path = Path(path)
    if path.is_dir():
        raise ImageError(f"{path} is a folder, not an image file")
    if not path.is_file():
        raise ImageError(f"image file {path} does not exist")
    if path.stat().st_size == 0:
        raise ImageError(f"image file {path} is empty (0 bytes)")
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            return tifffile.imread(path)
        import imageio.v3 as iio

        return np.asarray(iio.imread(path))
    except Exception as error:  # each reader raises its own types for unreadable or unsupported files
        reason = str(error).splitlines()[0] if str(error).strip() else type(error).__name__
        if "plugin" in reason.lower() or "could not find a backend" in reason.lower():
            reason = f"not a valid {path.suffix or 'image'} file (damaged, truncated or another format)"
        raise ImageError(f"cannot read image {path}: {reason}") from error


def write_labels(path: str | os.PathLike, labels: np.ndarray) -> Path:
    """Write a label image (TIFF, stacks too, or any format imageio writes, e.g. PNG for 2D) atomically, as uint16
    when the ids fit; returns the path. Raises ``ImageError`` when the format cannot hold it."""
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
    return path
