"""Driving long work written as a generator (encoding, training, propagating, prompt-free segmentation).

A job yields progress events and returns its result; the command line, napari's workers, scripts and tests all run
it. ``drive`` is the plain loop for callers that want the result and, optionally, to see each event.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, TypeVar

T = TypeVar("T")


def drive(job: Generator[Any, Any, T], on_event: Callable[[Any], None] | None = None) -> T:
    """Run ``job`` to its end, handing each yielded event to ``on_event``; returns the job's return value."""
    while True:
        try:
            event = next(job)
        except StopIteration as stop:
            return stop.value
        if on_event is not None:
            on_event(event)


def relay(job: Generator[Any, Any, T], transform: Callable[[Any], Any]) -> Generator[Any, None, T]:
    """A job that yields ``transform(event)`` for each event of ``job`` and returns ``job``'s return value (to
    re-label a job's progress for another caller)."""
    result: list[T] = []

    def capture() -> Generator[Any, Any, None]:
        result.append((yield from job))

    for event in capture():
        yield transform(event)
    return result[0]
