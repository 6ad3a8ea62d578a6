"""Several label sets per image: task specs, label sources (file-name patterns, CSV), duplicate-aware splits.

A *task* is a named label: ``classification`` (with class names) or ``regression`` (a number).
Labels come from a file-name pattern (a regular expression with one named group per task, or the
``utkface`` preset: ``AGE_GENDER_RACE_DATETIME.jpg.chip.jpg``) or from a CSV with a file column and
one column per task. A file whose name or row does not parse, or whose value is not a valid label, is
listed in the manifest's ``skipped`` with the reason, never guessed. An empty CSV cell is a *missing*
label (that task's loss ignores the image), which is also how multi-domain data is stored: each
domain is a task whose labels exist only on that domain's images.

Splits group byte-identical files (same sha256) so a copy never lands on both sides, and report
copies that carry different labels.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from graft.errors import ConfigError, DataError
from graft.fileio import KnownDigests, sha256_file

TASK_KINDS = ("classification", "regression")
SPLITS = ("train", "valid", "test")
FILE_COLUMNS = ("file", "filename", "image", "path")


@dataclass(frozen=True)
class Task:
    """One label set. ``classes`` index a classification task's values (value ``i`` or the name itself)."""

    name: str
    kind: str
    classes: tuple[str, ...] = ()

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]*", self.name):
            raise ConfigError(f"task name '{self.name}' must be letters, digits, '_' or '-'")
        if self.kind not in TASK_KINDS:
            raise ConfigError(f"task '{self.name}': kind must be one of {', '.join(TASK_KINDS)}; got '{self.kind}'")
        if self.kind == "regression" and self.classes:
            raise ConfigError(f"task '{self.name}' is a regression task and cannot have class names")

    @property
    def is_classification(self) -> bool:
        return self.kind == "classification"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "classes": list(self.classes)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Task:
        unknown = set(data) - {"name", "kind", "classes"}
        if unknown:
            raise ConfigError(f"task spec has unknown keys {sorted(unknown)}")
        return cls(name=data["name"], kind=data["kind"], classes=tuple(data.get("classes", ())))

    def encode(self, raw: str) -> float:
        """The stored label for ``raw``: a class index or a number. Raises ``ValueError`` when it is not valid."""
        raw = raw.strip()
        if self.kind == "regression":
            try:
                value = float(raw)
            except ValueError:
                raise ValueError(f"{self.name} value '{raw}' is not a number") from None
            if not math.isfinite(value):
                raise ValueError(f"{self.name} value '{raw}' is not a finite number")
            return value
        if raw in self.classes:
            return float(self.classes.index(raw))
        if re.fullmatch(r"\d+", raw) and int(raw) < len(self.classes):
            return float(int(raw))
        raise ValueError(
            f"{self.name} value '{raw}' is not one of {len(self.classes)} classes ({', '.join(self.classes)}) nor an "
            f"index below {len(self.classes)}"
        )


UTKFACE_TASKS = (
    Task("age", "regression"),
    Task("gender", "classification", ("male", "female")),
    Task("race", "classification", ("White", "Black", "Asian", "Indian", "Others")),
)
PRESETS: dict[str, tuple[str, tuple[Task, ...]]] = {
    "utkface": (r"(?P<age>\d+)_(?P<gender>\d+)_(?P<race>\d+)_(?P<datetime>\d+)\.jpg\.chip\.jpg", UTKFACE_TASKS),
}


