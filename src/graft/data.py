"""Image folders in, labelled file lists out: layout detection, scanning, splits, the manifest.

Two layouts are understood: ``DATA/{train,valid|val|validation,test}/<class>/...`` and
``DATA/<class>/...`` (then a seeded, stratified train/valid split). Nothing is dropped silently:
every file that is not used is listed in the manifest's ``skipped`` with the reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from sklearn.model_selection import train_test_split

from graft.errors import DataError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SPLIT_ALIASES = {"train": ("train", "training"), "valid": ("valid", "val", "validation"), "test": ("test", "testing")}
IGNORED_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini", "LICENSE", "LICENSE.txt", "README.md", "SOURCE.md"}


@dataclass
class Dataset:
    """Labelled image files per split, the class names, and what was skipped."""

    root: str
    layout: str
    classes: list[str]
    splits: dict[str, list[tuple[str, int]]]
    skipped: list[dict[str, str]] = field(default_factory=list)
    warnings: list[dict[str, str]] = field(default_factory=list)

    def manifest(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "layout": self.layout,
            "classes": self.classes,
            "counts": {name: len(items) for name, items in self.splits.items()},
            "splits": {name: [[path, label] for path, label in items] for name, items in self.splits.items()},
            "skipped": self.skipped,
            "warnings": self.warnings,
        }

    def split(self, name: str) -> list[tuple[str, int]]:
        return self.splits.get(name, [])


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode to RGB, applying EXIF rotation (phones store photos sideways)."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        return image.convert("RGB")


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _find_split_dirs(root: Path) -> dict[str, Path]:
    found = {}
    children = {child.name.lower(): child for child in root.iterdir() if child.is_dir()}
    for split, aliases in SPLIT_ALIASES.items():
        for alias in aliases:
            if alias in children:
                found[split] = children[alias]
                break
    return found


def _scan_class_folders(folder: Path, skipped: list[dict[str, str]]) -> dict[str, list[str]]:
    """Map class name -> sorted image paths below ``folder/<class>/`` (recursively)."""
    by_class: dict[str, list[str]] = {}
    for entry in sorted(folder.iterdir()):
        if entry.is_file():
            if entry.name not in IGNORED_NAMES:
                skipped.append({"file": str(entry), "reason": "file outside any class folder"})
            continue
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        files = []
        for path in sorted(p for p in entry.rglob("*") if p.is_file()):
            if path.name in IGNORED_NAMES or path.name.startswith("."):
                continue
            if _is_image_name(path):
                files.append(str(path))
            else:
                skipped.append({"file": str(path), "reason": f"not an image file extension ('{path.suffix or 'none'}')"})
        by_class[entry.name] = files
    return by_class


def scan_folder(root: str | os.PathLike, valid_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Find the images and labels under ``root``. Raises :class:`DataError` with what to fix."""
    root_path = Path(root)
    if not root_path.exists():
        raise DataError(f"data folder '{root}' does not exist")
    if not root_path.is_dir():
        raise DataError(f"'{root}' is a file; DATA must be a folder of class folders", hint="layout: DATA/<class>/image.jpg or DATA/train/<class>/image.jpg")
    skipped: list[dict[str, str]] = []
    warnings: list[dict[str, str]] = []
    split_dirs = _find_split_dirs(root_path)
    if split_dirs:
        if "train" not in split_dirs:
            raise DataError(f"'{root}' has {', '.join(d.name for d in split_dirs.values())} but no train/ folder")
        per_split = {name: _scan_class_folders(folder, skipped) for name, folder in split_dirs.items()}
        classes = sorted(name for name, files in per_split["train"].items() if files)
        _check_classes(root, classes, per_split["train"], skipped)
        splits = {}
        for name, by_class in per_split.items():
            items = []
            for class_name, files in by_class.items():
                if class_name not in classes:
                    for path in files:
                        skipped.append({"file": path, "reason": f"class '{class_name}' has no training images"})
                    continue
                items.extend((path, classes.index(class_name)) for path in files)
            splits[name] = sorted(items)
            missing = sorted(set(classes) - {c for c, f in by_class.items() if f})
            if missing and name != "train":
                warnings.append({"file": str(split_dirs[name]), "message": f"{name} split has no images of class(es) {', '.join(missing)}"})
        if "valid" not in splits:
            splits["train"], splits["valid"] = _stratified_split(splits["train"], valid_fraction, seed, root)
            layout = "train+test folders, valid split from train"
        else:
            layout = "split folders"
    else:
        by_class = _scan_class_folders(root_path, skipped)
        classes = sorted(name for name, files in by_class.items() if files)
        _check_classes(root, classes, by_class, skipped)
        items = sorted((path, classes.index(name)) for name, files in by_class.items() if name in classes for path in files)
        train, valid = _stratified_split(items, valid_fraction, seed, root)
        splits = {"train": train, "valid": valid}
        layout = f"class folders, stratified split (valid {valid_fraction:.0%}, seed {seed})"
    return Dataset(root=str(root_path), layout=layout, classes=classes, splits=splits, skipped=skipped, warnings=warnings)


