"""Progress bars for long work (bench sweeps, uploads): one rich bar, advanced by a callback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

Tick = Callable[[str], None]


@contextmanager
def bar(total: int, description: str = "") -> Iterator[Tick]:
    """A bar of ``total`` steps; each call of the yielded function advances it and names the step."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description:<36}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=False) as progress:
        task_id = progress.add_task(description, total=total)

        def tick(what: str) -> None:
            progress.update(task_id, advance=1, description=what)

        yield tick