def parse_tasks(spec: str | Sequence[str] | None, known: Sequence[Task] = ()) -> list[Task]:
    """Tasks from ``"age:regression,gender:male/female,race"``.

    ``name`` alone takes the preset's definition; ``name:regression``; ``name:classification`` (class
    names read from the data, sorted); ``name:a/b/c`` (class names in index order).
    """
    by_name = {task.name: task for task in known}
    items = [part.strip() for part in (spec.split(",") if isinstance(spec, str) else (spec or [])) if part.strip()]
    if not items:
        if known:
            return list(known)
        raise ConfigError(
            "--tasks is required with a CSV or pattern label source",
            hint="e.g. --tasks age:regression,gender:male/female",
        )
    tasks = []
    for item in items:
        name, _, kind = item.partition(":")
        name, kind = name.strip(), kind.strip()
        if not kind:
            if name not in by_name:
                raise ConfigError(
                    f"--tasks: '{name}' has no type and the label source does not define it",
                    hint=f"write {name}:regression, {name}:classification or {name}:classA/classB"
                    + (f"; known: {', '.join(by_name)}" if by_name else ""),
                )
            tasks.append(by_name[name])
        elif kind in ("regression", "reg"):
            tasks.append(Task(name, "regression"))
        elif kind in ("classification", "cls"):
            tasks.append(Task(name, "classification"))
        else:
            classes = tuple(c.strip() for c in kind.split("/"))
            if len(classes) < 2 or not all(classes) or len(set(classes)) != len(classes):
                raise ConfigError(f"--tasks: '{item}' needs at least two distinct class names separated by '/'")
            tasks.append(Task(name, "classification", classes))
    names = [task.name for task in tasks]
    if len(set(names)) != len(names):
        raise ConfigError(f"--tasks names a task twice: {', '.join(names)}")
    return tasks


@dataclass
class MultiTaskDataset(KnownDigests):
    """Images with one label per task (NaN = missing), split into train/valid/test, plus what was skipped."""

    root: str
    source: dict[str, Any]
    tasks: list[Task]
    splits: dict[str, list[tuple[str, list[float]]]]
    skipped: list[dict[str, str]] = field(default_factory=list)
    duplicates: dict[str, Any] = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)  # content hash by path (keys the activation cache)

    def split(self, name: str) -> list[tuple[str, list[float]]]:
        return self.splits.get(name, [])

    def counts(self) -> dict[str, int]:
        return {name: len(items) for name, items in self.splits.items()}

    def manifest(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "labels": self.source,
            "tasks": [task.to_dict() for task in self.tasks],
            "counts": self.counts(),
            "splits": {
                name: [[path, [None if math.isnan(v) else v for v in labels]] for path, labels in items]
                for name, items in self.splits.items()
            },
            "skipped": self.skipped,
            "duplicates": self.duplicates,
        }


def read_labels(
    root: str | os.PathLike, labels: str, tasks: Sequence[Task] | str | None = None
) -> tuple[list[Task], list[tuple[str, list[float]]], list[dict[str, str]], dict[str, Any]]:
    """Read every labelled image under ``root``: ``(tasks, items, skipped, source)``.

    ``labels``: a preset name (``utkface``), a ``.csv`` file, or ``re:REGEX`` with named groups.
    """
    root_path = Path(root)
    if not root_path.is_dir():
        raise DataError(f"data folder '{root}' does not exist or is not a folder")
    if labels in PRESETS:
        pattern, known = PRESETS[labels]
        chosen = resolve_tasks(tasks, known)
        return (*_from_pattern(root_path, pattern, chosen), {"kind": "preset", "name": labels, "pattern": pattern})
    if labels.startswith("re:"):
        pattern = labels[3:]
        try:
            compiled = re.compile(pattern)
        except re.error as error:
            raise ConfigError(f"--labels: '{pattern}' is not a valid regular expression: {error}") from None
        chosen = resolve_tasks(tasks)
        missing = [t.name for t in chosen if t.name not in compiled.groupindex]
        if missing:
            raise ConfigError(
                f"--labels pattern has no named group for task(s) {', '.join(missing)}",
                hint="write (?P<age>\\d+) for a task named age",
            )
        return (*_from_pattern(root_path, pattern, chosen), {"kind": "pattern", "pattern": pattern})
    csv_path = Path(labels)
    if csv_path.suffix.lower() == ".csv":
        if not csv_path.is_file():
            raise DataError(f"labels file '{labels}' does not exist")
        chosen = resolve_tasks(tasks)
        return (*_from_csv(root_path, csv_path, chosen), {"kind": "csv", "file": str(csv_path)})
    raise ConfigError(
        f"--labels '{labels}' is not a preset, a .csv file or re:PATTERN", hint=f"presets: {', '.join(PRESETS)}"
    )


