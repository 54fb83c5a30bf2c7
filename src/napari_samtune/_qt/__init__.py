"""The napari widgets (Qt). Each widget reads layers, calls ``napari_samtune.core`` and writes layers back."""

from __future__ import annotations

import sys
from pathlib import Path


def llvm_loaded() -> bool:
    """Whether a shared LLVM library is mapped into this process (Linux; False where that cannot be read)."""
    try:
        return "libLLVM" in Path("/proc/self/maps").read_text()
    except OSError:
        return False


def keep_triton_out() -> bool:
    """Make ``import triton`` fail in this process when it would crash it; returns whether it did.

    Why: the first import of torch's optional compiler stack (``torch._dynamo``, pulled in by ``segment_anything``
    through torchvision) loads triton, whose LLVM clashes with the one Mesa's OpenGL (llvmpipe, radeonsi) has loaded
    for napari's canvas: napari died with a segmentation fault when a SAM tune widget was opened. SAM tune never
    compiles kernels, and torch treats an unimportable triton as absent.
    """
    if "triton" in sys.modules or not llvm_loaded():
        return False
    sys.modules["triton"] = None  # type: ignore[assignment]
    return True


keep_triton_out()
