"""Widget tests: jobs run synchronously, caches go to a temporary folder, and a tiny random model stands in for SAM."""

from __future__ import annotations

import pytest
from napari.utils.notifications import NotificationSeverity, notification_manager

from napari_samtune._qt.prompt_widget import PromptWidget
from tests.core.conftest import make_model

WIDGET = "Segment with prompts"


@pytest.fixture(autouse=True)
def _sync_workers_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMTUNE_SYNC_WORKERS", "1")
    monkeypatch.setenv("SAMTUNE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SAMTUNE_DEVICE", "cpu")


@pytest.fixture
def errors() -> list[str]:
    """The messages of the error notifications shown during the test."""
    seen: list[str] = []

    def record(notification) -> None:
        if notification.severity == NotificationSeverity.ERROR:
            seen.append(str(notification.message))

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)


def open_prompt_widget(viewer, model=None) -> PromptWidget:
    """The prompt widget docked through the plugin manifest, using ``model`` (default: the tiny random one)."""
    _, widget = viewer.window.add_plugin_dock_widget("napari-samtune", WIDGET)
    widget.set_model(model or make_model())
    return widget
