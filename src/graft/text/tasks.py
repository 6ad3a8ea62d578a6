"""Several labels per text: a table's label columns as tasks (multi-task text, and multi-label text as
one yes/no task per label).

``graft train texts.csv --labels columns --tasks topic:classification,urgent:no/yes,stars:regression``
reads the text column and one column per task; an empty cell is a missing label (that task's loss
ignores the text). A row whose value is not a valid label is skipped with its ``file:line``. The split is
the multi-task one (:func:`graft.multitask.tasks.group_split`): identical texts stay on one side, and
copies with different labels are reported.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from graft.errors import ConfigError, DataError
from graft.multitask.tasks import MultiTaskDataset, Task, assemble, labelled_items, resolve_tasks
from graft.text.data import read_rows, text_digest

COLUMNS = "columns"  # --labels value: the labels are the data table's own columns


def read_text_tasks(
    location: str | os.PathLike, tasks: Sequence[Task] | str | None, text_column: str | None = None
) -> tuple[list[Task], list[tuple[str, list[float]]], list[dict[str, str]]]:
    """``(tasks, [(text, labels)], skipped)`` from one table, a column per task."""
    path = Path(location)
    if not path.is_file():
        raise DataError(
            f"'{location}' is not a table file: several tasks per text are read from one CSV, TSV or JSON Lines file",
            hint="one file with a text column and a column per task",
        )
    chosen = resolve_tasks(tasks)
    skipped: list[dict[str, str]] = []
    rows, texts = [], {}
    for text, values, line, _ in read_rows(path, text_column, [task.name for task in chosen], skipped):
        if not text.strip():
            skipped.append({"file": line, "reason": "empty text"})
            continue
        rows.append((line, values))  # keyed by file:line, so a row that does not encode is named by its line
        texts[line] = text
    chosen, items = labelled_items(chosen, rows, skipped, allow_missing=True)
    items = [(texts[line], labels) for line, labels in items]
    return chosen, items, skipped


def scan_text_tasks(
    location: str | os.PathLike,
    labels: str,
    tasks: str | Sequence[str] | None,
    valid_fraction: float,
    test_fraction: float,
    seed: int,
    limit: int | None = None,
    *,
    text_column: str | None = None,
) -> MultiTaskDataset:
    """The texts of one table with a label per task, split train/valid/test (identical texts together)."""
    if labels != COLUMNS:
        raise ConfigError(
            f"--labels '{labels}' does not apply to text: a text's labels are columns of its table",
            hint=f"write --labels {COLUMNS} --tasks NAME:classification,... (one column per task)",
        )
    chosen, items, skipped = read_text_tasks(location, tasks, text_column)
    source = {"kind": COLUMNS, "file": str(location), "text_column": text_column}
    digests = {text: text_digest(text) for text, _ in items}
    return assemble(location, source, chosen, items, skipped, digests, (valid_fraction, test_fraction), seed, limit)
