"""Event connections and key bindings that a widget makes on the viewer and its layers, undone with the widget.

Layers and the viewer can outlive a dock widget (the user closes the dock, keeps the layers); a callback left behind
would then touch deleted Qt objects.
"""

from __future__ import annotations

from collections.abc import Callable

from napari.layers import Layer
from napari.utils.events import EventEmitter


class Connections:
    """Viewer and layer events and layer key bindings made for one widget; ``close`` undoes them all.

    Connect ``close`` to the widget's ``destroyed`` signal.
    """

    def __init__(self) -> None:
        self._events: list[tuple[EventEmitter, Callable]] = []
        self._keys: list[tuple[Layer, str]] = []

    def listen(self, emitter: EventEmitter, callback: Callable) -> None:
        """Connect ``callback`` to ``emitter`` (once, however often this is called)."""
        if (emitter, callback) not in self._events:
            emitter.connect(callback)
            self._events.append((emitter, callback))

    def bind_key(self, layer: Layer, key: str, callback: Callable[[Layer], None]) -> None:
        """Bind ``key`` on ``layer`` to ``callback`` (called with the layer), replacing an earlier binding."""
        layer.bind_key(key, callback, overwrite=True)
        if (layer, key) not in self._keys:
            self._keys.append((layer, key))

    def close(self) -> None:
        for emitter, callback in self._events:
            emitter.disconnect(callback)
        for layer, key in self._keys:
            layer.bind_key(key, None)
        self._events, self._keys = [], []
