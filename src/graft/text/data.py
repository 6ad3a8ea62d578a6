"""Labelled texts: a table (CSV, TSV or JSON Lines with a text and a label column) or a folder of class
folders of ``.txt`` files, either one of them whole (then a seeded, stratified train/valid split) or
split already (``train``/``valid``/``test`` files or folders).

An example's key is its text: runs record the texts themselves (``manifest.json``), so a run folder is
whole without the data, and the activation cache keys rows by the text's hash. Nothing is dropped
silently: a record that cannot be used is listed in ``skipped`` with its file and line and the reason.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from graft.core.config import TABLE_SUFFIXES
from graft.core.dataset import Dataset
from graft.errors import DataError, raise_or_record

TEXT_SUFFIX = ".txt"
SPLITS = {"train": ("train", "training"), "valid": ("valid", "val", "validation", "dev"), "test": ("test", "testing")}
DEFAULT_TEXT_COLUMN = "text"
DEFAULT_LABEL_COLUMN = "label"
IGNORED_NAMES = {"README.md", "README.txt", "LICENSE", "LICENSE.txt", "SOURCE.md"}
csv.field_size_limit(1 << 24)  # a long review is one field; the default 128 kB limit would reject it


@dataclass
class Record:
    """One labelled text and where it came from (``file:line``)."""

    text: str
    label: str
    where: str
    lines: int = 1  # physical lines the record spans (a quoted field may hold line breaks)


@dataclass
class TextDataset(Dataset):
    """A :class:`~graft.core.dataset.Dataset` whose items are ``(text, class index)``; ``where`` gives each
    text's first ``file:line`` (for messages)."""

    where: dict[str, str] = field(default_factory=dict)

    def digest(self, path: str) -> str:  # the item is the text: its hash keys the activation cache
        return text_digest(path)

    def manifest(self) -> dict[str, Any]:
        return {**super().manifest(), "modality": "text", "where": self.where}

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> TextDataset:
        """The texts a run was trained on (the manifest holds them: no file needs to be there still)."""
        return cls(
            root=manifest["root"],
            layout=manifest["layout"],
            classes=list(manifest["classes"]),
            splits={
                name: [(str(text), int(label)) for text, label in items] for name, items in manifest["splits"].items()
            },
            skipped=list(manifest["skipped"]),
            warnings=list(manifest["warnings"]),
            where=dict(manifest.get("where", {})),
        )


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def normalised(text: str) -> str:
    """The text as duplicates are compared: Unicode NFKC, case-folded, punctuation and extra spaces gone."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(re.sub(r"[^\w\s]", " ", folded).split())


def is_text_data(location: str | os.PathLike | None) -> bool:
    """Whether ``location`` holds labelled text: a table file, a folder with table files per split, or a
    folder whose files below are ``.txt``."""
    if location is None:
        return False
    path = Path(location)
    if path.is_file():
        return path.suffix.lower() in TABLE_SUFFIXES
    if not path.is_dir():
        return False
    if _split_tables(path):
        return True
    suffixes = [p.suffix.lower() for p in path.rglob("*") if p.is_file() and p.name not in IGNORED_NAMES]
    return bool(suffixes) and sum(s == TEXT_SUFFIX for s in suffixes) > len(suffixes) / 2


def _split_tables(folder: Path) -> dict[str, Path]:
    found = {}
    for split, names in SPLITS.items():
        for name in names:
            for suffix in TABLE_SUFFIXES:
                if (folder / f"{name}{suffix}").is_file():
                    found.setdefault(split, folder / f"{name}{suffix}")
    return found


def _split_folders(folder: Path) -> dict[str, Path]:
    found = {}
    for split, names in SPLITS.items():
        for name in names:
            if (folder / name).is_dir():
                found.setdefault(split, folder / name)
    return found


def read_lines(path: Path, skipped: list[dict[str, str]]) -> list[str]:
    """The file's lines, decoded as UTF-8 (a byte-order mark is dropped); a line that is not UTF-8 is
    listed in ``skipped`` and read as empty, so line numbers stay right."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DataError(f"cannot read '{path}': {error.strerror or error}") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    lines = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        try:
            lines.append(line.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError as error:
            skipped.append(
                {
                    "file": f"{path}:{number}",
                    "reason": f"not UTF-8 text (byte 0x{line[error.start]:02x} at column "
                    f"{error.start + 1}): record skipped",
                }
            )
            lines.append("\x00")  # a marker no real text holds: the record on this line is skipped
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def read_table(
    path: Path, text_column: str | None, label_column: str | None, skipped: list[dict[str, str]]
) -> list[Record]:
    """Labelled records of a CSV, TSV or JSON Lines file; unusable records go to ``skipped`` with their line."""
    label_column = label_column or DEFAULT_LABEL_COLUMN
    return [
        Record(text, values[label_column].strip(), where, lines)
        for text, values, where, lines in read_rows(path, text_column, [label_column], skipped)
    ]


def read_rows(
    path: Path, text_column: str | None, columns: Sequence[str], skipped: list[dict[str, str]]
) -> list[tuple[str, dict[str, str], str, int]]:
    """``(text, {column: value}, "file:line", physical lines)`` for every row of a CSV, TSV or JSON Lines file
    (a value may be empty); rows that cannot be read go to ``skipped`` with their line."""
    text_column = text_column or DEFAULT_TEXT_COLUMN
    lines = read_lines(path, skipped)
    if path.suffix.lower() == ".jsonl":
        return _read_jsonl(path, lines, text_column, columns, skipped)
    reader = csv.reader(lines, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"'{path}' is empty (a header row naming the columns is expected)") from None
    header = [name.strip() for name in header]
    for role, name in (("text", text_column), *(("label", column) for column in columns)):
        if name not in header:
            raise DataError(
                f"'{path}' has no column '{name}' (its columns: {', '.join(repr(h) for h in header)})",
                hint="name the text column with --text-column"
                if role == "text"
                else "name the label column with --label-column (several tasks: --tasks, one per column)",
            )
    text_at, at = header.index(text_column), {column: header.index(column) for column in columns}
    rows, first = [], 2
    try:
        for row in reader:
            where = f"{path}:{first}"
            first = reader.line_num + 1
            if any("\x00" in cell for cell in row):
                continue  # not UTF-8: already listed
            if len(row) != len(header):
                skipped.append({"file": where, "reason": f"{len(row)} fields where the header has {len(header)}"})
                continue
            spans = reader.line_num - int(where.rsplit(":", 1)[1]) + 1
            rows.append((row[text_at], {column: row[i] for column, i in at.items()}, where, spans))
    except csv.Error as error:
        raise DataError(f"'{path}' line {reader.line_num}: {error}") from None
    return rows


def _read_jsonl(
    path: Path, lines: list[str], text_column: str, columns: Sequence[str], skipped: list[dict[str, str]]
) -> list[tuple[str, dict[str, str], str, int]]:
    rows = []
    keys = " and ".join(f"'{name}'" for name in (text_column, *columns))
    for number, line in enumerate(lines, start=1):
        where = f"{path}:{number}"
        if not line.strip() or "\x00" in line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            skipped.append({"file": where, "reason": f"not JSON ({error.msg} at column {error.colno})"})
            continue
        if not isinstance(row, dict) or any(name not in row for name in (text_column, *columns)):
            skipped.append({"file": where, "reason": f"no {keys} keys"})
            continue
        text, values = row[text_column], [row[column] for column in columns]
        if not isinstance(text, str) or any(isinstance(v, (dict, list)) or v is None for v in values):
            skipped.append({"file": where, "reason": f"'{text_column}' must be a string and the labels values"})
            continue
        rows.append((text, {column: str(value) for column, value in zip(columns, values)}, where, 1))
    return rows


def read_class_folders(folder: Path, skipped: list[dict[str, str]]) -> list[Record]:
    """One record per ``.txt`` file in ``folder/<class>/``; other files are listed in ``skipped``."""
    records = []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(class_dir.rglob("*")):
            if not path.is_file() or path.name.startswith("."):
                continue
            if path.suffix.lower() != TEXT_SUFFIX:
                skipped.append({"file": str(path), "reason": f"not a .txt file ({path.suffix or 'no extension'})"})
                continue
            lines = read_lines(path, skipped)
            if any("\x00" in line for line in lines):
                continue
            records.append(Record("\n".join(lines), class_dir.name, f"{path}:1"))
    return records


def _usable(records: list[Record], skipped: list[dict[str, str]]) -> list[Record]:
    kept = []
    for record in records:
        if not record.text.strip():
            skipped.append({"file": record.where, "reason": "empty text"})
        elif not record.label:
            skipped.append({"file": record.where, "reason": "no label"})
        else:
            kept.append(record)
    return kept


def read_location(
    location: str | os.PathLike, text_column: str | None = None, label_column: str | None = None
) -> tuple[dict[str, list[Record]], list[dict[str, str]], str]:
    """Records per given split (``{"all": ...}`` when the data is not split yet), what was skipped, and the layout."""
    path = Path(location)
    skipped: list[dict[str, str]] = []
    if path.is_file():
        return {"all": _usable(read_table(path, text_column, label_column, skipped), skipped)}, skipped, "table"
    if not path.is_dir():
        raise DataError(f"'{location}' does not exist")
    tables = _split_tables(path)
    if tables:
        if "train" not in tables:
            raise DataError(f"'{location}' has {', '.join(p.name for p in tables.values())} but no train file")
        found = {
            name: _usable(read_table(p, text_column, label_column, skipped), skipped) for name, p in tables.items()
        }
        return found, skipped, "split tables"
    if text_column is not None or label_column is not None:
        raise DataError(
            f"'{location}' is a folder of class folders: --text-column and --label-column only apply to tables"
        )
    folders = _split_folders(path)
    if folders:
        if "train" not in folders:
            raise DataError(f"'{location}' has {', '.join(p.name for p in folders.values())} but no train folder")
        return (
            {name: _usable(read_class_folders(p, skipped), skipped) for name, p in folders.items()},
            skipped,
            "split class folders",
        )
    return {"all": _usable(read_class_folders(path, skipped), skipped)}, skipped, "class folders"


def scan_texts(
    location: str | os.PathLike,
    *,
    valid_fraction: float,
    seed: int,
    text_column: str | None = None,
    label_column: str | None = None,
    errors: list[str] | None = None,
) -> TextDataset:
    """The labelled texts at ``location`` as a :class:`TextDataset`, split train/valid(/test). Texts that
    are the same after :func:`normalised` stay on one side of a split graft makes; duplicates across
    given splits, and one text under two labels, are warned about (naming the lines)."""
    found, skipped, layout = read_location(location, text_column, label_column)
    classes = sorted({record.label for records in found.values() for record in records})
    if len(classes) < 2:
        raise_or_record(
            DataError(
                f"'{location}' has {len(classes)} label(s) ({', '.join(classes) or 'none'}); a classifier needs at "
                "least 2",
                hint="check the label column (--label-column) or the class folders",
            ),
            errors,
        )
    index = {name: i for i, name in enumerate(classes)}
    if "all" in found:
        splits = _split(found.pop("all"), valid_fraction, seed, location, errors)
        layout = f"{layout}, stratified split (valid {valid_fraction:.0%}, seed {seed})"
    else:
        if "valid" not in found:
            found["train"], found["valid"] = _split(found["train"], valid_fraction, seed, location, errors).values()
            layout = f"{layout}, valid split from train"
        splits = found
    where: dict[str, str] = {}
    for records in splits.values():
        for record in records:
            where.setdefault(record.text, record.where)
    return TextDataset(
        root=str(location),
        layout=layout,
        classes=classes,
        splits={name: [(r.text, index[r.label]) for r in records] for name, records in splits.items()},
        skipped=skipped,
        warnings=duplicate_warnings(splits) + _long_records(splits),
        where=where,
    )


def _split(
    records: list[Record], fraction: float, seed: int, location, errors: list[str] | None
) -> dict[str, list[Record]]:
    """Seeded split, stratified by label, of groups of texts equal after :func:`normalised` (a duplicate
    on both sides would leak)."""
    groups: dict[str, list[Record]] = {}
    for record in records:
        groups.setdefault(normalised(record.text), []).append(record)
    keys = list(groups)
    labels = [groups[key][0].label for key in keys]
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    few = sorted(label for label, count in counts.items() if count < 2)
    if few:
        raise_or_record(
            DataError(
                f"label(s) {', '.join(repr(f) for f in few)} in '{location}' have fewer than 2 distinct texts; a "
                "train/valid split needs at least 2 per label",
                hint="add texts, drop the label, or give a valid split (valid.csv or a valid/ folder)",
            ),
            errors,
        )
        return {"train": records, "valid": []}
    rng = np.random.default_rng(seed)
    valid_keys: set[str] = set()
    for label in sorted(counts):
        members = [key for key, group_label in zip(keys, labels) if group_label == label]
        take = min(len(members) - 1, max(1, round(len(members) * fraction)))
        valid_keys.update(members[i] for i in rng.permutation(len(members))[:take])
    return {
        "train": [r for key in keys if key not in valid_keys for r in groups[key]],
        "valid": [r for key in keys if key in valid_keys for r in groups[key]],
    }


# A quoted field may hold a few line breaks; one spanning more usually means an unbalanced quote merged records.
MAX_RECORD_LINES = 10


def _long_records(splits: dict[str, list[Record]]) -> list[dict[str, str]]:
    return [
        {
            "file": record.where,
            "message": f"one record spans {record.lines} lines: an unbalanced quote may have merged several records",
        }
        for records in splits.values()
        for record in records
        if record.lines > MAX_RECORD_LINES
    ]


def duplicate_warnings(splits: dict[str, list[Record]]) -> list[dict[str, str]]:
    """Texts in two splits (exactly, or after :func:`normalised`: leakage) and texts under two labels."""
    first: dict[str, tuple[str, Record]] = {}
    found = []
    for split, records in splits.items():
        for record in records:
            key = normalised(record.text)
            if key not in first:
                first[key] = (split, record)
                continue
            other_split, other = first[key]
            how = "the same text" if other.text == record.text else "the same text after normalisation"
            if other_split != split:
                found.append(
                    {"file": record.where, "message": f"{how} as {other.where} ({other_split}): it leaks into {split}"}
                )
            if other.label != record.label:
                found.append(
                    {
                        "file": record.where,
                        "message": f"{how} as {other.where} but labelled '{record.label}', not '{other.label}' "
                        "(label noise)",
                    }
                )
    return found


def scan_for_evaluation(
    location: str, classes: Sequence[str], text_column: str | None = None, label_column: str | None = None
) -> tuple[list[tuple[str, int]], list[dict[str, str]], str]:
    """Labelled texts to evaluate a run on: the test split if the data has one (else valid), or all of a
    table; a label the run does not know is skipped with its line."""
    found, skipped, _ = read_location(location, text_column, label_column)
    split = next(name for name in ("test", "valid", "all", "train") if name in found)
    items = []
    for record in found[split]:
        if record.label in classes:
            items.append((record.text, list(classes).index(record.label)))
        else:
            skipped.append({"file": record.where, "reason": f"label '{record.label}' is not one the run knows"})
    if not items:
        raise DataError(f"'{location}' has no texts with labels the run knows ({', '.join(classes)})")
    return items, skipped, f"{location} ({split})" if split != "all" else str(location)


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """Texts to predict: a table's text column, a ``.txt`` file's text, a folder's ``.txt`` files, or the
    argument itself when it is not an existing path."""
    texts: list[str] = []
    for given in inputs:
        path = Path(given)
        skipped: list[dict[str, str]] = []
        kind = _path_kind(path)
        if kind == "file" and path.suffix.lower() in TABLE_SUFFIXES:
            texts.extend(_texts_of_table(path, skipped))
        elif kind == "file":
            texts.append("\n".join(read_lines(path, skipped)))
        elif kind == "folder":
            texts.extend("\n".join(read_lines(p, skipped)) for p in sorted(path.rglob("*.txt")) if p.is_file())
        else:
            texts.append(str(given))
        if skipped:
            raise DataError(f"{skipped[0]['file']}: {skipped[0]['reason']}")
    return texts


def _path_kind(path: Path) -> str | None:
    """``file``, ``folder`` or None (no such path; a text longer than a file name can be is never one)."""
    try:
        return "file" if path.is_file() else "folder" if path.is_dir() else None
    except (OSError, ValueError):
        return None


def _texts_of_table(path: Path, skipped: list[dict[str, str]]) -> list[str]:
    lines = read_lines(path, skipped)
    if path.suffix.lower() == ".jsonl":
        return [str(json.loads(line).get(DEFAULT_TEXT_COLUMN, "")) for line in lines if line.strip()]
    reader = csv.DictReader(lines, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    if reader.fieldnames is None or DEFAULT_TEXT_COLUMN not in reader.fieldnames:
        raise DataError(f"'{path}' has no column '{DEFAULT_TEXT_COLUMN}' to predict")
    return [row[DEFAULT_TEXT_COLUMN] for row in reader]
