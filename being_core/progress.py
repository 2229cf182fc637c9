"""Progress reporting that crosses process and container boundaries.

Stages never print. They open tasks on a :class:`Reporter`; the CLI turns those into progress bars,
a subprocess or container turns them into JSON lines on stdout that the parent runner replays.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, TypeVar

T = TypeVar("T")


class Task:
    """One long step: ``advance()`` as units are done, ``close()`` at the end (or use ``with``)."""

    def __init__(self, reporter: Reporter, task_id: int):
        self._reporter, self.id = reporter, task_id

    def advance(self, n: int = 1) -> None:
        self._reporter.on_advance(self.id, n)

    def note(self, text: str) -> None:
        """Show a short status next to the bar (e.g. ``loss 0.031 PSNR 28.4 dB``)."""
        self._reporter.on_note(self.id, text)

    def close(self) -> None:
        self._reporter.on_close(self.id)

    def __enter__(self) -> Task:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Reporter:
    """Receives progress events. The base class ignores them (``--quiet`` and library use)."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)

    def task(self, description: str, total: int | None = None, unit: str = "it") -> Task:
        task_id = next(self._ids)
        self.on_start(task_id, description, total, unit)
        return Task(self, task_id)

    def track(self, items: Iterable[T], description: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
        """Iterate ``items`` while advancing one task per item."""
        if total is None and hasattr(items, "__len__"):
            total = len(items)  # type: ignore[arg-type]
        with self.task(description, total, unit) as task:
            for item in items:
                yield item
                task.advance()

    def on_start(self, task_id: int, description: str, total: int | None, unit: str) -> None:
        pass

    def on_advance(self, task_id: int, n: int) -> None:
        pass

    def on_note(self, task_id: int, text: str) -> None:
        pass

    def on_close(self, task_id: int) -> None:
        pass

    def on_forget(self, task_id: int) -> None:
        """A closed task need not be shown any more (a display may drop it)."""


class PrefixReporter(Reporter):
    """Shows its tasks on another reporter, each description prefixed (``being batch``: one subject's steps);
    with ``transient`` a finished task leaves the display."""

    def __init__(self, target: Reporter, prefix: str, transient: bool = False):
        super().__init__()
        self._target, self._prefix, self._transient = target, prefix, transient
        self._tasks: dict[int, Task] = {}

    def on_start(self, task_id, description, total, unit):
        self._tasks[task_id] = self._target.task(f"{self._prefix}{description}", total, unit)

    def on_advance(self, task_id, n):
        if task_id in self._tasks:
            self._tasks[task_id].advance(n)

    def on_note(self, task_id, text):
        if task_id in self._tasks:
            self._tasks[task_id].note(text)

    def on_close(self, task_id):
        if task_id in self._tasks:
            task = self._tasks.pop(task_id)
            task.close()
            if self._transient:
                self._target.on_forget(task.id)


class JsonLinesReporter(Reporter):
    """Writes events as JSON lines (``{"event": "progress", ...}``), throttled, for a parent process to replay."""

    def __init__(self, stream: IO[str] | None = None, interval_s: float = 0.2):
        super().__init__()
        self._stream = stream or sys.stdout
        self._interval = interval_s
        self._pending: dict[int, int] = {}
        self._last = 0.0

    def _emit(self, **event) -> None:
        self._stream.write(json.dumps({"event": "progress", **event}) + "\n")
        self._stream.flush()

    def on_start(self, task_id, description, total, unit):
        self._emit(op="start", id=task_id, description=description, total=total, unit=unit)

    def on_advance(self, task_id, n):
        self._pending[task_id] = self._pending.get(task_id, 0) + n
        now = time.monotonic()
        if now - self._last >= self._interval:
            self._flush()
            self._last = now

    def _flush(self) -> None:
        for task_id, n in self._pending.items():
            if n:
                self._emit(op="advance", id=task_id, n=n)
        self._pending.clear()

    def on_note(self, task_id, text):
        self._flush()
        self._emit(op="note", id=task_id, text=text)

    def on_close(self, task_id):
        self._flush()
        self._emit(op="close", id=task_id)


def replay(line: str, target: Reporter, tasks: dict[int, Task]) -> bool:
    """Feed one line from a child's stdout into ``target``. Returns False when it is not a progress event."""
    try:
        event = json.loads(line)
    except ValueError:
        return False
    if not isinstance(event, dict) or event.get("event") != "progress":
        return False
    op, task_id = event.get("op"), event.get("id")
    if not isinstance(task_id, int):
        return True  # a progress event without a task: nothing to show
    if op == "start":
        tasks[task_id] = target.task(event.get("description", ""), event.get("total"), event.get("unit", "it"))
    elif op == "advance" and task_id in tasks:
        tasks[task_id].advance(int(event.get("n", 1)))
    elif op == "note" and task_id in tasks:
        tasks[task_id].note(str(event.get("text", "")))
    elif op == "close" and task_id in tasks:
        tasks.pop(task_id).close()
    return True
