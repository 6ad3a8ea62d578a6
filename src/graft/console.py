"""One output layer, the Unix way: results on stdout (human-readable, or one JSON document with
``--json``), progress, logs and errors on stderr, so ``> file`` and ``| grep`` get the results."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

stderr = Console(stderr=True)
# Results: no line breaks of Rich's own (a piped stdout has no width; a terminal wraps long lines itself).
stdout = Console(soft_wrap=True, highlight=False)


def emit_line(text: str) -> None:
    """One plain result line on stdout (tabs kept, no markup): what ``cut`` and ``grep`` read."""
    sys.stdout.write(text + "\n")


def printable(obj: Any) -> Any:
    """``obj`` with every string made valid UTF-8: a file name's undecodable bytes (Python's lone
    surrogates) become ``\\xNN`` escapes, reversible with ``codecs.decode(name, "unicode_escape")``-style
    tools, instead of surrogates that strict JSON readers reject."""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
            return obj
        except UnicodeEncodeError:
            return obj.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if isinstance(obj, dict):
        return {printable(key): printable(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [printable(value) for value in obj]
    return obj


def emit_json(obj: Any) -> None:
    """The only thing a ``--json`` command writes to stdout (valid UTF-8, whatever the file names)."""
    sys.stdout.write(json.dumps(printable(obj), indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def progress(quiet: bool = False) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=stderr,
        disable=quiet,
        transient=False,
    )


def table(title: str, columns: Iterable[str], rows: Iterable[Iterable[Any]]) -> Table:
    result = Table(title=title, title_justify="left")
    for column in columns:
        result.add_column(column)
    for row in rows:
        result.add_row(*(str(cell) for cell in row))
    return result


@contextmanager
def progress_task(progress: Progress | None, description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A bar on ``progress`` (None: no bar) for the block, removed when it ends; yields ``advance(count)``."""
    if progress is None:
        yield lambda count: None
        return
    task = progress.add_task(description, total=total, status="")
    try:
        yield lambda count: progress.advance(task, count)
    finally:
        progress.remove_task(task)
