"""Image folders in, labelled file lists out: layout detection, scanning, splits, the manifest.

Two layouts are understood: ``DATA/{train,valid|val|validation,test}/<class>/...`` and
``DATA/<class>/...`` (then a seeded, stratified train/valid split). Nothing is dropped silently:
every file that is not used is listed in the manifest's ``skipped`` with the reason. Nothing here
imports torch, so ``graft check`` answers without loading it (:mod:`graft.image.decoded` is the torch
dataset of these files).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from graft.core.dataset import Dataset, stratified_split
from graft.errors import DataError, raise_or_record
from graft.image import checking

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SPLIT_ALIASES = {"train": ("train", "training"), "valid": ("valid", "val", "validation"), "test": ("test", "testing")}
IGNORED_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini", "LICENSE", "LICENSE.txt", "README.md", "SOURCE.md"}


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode to RGB, applying EXIF rotation (phones store photos sideways); see ``graft.image.checking``."""
    return checking.load_image(path)


def _find_split_dirs(root: Path) -> dict[str, Path]:
    found = {}
    children = {child.name.lower(): child for child in root.iterdir() if child.is_dir()}
    for split, aliases in SPLIT_ALIASES.items():
        for alias in aliases:
            if alias in children:
                found[split] = children[alias]
                break
    return found


def _scan_class_folders(
    folder: Path, skipped: list[dict[str, str]], warnings: list[dict[str, str]] | None = None
) -> dict[str, list[str]]:
    """Map class name -> sorted candidate files below ``folder/<class>/`` (recursively).

    Every regular file is a candidate whatever its extension (``_keep_usable`` inspects the content).
    Nothing else disappears without a word: hidden files and folders (one rule everywhere: a name
    starting with '.'), files outside any class folder, folders that cannot be read, broken symlinks,
    symlink loops, devices, FIFOs and sockets are listed in ``skipped`` with the reason. A class folder
    name that is not UTF-8 becomes a printable class name (U+FFFD for the bad bytes), with a warning.
    """
    by_class: dict[str, list[str]] = {}
    for entry, kind in _entries(folder, skipped):
        if kind == "file":
            if entry.name not in IGNORED_NAMES:
                skipped.append({"file": str(entry), "reason": "file outside any class folder"})
            continue
        name = checking.display_name(entry.name)
        if name != entry.name and warnings is not None:
            warnings.append(
                {"file": str(entry), "message": f"class folder name is not valid UTF-8; the class is called '{name}'"}
            )
        by_class[name] = sorted(_files_below(entry, skipped, {entry.resolve()}))
    return by_class