def resolve_tasks(tasks, known: Sequence[Task] = ()) -> list[Task]:
    if tasks and not isinstance(tasks, str) and all(isinstance(t, Task) for t in tasks):
        return list(tasks)
    return parse_tasks(tasks, known)


def _from_pattern(root: Path, pattern: str, tasks: list[Task]):
    compiled = re.compile(pattern)
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    raw_rows, skipped = [], []
    for path in files:
        match = compiled.fullmatch(path.name)
        if match is None:
            skipped.append({"file": str(path), "reason": "file name does not match the label pattern"})
            continue
        raw_rows.append((str(path), {t.name: match.group(t.name) for t in tasks}))
    return (*labelled_items(tasks, raw_rows, skipped, allow_missing=False), skipped)


def _from_csv(root: Path, csv_path: Path, tasks: list[Task]):
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        file_column = next((c for c in FILE_COLUMNS if c in columns), None)
        if file_column is None:
            raise DataError(
                f"'{csv_path}' has no file column (one of {', '.join(FILE_COLUMNS)}); its columns: {', '.join(columns)}"
            )
        missing = [t.name for t in tasks if t.name not in columns]
        if missing:
            raise DataError(
                f"'{csv_path}' has no column for task(s) {', '.join(missing)}; its columns: {', '.join(columns)}"
            )
        raw_rows, skipped = [], []
        for line, row in enumerate(reader, start=2):
            name = (row.get(file_column) or "").strip()
            path = root / name
            if not name or not path.is_file():
                skipped.append(
                    {"file": str(path) if name else f"{csv_path}:{line}", "reason": f"row {line}: image file not found"}
                )
                continue
            raw_rows.append((str(path), {t.name: (row.get(t.name) or "") for t in tasks}))
    return (*labelled_items(tasks, raw_rows, skipped, allow_missing=True), skipped)


def labelled_items(
    tasks: list[Task], rows, skipped: list[dict[str, str]], allow_missing: bool
) -> tuple[list[Task], list[tuple[str, list[float]]]]:
    """``rows`` (``(key, {task: raw value})``, any modality's) as labelled items: class names read from the rows
    for a classification task that names none, then each row's values encoded; a row that does not encode
    joins ``skipped`` under its key, with the reason."""
    tasks = _infer_classes(tasks, [t for t in tasks if t.is_classification and not t.classes], rows)
    return tasks, _encode_rows(rows, tasks, skipped, allow_missing)


def _infer_classes(tasks: list[Task], needs: list[Task], rows) -> list[Task]:
    if not needs:
        return tasks
    found = {t.name: sorted({values[t.name].strip() for _, values in rows if values[t.name].strip()}) for t in needs}
    return [Task(t.name, t.kind, tuple(found[t.name])) if t.name in found else t for t in tasks]


def _encode_rows(
    rows, tasks: list[Task], skipped: list[dict[str, str]], allow_missing: bool
) -> list[tuple[str, list[float]]]:
    items = []
    for path, values in rows:
        encoded, problem = [], None
        for task in tasks:
            raw = values[task.name]
            if allow_missing and not raw.strip():
                encoded.append(float("nan"))
                continue
            try:
                encoded.append(task.encode(raw))
            except ValueError as error:
                problem = str(error)
                break
        if problem is None and all(math.isnan(v) for v in encoded):
            problem = "no label for any task"
        if problem is not None:
            skipped.append({"file": path, "reason": problem})
        else:
            items.append((path, encoded))
    return items


