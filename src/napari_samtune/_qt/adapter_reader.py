"""Drag-and-drop of ``.samtune`` adapter files: the adapter becomes the model of 'Segment with prompts'.

An adapter is not image data, so the reader adds no layer: it checks the file, makes it the model choice of the
prompt widget (docking one if none is open) and says in a notification what the adapter is. It returns napari's
"read, no layers" value ``[(None,)]``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

ADAPTER_SUFFIX = ".samtune"
PLUGIN, PROMPT_WIDGET = "napari-samtune", "Segment with prompts"


def get_adapter_reader(path: str | list[str]) -> Callable | None:
    """npe2 reader hook: a reader for one ``.samtune`` file, else None (napari then asks other readers)."""
    paths = [path] if isinstance(path, str) else list(path)
    if len(paths) != 1 or Path(paths[0]).suffix.lower() != ADAPTER_SUFFIX or not Path(paths[0]).is_file():
        return None
    return read_adapter


def read_adapter(path: str | list[str]) -> list[tuple]:
    """Use the adapter file at ``path`` as the model of the current viewer's prompt widget; no layers.

    Raises ``AdapterError`` (shown by napari) for a file that is not a usable adapter.
    """
    from napari.utils.notifications import show_info

    import napari

    from ..core.training.adapters import load_adapter
    from .model_choice import ADAPTER_FILE

    path = Path(path if isinstance(path, str) else path[0])
    adapter = load_adapter(path)  # refuse a damaged or foreign file before touching the widget
    viewer = napari.current_viewer()
    if viewer is None:
        return [(None,)]
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, PROMPT_WIDGET)
    widget.model.value = ADAPTER_FILE
    widget.adapter.value = path
    show_info(f"{path.name} is now the model of '{PROMPT_WIDGET}': {describe(adapter)}")
    return [(None,)]


def describe(adapter) -> str:
    """One line on an adapter: method, base model, classes, validation score."""
    what = f"{adapter.method} adapter of {adapter.base_name}"
    if adapter.prompt_embeddings is not None:
        what += f", prompt-free for class(es) {list(adapter.classes)}"
    score = adapter.metrics.get("best_validation")
    return what + (f", validation score {score:.3f}" if isinstance(score, int | float) else "")
