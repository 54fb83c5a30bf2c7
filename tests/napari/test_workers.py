"""workers.run_job: the same job in a thread (callbacks on the main thread) or synchronously."""

from __future__ import annotations

import threading
from functools import partial

import pytest

from napari_samtune._qt.workers import run_job


def job(fail: bool = False):
    yield {"stage": "working"}
    yield {"done": 1, "total": 2}
    if fail:
        raise ValueError("broken")
    yield {"done": 2, "total": 2}
    return "result"


def run_recording(fail: bool) -> tuple[list, object]:
    main, seen = threading.get_ident(), []

    def record(name):
        return lambda *args: seen.append((name, *args, threading.get_ident() == main))

    worker = run_job(
        partial(job, fail),
        description="test",
        on_yielded=record("yielded"),
        on_returned=record("returned"),
        on_error=lambda error: seen.append(("error", str(error), threading.get_ident() == main)),
        on_finished=record("finished"),
    )
    return seen, worker


@pytest.mark.parametrize("sync", [True, False])
def test_callbacks_run_on_the_main_thread_in_order(qtbot, monkeypatch, sync):
    monkeypatch.setenv("SAMTUNE_SYNC_WORKERS", "1" if sync else "0")
    seen, worker = run_recording(fail=False)
    assert (worker is None) == sync
    qtbot.waitUntil(lambda: bool(seen) and seen[-1][0] == "finished", timeout=5000)
    assert [s[0] for s in seen] == ["yielded"] * 3 + ["returned", "finished"]
    assert seen[3] == ("returned", "result", True)
    assert all(s[-1] for s in seen)


@pytest.mark.parametrize("sync", [True, False])
def test_an_error_reaches_on_error_then_on_finished(qtbot, monkeypatch, sync):
    monkeypatch.setenv("SAMTUNE_SYNC_WORKERS", "1" if sync else "0")
    seen, _ = run_recording(fail=True)
    qtbot.waitUntil(lambda: bool(seen) and seen[-1][0] == "finished", timeout=5000)
    assert [s[0] for s in seen] == ["yielded", "yielded", "error", "finished"]
    assert seen[2] == ("error", "broken", True)