def group_split(
    items: list[tuple[str, list[float]]],
    fractions: tuple[float, float],
    seed: int = 0,
    hashes: dict[str, str] | None = None,
) -> tuple[dict[str, list], dict[str, Any]]:
    """Seeded train/valid/test split of whole groups of byte-identical files (``fractions`` = valid, test).

    Returns the splits and a report: how many groups of copies there are and which copies disagree on labels.
    """
    valid_fraction, test_fraction = fractions
    if not (0 < valid_fraction < 1 and 0 <= test_fraction < 1 and valid_fraction + test_fraction < 1):
        raise ConfigError(
            f"split fractions must be positive and sum below 1; got valid {valid_fraction}, test {test_fraction}"
        )
    groups: dict[str, list[int]] = {}
    for index, (path, _) in enumerate(items):
        groups.setdefault(hashes[path] if hashes and path in hashes else sha256_file(path), []).append(index)
    keys = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(keys))
    n_valid, n_test = round(len(keys) * valid_fraction), round(len(keys) * test_fraction)
    if len(keys) - n_valid - n_test < 1 or n_valid < 1:
        raise DataError(f"{len(items)} labelled image(s) ({len(keys)} distinct) are too few for a train/valid split")
    assignment = {}
    for rank, position in enumerate(order):
        assignment[keys[position]] = "valid" if rank < n_valid else "test" if rank < n_valid + n_test else "train"
    splits: dict[str, list] = {name: [] for name in SPLITS if name != "test" or n_test}
    for key in keys:
        splits[assignment[key]].extend(items[i] for i in groups[key])
    for name in splits:
        splits[name].sort(key=lambda item: item[0])
    copies = [sorted(items[i][0] for i in members) for members in groups.values() if len(members) > 1]
    conflicting = []
    for members in groups.values():
        labels = {tuple("nan" if math.isnan(v) else v for v in items[i][1]) for i in members}
        if len(members) > 1 and len(labels) > 1:
            conflicting.append(
                {
                    "files": sorted(items[i][0] for i in members),
                    "labels": [
                        [None if math.isnan(v) else v for v in items[i][1]]
                        for i in sorted(members, key=lambda i: items[i][0])
                    ],
                }
            )
    report = {
        "groups_with_copies": len(copies),
        "files_in_copy_groups": sum(len(c) for c in copies),
        "conflicting_labels": conflicting,
    }
    return splits, report


def _usable_images(items, skipped: list[dict[str, str]]) -> tuple[list, dict[str, str]]:
    """Decode every labelled file once (``graft.image.checking``): unusable ones join ``skipped`` with the reason."""
    from graft.image.checking import inspect_files
    from graft.image.data import IMAGE_EXTENSIONS

    verdicts = inspect_files([path for path, _ in items], IMAGE_EXTENSIONS, remember=True)
    kept = []
    for item, verdict in zip(items, verdicts):
        if verdict.usable:
            kept.append(item)
        else:
            skipped.append({"file": item[0], "reason": verdict.reason})
    return kept, {v.path: v.sha256 for v in verdicts if v.sha256}


def scan_multitask(
    root: str | os.PathLike,
    labels: str,
    tasks: str | Sequence[str] | None = None,
    valid_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    limit: int | None = None,
) -> MultiTaskDataset:
    """Labels for several tasks under ``root`` and a duplicate-aware train/valid/test split.

    ``limit`` keeps a seeded random subset of that many labelled images (said so in the manifest).
    """
    chosen, items, skipped, source = read_labels(root, labels, tasks)
    items, hashes = _usable_images(items, skipped)
    return assemble(root, source, chosen, items, skipped, hashes, (valid_fraction, test_fraction), seed, limit)