def _entries(folder: Path, skipped: list[dict[str, str]]) -> list[tuple[Path, str]]:
    """The usable entries of ``folder`` as ``(path, "file" | "folder")``, in name order; every other entry
    (hidden, unreadable, a broken symlink or loop, not a regular file or folder) goes to ``skipped``."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as error:
        skipped.append({"file": str(folder), "reason": f"folder cannot be read ({error.strerror or error})"})
        return []
    found = []
    for name in names:
        path = folder / name
        if name in IGNORED_NAMES:
            continue
        if name.startswith("."):
            skipped.append({"file": str(path), "reason": "hidden file or folder (name starts with '.')"})
            continue
        try:
            mode = os.stat(path).st_mode  # follows symlinks
        except OSError as error:
            reason = (
                "symlink loop"
                if error.errno == errno.ELOOP
                else "broken symlink"
                if path.is_symlink()
                else "cannot be read"
            )
            skipped.append({"file": str(path), "reason": f"{reason} ({error.strerror or error})"})
            continue
        if stat.S_ISDIR(mode):
            found.append((path, "folder"))
        elif stat.S_ISREG(mode):
            found.append((path, "file"))
        else:
            skipped.append({"file": str(path), "reason": "not a regular file (a device, FIFO or socket)"})
    return found


def _files_below(folder: Path, skipped: list[dict[str, str]], seen: set[Path]) -> list[str]:
    """Regular files below ``folder``; a folder reached twice through symlinks is listed once, as a loop."""
    files = []
    for path, kind in _entries(folder, skipped):
        if kind == "file":
            files.append(str(path))
            continue
        real = path.resolve()
        if real in seen:
            skipped.append({"file": str(path), "reason": "symlink loop (a folder already scanned)"})
            continue
        files.extend(_files_below(path, skipped, seen | {real}))
    return files


def inspect_images(paths: Sequence[str]) -> list[checking.Verdict]:
    return checking.inspect_files(paths, IMAGE_EXTENSIONS, remember=True)  # a data folder: re-runs reuse it


def _keep_usable(
    per_split: dict[str, dict[str, list[str]]],
    skipped: list[dict[str, str]],
    warnings: list[dict[str, str]],
    inspector: Callable[[Sequence[str]], list[Any]] = inspect_images,
) -> dict[str, str]:
    """Inspect every candidate file (``inspector``: images by default), drop the unusable ones into
    ``skipped``; return sha256 by path."""
    paths = [path for by_class in per_split.values() for files in by_class.values() for path in files]
    hashes: dict[str, str] = {}
    usable = set()
    for verdict in inspector(paths):
        if verdict.usable:
            usable.add(verdict.path)
            hashes[verdict.path] = verdict.sha256
        else:
            skipped.append({"file": verdict.path, "reason": verdict.reason})
        warnings.extend({"file": verdict.path, "message": message} for message in verdict.warnings)
    for by_class in per_split.values():
        for name in by_class:
            by_class[name] = [path for path in by_class[name] if path in usable]
    return hashes


def scan_folder(
    root: str | os.PathLike,
    valid_fraction: float = 0.2,
    seed: int = 0,
    inspect: bool = True,
    errors: list[str] | None = None,
    inspector: Callable[[Sequence[str]], list[Any]] = inspect_images,
) -> Dataset:
    """Find the images and labels under ``root``. Raises :class:`DataError` with what to fix.

    ``inspect`` decodes every file first (``inspector``: ``graft.image.checking`` by default; another
    modality's files, e.g. sound, are read by its own): unusable ones are skipped with the
    reason, duplicates across splits are warned about. With an ``errors`` list, problems that make
    the data unusable for training are appended there instead of raised (``graft check``).
    """
    root_path = Path(root)
    if not root_path.exists():
        raise DataError(f"data folder '{root}' does not exist")
    if not root_path.is_dir():
        raise DataError(
            f"'{root}' is a file; DATA must be a folder of class folders",
            hint="layout: DATA/<class>/image.jpg or DATA/train/<class>/image.jpg",
        )
    skipped: list[dict[str, str]] = []
    warnings: list[dict[str, str]] = []
    split_dirs = _find_split_dirs(root_path)
    if split_dirs:
        if "train" not in split_dirs:
            raise DataError(f"'{root}' has {', '.join(d.name for d in split_dirs.values())} but no train/ folder")
        per_split = {name: _scan_class_folders(folder, skipped, warnings) for name, folder in split_dirs.items()}
        hashes = _keep_usable(per_split, skipped, warnings, inspector) if inspect else {}
        classes = sorted(name for name, files in per_split["train"].items() if files)
        _check_classes(root, classes, per_split["train"], skipped, errors)
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
                warnings.append(
                    {
                        "file": str(split_dirs[name]),
                        "message": f"{name} split has no images of class(es) {', '.join(missing)}",
                    }
                )
        if "valid" not in splits:
            splits["train"], splits["valid"] = _stratified_split(
                splits["train"], valid_fraction, seed, root, hashes, errors, classes
            )
            layout = "train+test folders, valid split from train"
        else:
            layout = "split folders"
    else:
        by_class = _scan_class_folders(root_path, skipped, warnings)
        hashes = _keep_usable({"all": by_class}, skipped, warnings, inspector) if inspect else {}
        classes = sorted(name for name, files in by_class.items() if files)
        _check_classes(root, classes, by_class, skipped, errors)
        items = sorted(
            (path, classes.index(name)) for name, files in by_class.items() if name in classes for path in files
        )
        train, valid = _stratified_split(items, valid_fraction, seed, root, hashes, errors, classes)
        splits = {"train": train, "valid": valid}
        layout = f"class folders, stratified split (valid {valid_fraction:.0%}, seed {seed})"
    if hashes:
        warnings.extend(checking.duplicate_warnings(splits, classes, hashes))
    return Dataset(
        root=str(root_path),
        layout=layout,
        classes=classes,
        splits=splits,
        skipped=skipped,
        warnings=warnings,
        sha256=hashes,
    )


def _check_classes(
    root: str | os.PathLike,
    classes: list[str],
    by_class: dict[str, list[str]],
    skipped: list[dict[str, str]],
    errors: list[str] | None = None,
) -> None:
    for name, files in by_class.items():
        if not files:
            skipped.append(
                {"file": str(Path(root) / name), "reason": "empty class folder (no usable images): class ignored"}
            )
    if len(classes) < 2:
        raise_or_record(
            DataError(
                f"'{root}' has {len(classes)} class folder(s) with images ({', '.join(classes) or 'none'}); a "
                "classifier needs at least 2",
                hint="layout: DATA/<class>/image.jpg, one folder per class",
            ),
            errors,
        )


def _stratified_split(
    items: list[tuple[str, int]],
    fraction: float,
    seed: int,
    root,
    hashes: dict[str, str] | None = None,
    errors: list[str] | None = None,
    classes: list[str] | None = None,
) -> tuple[list, list]:
    """Seeded stratified train/valid split; byte-identical images stay on the train side."""
    labels = [label for _, label in items]
    counts = np.bincount(labels) if labels else np.zeros(1, dtype=int)
    if len(counts) < 2 or counts.min() < 2:
        if len(counts) >= 2:
            few = [int(i) for i in np.flatnonzero(counts < 2)]
            names = ", ".join(f"'{classes[i]}'" if classes else str(i) for i in few)
            raise_or_record(
                DataError(
                    f"class {names} in '{root}' has only {counts.min()} image(s); a train/valid split needs at least 2 "
                    "per class",
                    hint="add images to it, remove its folder, or give a valid/ split folder",
                ),
                errors,
            )
        return sorted(items), []
    n_valid = max(int(round(len(items) * fraction)), len(counts))
    train, valid = stratified_split(items, labels, n_valid, seed)
    train, valid, _ = checking.keep_duplicates_together(sorted(train), sorted(valid), hashes or {})
    return train, valid


def collect_image_paths(
    inputs: Sequence[str | os.PathLike], extensions: set[str] = IMAGE_EXTENSIONS, what: str = "images"
) -> list[str]:
    """Expand files and folders (recursively) into the paths of files with ``extensions``, for predict/classify."""
    paths: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths.extend(str(p) for p in sorted(path.rglob("*")) if p.is_file() and p.suffix.lower() in extensions)
        elif path.is_file():
            paths.append(str(path))
        elif path.exists():
            raise DataError(f"'{item}' is not a regular file or a folder (a device, FIFO or socket)")
        else:
            raise DataError(f"'{item}' does not exist")
    if not paths:
        raise DataError(f"no {what} found in {', '.join(map(str, inputs))}")
    return paths


def scan_for_evaluation(
    root: str | os.PathLike,
    classes: Sequence[str],
    inspector: Callable[[Sequence[str]], list[Any]] = inspect_images,
) -> tuple[list[tuple[str, int]], list[dict[str, str]], str]:
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
    _keep_usable({"eval": by_class}, skipped, [], inspector)
    unknown = sorted(name for name, files in by_class.items() if files and name not in classes)
    if unknown:
        raise DataError(
            f"'{folder}' has class folder(s) the model was not trained on: {', '.join(unknown)}",
            hint=f"the model knows: {', '.join(classes)}",
        )
    items = sorted((path, list(classes).index(name)) for name, files in by_class.items() for path in files)
    if not items:
        raise DataError(f"no images found under '{folder}'")
    return items, skipped, str(folder)
