"""Labelled files per split, the class names, and what was skipped: what a modality's data source
scans a location into (:mod:`graft.core.modality`) and what a run's ``manifest.json`` records."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from graft.errors import DataError
from graft.fileio import KnownDigests, sha256_file


@dataclass
class Dataset(KnownDigests):
    """Labelled files per split (``(path, class index)``), the class names, and what was skipped."""

    root: str
    layout: str
    classes: list[str]
    splits: dict[str, list[tuple[str, int]]]
    skipped: list[dict[str, str]] = field(default_factory=list)
    warnings: list[dict[str, str]] = field(default_factory=list)
    sha256: dict[str, str] = field(default_factory=dict)  # content hash by path (keys the activation cache)

    def manifest(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "layout": self.layout,
            "classes": self.classes,
            "counts": {name: len(items) for name, items in self.splits.items()},
            "splits": {name: [[path, label] for path, label in items] for name, items in self.splits.items()},
            "skipped": self.skipped,
            "warnings": self.warnings,
            "sha256": self.sha256,
        }

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> Dataset:
        """The dataset a run was trained on, from its ``manifest.json``; each file must still hold the same bytes."""
        dataset = cls(
            root=manifest["root"],
            layout=manifest["layout"],
            classes=list(manifest["classes"]),
            splits={name: [(path, int(label)) for path, label in items] for name, items in manifest["splits"].items()},
            skipped=list(manifest["skipped"]),
            warnings=list(manifest["warnings"]),
        )
        recorded = manifest.get("sha256", {})
        for name, items in dataset.splits.items():
            for path, _ in items:
                if not Path(path).is_file():
                    raise DataError(
                        f"'{path}' (in the run's {name} split) is gone",
                        hint="resume needs the same data the run started with",
                    )
                digest = sha256_file(path)
                if recorded.get(path, digest) != digest:
                    raise DataError(
                        f"'{path}' (in the run's {name} split) has changed since the run started",
                        hint="resume needs the same data; start a new run instead",
                    )
                dataset.sha256[path] = digest
        return dataset

    def split(self, name: str) -> list[tuple[str, int]]:
        return self.splits.get(name, [])


def summarise(skipped: list[dict[str, str]]) -> dict[str, int]:
    """Count skipped files by reason, with details in parentheses folded together."""
    counts: dict[str, int] = {}
    for entry in skipped:
        key = entry["reason"].split(" (")[0]
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def stratified_split(items: list, labels: list[int], n_valid: int, seed: int) -> tuple[list, list]:
    """A seeded stratified (train, valid) split of ``items``: about ``n_valid`` of them for validation, shared
    among the classes in proportion to their size (largest remainders), at least one per class and at least one
    of each class left to train on (every class needs two items). The same on every machine (numpy's PCG64).
    numpy rather than scikit-learn's ``train_test_split``: importing that cost every run over a second."""
    rng = np.random.default_rng(seed)
    labels_array = np.asarray(labels)
    classes, counts = np.unique(labels_array, return_counts=True)
    share = counts * n_valid / len(labels_array)
    taken = np.floor(share).astype(int)
    taken[np.argsort(taken - share, kind="stable")[: n_valid - int(taken.sum())]] += 1
    taken = np.clip(taken, 1, counts - 1)
    chosen = np.concatenate(
        [rng.permutation(np.flatnonzero(labels_array == label))[:count] for label, count in zip(classes, taken)]
    )
    in_valid = np.zeros(len(items), dtype=bool)
    in_valid[chosen] = True
    return [item for item, held in zip(items, in_valid) if not held], [
        item for item, held in zip(items, in_valid) if held
    ]