def assemble(
    root: str | os.PathLike,
    source: dict[str, Any],
    tasks: list[Task],
    items: list[tuple[str, list[float]]],
    skipped: list[dict[str, str]],
    hashes: dict[str, str],
    fractions: tuple[float, float],
    seed: int,
    limit: int | None,
) -> MultiTaskDataset:
    """The dataset of labelled ``items`` (any modality's: ``hashes`` key them by content): every
    classification task checked for two classes, an optional seeded subset of ``limit`` items (said so in
    ``source``), and the duplicate-aware split."""
    for task in tasks:
        if task.is_classification and len(task.classes) < 2:
            raise DataError(
                f"task '{task.name}' has {len(task.classes)} class(es) in '{root}'; classification needs at least 2"
            )
    if limit is not None and limit < len(items):
        keep = np.sort(np.random.default_rng(seed).choice(len(items), size=limit, replace=False))
        items = [items[i] for i in keep]
        source = {**source, "subset": limit}
    splits, duplicates = group_split(items, fractions, seed, hashes)
    return MultiTaskDataset(
        root=str(root),
        source=source,
        tasks=tasks,
        splits=splits,
        skipped=skipped,
        duplicates=duplicates,
        sha256=hashes,
    )


def scan_domains(
    domains: dict[str, str | os.PathLike],
    valid_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    limit: int | None = None,
) -> MultiTaskDataset:
    """Several datasets, one task per domain (labels missing on the other domains' images).

    Each value is a class-folder dataset (``DATA/<class>/`` or ``DATA/{train,valid,test}/<class>/``,
    its own split kept) or ``PATH:LABELS:TASK`` (e.g. ``faces/images:utkface:gender``, split here).
    ``limit`` caps each domain's training images (seeded).
    """
    from graft.image.data import scan_folder

    if not domains:
        raise ConfigError(
            "multi-domain training needs --domain NAME=PATH (one per domain; one domain alone is a single-task "
            "baseline)"
        )
    tasks, splits, skipped, sources, hashes = [], {name: [] for name in SPLITS}, [], {}, {}
    for position, (name, spec) in enumerate(domains.items()):
        spec = str(spec)
        path, labels, task_name = (spec.split(":") + ["", ""])[:3] if spec.count(":") == 2 else (spec, "", "")
        if labels:
            part = scan_multitask(path, labels, [task_name], valid_fraction, test_fraction, seed)
            classes = part.tasks[0].classes
            domain_splits = {k: [(p, v[0]) for p, v in items] for k, items in part.splits.items()}
            skipped += part.skipped
            hashes.update(part.sha256)
        else:
            folder = scan_folder(path, valid_fraction=valid_fraction, seed=seed)
            classes = tuple(folder.classes)
            domain_splits = {k: [(p, float(v)) for p, v in items] for k, items in folder.splits.items()}
            skipped += folder.skipped
            hashes.update(folder.sha256)
            if (
                "test" not in domain_splits and test_fraction > 0
            ):  # plain class folders: hold out a stratified test split too
                from sklearn.model_selection import train_test_split

                train = domain_splits["train"]
                n_test = max(round(len(train) * test_fraction), len(classes))
                kept, held = train_test_split(
                    train, test_size=n_test, stratify=[v for _, v in train], random_state=seed
                )
                domain_splits["train"], domain_splits["test"] = sorted(kept), sorted(held)
        tasks.append(Task(name, "classification", classes))
        sources[name] = spec
        if limit is not None and len(domain_splits.get("train", [])) > limit:
            rng = np.random.default_rng(seed)
            train = domain_splits["train"]
            domain_splits["train"] = [train[i] for i in np.sort(rng.choice(len(train), size=limit, replace=False))]
        for split_name, items in domain_splits.items():
            for path_, value in items:
                row = [float("nan")] * len(domains)
                row[position] = value
                splits[split_name].append((path_, row))
    splits = {k: v for k, v in splits.items() if v}
    return MultiTaskDataset(
        root="",
        source={"kind": "domains", "domains": sources, **({"train_limit": limit} if limit else {})},
        tasks=tasks,
        splits=splits,
        skipped=skipped,
        sha256=hashes,
    )