def _check_classes(root: str | os.PathLike, classes: list[str], by_class: dict[str, list[str]], skipped: list[dict[str, str]]) -> None:
    for name, files in by_class.items():
        if not files:
            skipped.append({"file": str(Path(root) / name), "reason": "empty class folder (no images): class ignored"})
    if len(classes) < 2:
        raise DataError(
            f"'{root}' has {len(classes)} class folder(s) with images ({', '.join(classes) or 'none'}); a classifier needs at least 2",
            hint="layout: DATA/<class>/image.jpg, one folder per class",
        )


def _stratified_split(items: list[tuple[str, int]], fraction: float, seed: int, root) -> tuple[list, list]:
    labels = [label for _, label in items]
    counts = np.bincount(labels)
    if counts.min() < 2:
        raise DataError(f"a class in '{root}' has only {counts.min()} image(s); a train/valid split needs at least 2 per class")
    n_valid = max(int(round(len(items) * fraction)), len(counts))
    train, valid = train_test_split(items, test_size=n_valid, stratify=labels, random_state=seed)
    return sorted(train), sorted(valid)


class ImageDataset(torch.utils.data.Dataset):
    """(path, label) pairs decoded and transformed on access, for a torch DataLoader."""

    def __init__(self, items: Sequence[tuple[str, int]], transform: Callable):
        self.items = list(items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        path, label = self.items[index]
        return self.transform(load_image(path)), label


def collect_image_paths(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """Expand files and folders (recursively) into image paths, for predict/classify."""
    paths: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths.extend(str(p) for p in sorted(path.rglob("*")) if p.is_file() and _is_image_name(p))
        elif path.is_file():
            paths.append(str(path))
        else:
            raise DataError(f"'{item}' does not exist")
    if not paths:
        raise DataError(f"no images found in {', '.join(map(str, inputs))}")
    return paths


def scan_for_evaluation(root: str | os.PathLike, classes: Sequence[str]) -> tuple[list[tuple[str, int]], list[dict[str, str]], str]:
    """Labelled images to evaluate a trained model on, labelled with the model's class indices.

    A split-layout folder contributes its test split (valid if there is no test); a plain folder of
    class folders contributes everything. Class folders the model does not know are an error.
    """
    root_path = Path(root)
    if not root_path.is_dir():
        raise DataError(f"data folder '{root}' does not exist or is not a folder")
    skipped: list[dict[str, str]] = []
    split_dirs = _find_split_dirs(root_path)
    folder = split_dirs.get("test") or split_dirs.get("valid") or (root_path if not split_dirs else None)
    if folder is None:
        raise DataError(f"'{root}' has split folders but no test/ or valid/ to evaluate on")
    by_class = _scan_class_folders(folder, skipped)
    unknown = sorted(name for name, files in by_class.items() if files and name not in classes)
    if unknown:
        raise DataError(f"'{folder}' has class folder(s) the model was not trained on: {', '.join(unknown)}", hint=f"the model knows: {', '.join(classes)}")
    items = sorted((path, list(classes).index(name)) for name, files in by_class.items() for path in files)
    if not items:
        raise DataError(f"no images found under '{folder}'")
    return items, skipped, str(folder)
