"""Progress bars on stderr (rich); silent with -q or when there is nothing to show."""

from __future__ import annotations

import contextlib

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

stderr = Console(stderr=True)


@contextlib.contextmanager
def progress_callback(enabled: bool = True):
    """Yield a callback `cb(event, label, n)` with events start/advance/stop (or None when disabled)."""
    if not enabled:
        yield None
        return
    prog = Progress(TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=stderr, transient=False)
    tasks: dict[str, int] = {}

    def cb(event: str, label: str, n: int):
        if event == "start":
            tasks[label] = prog.add_task(label, total=max(n, 1))
        elif event == "advance" and label in tasks:
            prog.advance(tasks[label], n)
        elif event == "stop" and label in tasks:
            t = tasks[label]
            prog.update(t, completed=prog.tasks[t].total)

    with prog:
        yield cb
