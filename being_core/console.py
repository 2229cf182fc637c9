"""Progress bars for the terminal (rich), fed by :class:`being_core.progress.Reporter` events."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from .progress import Reporter


class _RateColumn(ProgressColumn):
    """Units per second, e.g. ``212.4 frame/s``."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "it")
        return Text(f"{speed:,.1f} {unit}/s" if speed else f"- {unit}/s", style="progress.data.speed")


class RichReporter(Reporter):
    def __init__(self, console: Console):
        super().__init__()
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  _RateColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                                  TextColumn("{task.fields[note]}"),
                                  console=console, transient=False)
        self._tasks: dict[int, int] = {}
        self._closed: dict[int, int] = {}
        self._started = False

    def __enter__(self):
        return self  # the live display starts with the first task: a command that fails before prints nothing else

    def __exit__(self, *exc):
        if self._started:
            self._progress.stop()
        return False

    def on_start(self, task_id, description, total, unit):
        if not self._started:
            self._progress.start()
            self._started = True
        self._tasks[task_id] = self._progress.add_task(description, total=total, unit=unit, note="")

    def on_advance(self, task_id, n):
        if task_id in self._tasks:
            self._progress.advance(self._tasks[task_id], n)

    def on_note(self, task_id, text):
        if task_id in self._tasks:
            self._progress.update(self._tasks[task_id], note=text)

    def on_close(self, task_id):
        rich_id = self._tasks.pop(task_id, None)
        if rich_id is not None:
            task = next(t for t in self._progress.tasks if t.id == rich_id)
            if task.total is None:
                self._progress.update(rich_id, total=task.completed)
            self._progress.stop_task(rich_id)
            self._closed[task_id] = rich_id

    def on_forget(self, task_id):
        rich_id = self._closed.pop(task_id, None)
        if rich_id is not None:
            self._progress.remove_task(rich_id)


def print_table(console, title: str, columns: list[str], rows: list[list[str]]) -> None:
    """A rich table on a terminal; plain aligned rows (never cut) when piped, so grep and files see it all."""
    if console.is_terminal:
        from rich.table import Table

        table = Table(title=title)
        for col in columns:
            table.add_column(col)
        for row in rows:
            table.add_row(*row)
        console.print(table)
        return
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)]
    for row in [columns, *rows]:
        line = "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
        console.out(line, highlight=False)
