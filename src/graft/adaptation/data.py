"""The target domain: a folder of unlabelled examples, possibly in class folders.

Class folders named like the source's classes are read as labels *for the report only* (how well did
adaptation do on the target?); training never sees them. Unreadable files are skipped and listed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from graft.core.dataset import Dataset
from graft.errors import DataError

TARGET = "target"


def scan_target(
    location: str, classes: list[str], modality: Any, split: str = TARGET
) -> tuple[list[tuple[str, int]], list[dict[str, str]]]:
    """``(path, label)`` for every readable example under ``location`` (label -1 where the example is not
    in a folder named after a source class), and the skipped files with reasons."""
    root = Path(location)
    if not root.is_dir():
        raise DataError(f"{split} folder '{location}' does not exist or is not a folder")
    paths = modality.expand([location])
    unreadable = modality.unreadable(paths, remember=True)
    index = {name: i for i, name in enumerate(classes)}
    items = []
    for path in paths:
        if path in unreadable:
            continue
        parts = Path(path).relative_to(root).parts
        items.append((path, index.get(parts[0], -1) if len(parts) > 1 else -1))
    if not items:
        raise DataError(f"{split} folder '{location}' holds no readable example")
    skipped = [{"file": path, "reason": reason, "split": split} for path, reason in unreadable.items()]
    return items, skipped


def with_target(dataset: Dataset, location: str, modality: Any, split: str = TARGET) -> Dataset:
    """The source ``dataset`` with the target's (or an unlabelled pool's) examples as its ``split`` split."""
    if Path(location).resolve() == Path(dataset.root).resolve():
        raise DataError(f"the {split} folder '{location}' is the source folder", hint=f"the {split} is other images")
    items, skipped = scan_target(location, dataset.classes, modality, split)
    return Dataset(
        root=dataset.root,
        layout=dataset.layout,
        classes=dataset.classes,
        splits={**dataset.splits, split: items},
        skipped=dataset.skipped + skipped,
        warnings=dataset.warnings,
        sha256=dataset.sha256,
    )


def target_labelled(dataset: Dataset) -> bool:
    """Whether every target example has a class (then the report gives the target's accuracy)."""
    return all(label >= 0 for _, label in dataset.split(TARGET))
