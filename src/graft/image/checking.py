"""Inspecting image files before training: decode each one, convert it to RGB correctly, and
report every file that cannot be used with the reason, by name.

``scan_folder`` calls :func:`inspect_files` on every candidate file, so ``graft train`` and
``graft check`` apply the same rules. A file is *usable* when Pillow identifies it, it is within the
decompression-bomb limit, and it decodes completely (truncated files fail here, not mid-training).
Files without a known image extension are identified by content. Duplicates are found by sha256.
"""

from __future__ import annotations

import functools
import hashlib
import io
import multiprocessing
import os
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from graft.core.dataset import summarise
from graft.errors import DataError
from graft.fileio import atomic_write_json, default_cache_dir, read_json
from graft.perf import usable_cores

MAX_PIXELS = 89_478_485  # Pillow's own warning threshold (about 9459 x 9459): graft's decompression-bomb limit
# JPEGs are checked at the smallest DCT scale (1/8): every byte is still entropy-decoded, so truncated or
# corrupt data is caught, for 0.31 ms of CPU per 250-px image instead of 0.55 ms at full scale
DECODE_SIZE = 1
# Processes of the check pass, and the fewest files worth a process (a fork costs ~20 ms with torch loaded)
MAX_CHECK_PROCESSES = 8
MIN_FILES_PER_PROCESS = 64
HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


class ImageProblem(Exception):
    """Why one file cannot be used (the text goes into ``skipped[].reason``)."""


@dataclass
class Verdict:
    """The outcome of inspecting one file."""

    path: str
    reason: str | None = None
    warnings: list[str] = field(default_factory=list)
    sha256: str | None = None

    @property
    def usable(self) -> bool:
        return self.reason is None


def display_name(name: str) -> str:
    """``name`` with undecodable bytes (non-UTF-8 file names) shown as U+FFFD, safe to print and write."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB the way a viewer shows it.

    16-bit and float images are rescaled (not clipped to white), transparent pixels are composited on
    white (not black), palette, CMYK and grayscale go through Pillow's conversions.
    """
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    if image.mode in HIGH_BIT_MODES:
        array = np.asarray(image, dtype=np.float64)
        top = float(array.max()) if array.size else 0.0
        if image.mode == "F":
            array = array * 255.0 if top <= 1.0 else array * (255.0 / top)
        elif top > 255:
            array = array / 257.0  # 16-bit range to 8-bit
        return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def open_rgb(
    source: str | os.PathLike | BinaryIO, max_pixels: int | None = None, draft: int | None = None
) -> Image.Image:
    """Decode ``source`` (a path or an open binary file) fully to an upright RGB image. Raises
    :class:`ImageProblem` with the reason."""
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                return _decode(image, limit, draft)
    except ImageProblem:
        raise
    except UnidentifiedImageError:
        raise ImageProblem("not an image: Pillow cannot identify the format") from None
    except Exception as error:
        raise _decoding_problem(error) from None


def _decode(image: Image.Image, limit: int, draft: int | None) -> Image.Image:
    width, height = image.size
    if width * height > limit:
        raise ImageProblem(f"{width}x{height} pixels is over the decompression-bomb limit of {limit:,} pixels")
    if draft and image.format == "JPEG":
        image.draft("RGB", (draft, draft))
    image.load()
    return to_rgb(ImageOps.exif_transpose(image))


def _decoding_problem(error: Exception) -> ImageProblem:
    """The reason a decode failed, from what Pillow raised."""
    if isinstance(error, Image.DecompressionBombError):
        return ImageProblem(f"over the decompression-bomb limit ({error})")
    if isinstance(error, MemoryError):
        return ImageProblem("too large to decode in memory")
    # Pillow raises OSError, SyntaxError, ValueError, struct.error... for bad data
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return ImageProblem(f"truncated or corrupt image data ({text})")


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode to RGB with EXIF rotation applied; a bad file is a :class:`DataError` naming it."""
    try:
        return open_rgb(path)
    except ImageProblem as problem:
        raise DataError(f"cannot use image '{display_name(str(path))}': {problem}") from None
    except OSError as error:
        raise DataError(f"cannot read '{display_name(str(path))}': {error.strerror or error}") from None


def inspect_image(
    path: str | os.PathLike, image_extensions: Iterable[str] = (), max_pixels: int | None = None
) -> Verdict:
    """Check one file: readable, an image, within the pixel limit, decodes completely.

    The file is read once: the same bytes are hashed, identified and decoded.
    """
    verdict = Verdict(path=str(path))
    suffix = Path(path).suffix.lower()
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        verdict.reason = f"cannot read the file ({error.strerror or error})"
        return verdict
    if not data:
        verdict.reason = "empty file (0 bytes)"
        return verdict
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                detected = image.format or "image"
                try:
                    _decode(image, limit, DECODE_SIZE)
                except ImageProblem:
                    raise
                except Exception as error:
                    raise _decoding_problem(error) from None
    except UnidentifiedImageError:
        known = suffix in set(image_extensions)
        despite = f", despite the {suffix!r} extension" if known else ""
        verdict.reason = f"not an image (content is not a format Pillow reads{despite})"
        return verdict
    except ImageProblem as problem:
        verdict.reason = str(problem)
        return verdict
    except Exception as error:  # the header itself is bad (or declares a decompression bomb)
        verdict.reason = str(_decoding_problem(error))
        return verdict
    verdict.sha256 = hashlib.sha256(data).hexdigest()
    if suffix not in set(image_extensions):
        verdict.warnings.append(
            f"unusual extension {suffix!r}; read by content as {detected}"
            if suffix
            else f"no file extension; read by content as {detected}"
        )
    name = Path(path).name
    if display_name(name) != name:
        verdict.warnings.append("file name is not valid UTF-8; used as is")
    return verdict


def inspect_files(
    paths: Sequence[str], image_extensions: Iterable[str], workers: int | None = None, remember: bool = False
) -> list[Verdict]:
    """Inspect many files, in input order, in one process per core (``workers``) where fork is available.
    With ``remember`` (a data folder's scan, not a prediction's inputs), a file unchanged since an earlier
    check (:class:`CheckedFiles`) is not read again.

    Most of a check is Python (Pillow parsing headers, hashing, EXIF) holding the GIL, so threads
    were slower than one thread (10,000 JPEGs: 5.2 s on two threads, 3.7 s on one); forked processes
    each take a share of the files.
    """
    extensions = tuple(image_extensions)
    checked = CheckedFiles.near(paths, extensions) if remember and paths else None
    verdicts: list[Verdict | None] = [checked.get(path) if checked else None for path in paths]
    todo = [position for position, verdict in enumerate(verdicts) if verdict is None]
    for position, verdict in zip(todo, _inspect_all([paths[p] for p in todo], extensions, workers)):
        verdicts[position] = verdict
        if checked:
            checked.put(verdict)
    if checked and todo:
        checked.save()
    return verdicts  # type: ignore[return-value]


def _inspect_all(paths: Sequence[str], extensions: tuple[str, ...], workers: int | None) -> list[Verdict]:
    inspect = functools.partial(inspect_image, image_extensions=extensions)
    workers = min(usable_cores(), MAX_CHECK_PROCESSES) if workers is None else workers
    if len(paths) < MIN_FILES_PER_PROCESS * 2 or workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        return [inspect(path) for path in paths]
    workers = min(workers, len(paths) // MIN_FILES_PER_PROCESS)
    # fork: the children only run Pillow and hashlib, never torch, so a parent that used OpenMP is safe
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(inspect, paths, chunksize=max(1, min(256, len(paths) // (workers * 8)))))


class CheckedFiles:
    """What the check pass learned about the files of one data folder, kept between runs in the cache folder
    (``checked/``), the way git's index remembers files: a file whose size, modification and change times,
    inode and device are all as they were is not read, decoded and hashed again, so a re-run's check costs a
    stat per file (10,000 images: ~4 s -> ~0.1 s). Any write to a file changes its change time, which no
    program can set back. A different rule set (``RULES``, the extensions asked for, the pixel limit) starts
    afresh; a cache folder that cannot be written only means files are checked again."""

    RULES = 1  # bump when inspect_image's verdicts change

    def __init__(self, path: Path, rules: dict):
        self.path, self.rules = path, rules
        try:
            saved = read_json(path)
            self.entries = saved["files"] if saved.get("rules") == rules else {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            self.entries = {}
        self.stamps: dict[str, list[int]] = {}

    @classmethod
    def near(cls, paths: Sequence[str], extensions: tuple[str, ...]) -> CheckedFiles:
        """The record for the folder that holds ``paths``."""
        try:
            folder = os.path.commonpath([os.path.realpath(path) for path in paths])
        except ValueError:  # paths on different drives (Windows)
            folder = "various"
        name = hashlib.sha256(folder.encode("utf-8", "surrogateescape")).hexdigest()[:24]
        rules = {"rules": cls.RULES, "extensions": sorted(extensions), "max_pixels": MAX_PIXELS, "folder": folder}
        return cls(default_cache_dir() / "checked" / f"{name}.json", rules)

    def _stamp(self, path: str) -> list[int] | None:
        try:
            info = os.stat(path)
        except OSError:
            return None
        self.stamps[path] = [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino, info.st_dev]
        return self.stamps[path]

    def get(self, path: str) -> Verdict | None:
        stamp, entry = self._stamp(path), self.entries.get(path)
        if stamp is None or entry is None or entry.get("stamp") != stamp:
            return None
        return Verdict(
            path=path, reason=entry.get("reason"), warnings=list(entry.get("warnings", [])), sha256=entry.get("sha256")
        )

    def put(self, verdict: Verdict) -> None:
        stamp = self.stamps.get(verdict.path)
        if stamp is not None:
            self.entries[verdict.path] = {
                "stamp": stamp,
                "reason": verdict.reason,
                "warnings": verdict.warnings,
                "sha256": verdict.sha256,
            }

    def save(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.path, {"rules": self.rules, "files": self.entries})
        except OSError:
            pass  # bookkeeping only


def duplicate_warnings(
    splits: dict[str, list[tuple[str, int]]], classes: Sequence[str], hashes: dict[str, str]
) -> list[dict[str, str]]:
    """Warn about byte-identical images in two splits (leakage) or under two labels (label noise)."""
    seen: dict[str, list[tuple[str, str, int]]] = {}
    for split, items in splits.items():
        for path, label in items:
            digest = hashes.get(path)
            if digest is not None:
                seen.setdefault(digest, []).append((split, path, label))
    found = []
    for copies in seen.values():
        if len(copies) < 2:
            continue
        first_split, first_path, first_label = copies[0]
        for split, path, label in copies[1:]:
            if split != first_split:
                found.append(
                    {
                        "file": path,
                        "message": f"identical to '{first_path}' ({first_split}): the same image in {first_split} and "
                        f"{split} leaks into evaluation",
                    }
                )
            elif label == first_label:
                found.append(
                    {"file": path, "message": f"identical to '{first_path}' in the same split (the image counts twice)"}
                )
            if label != first_label:
                found.append(
                    {
                        "file": path,
                        "message": f"identical to '{first_path}' but labelled '{classes[label]}', not "
                        f"'{classes[first_label]}' (label noise)",
                    }
                )
    return found


def keep_duplicates_together(
    train: list[tuple[str, int]], valid: list[tuple[str, int]], hashes: dict[str, str]
) -> tuple[list, list, int]:
    """Move validation images whose exact copy is in train into train (a random split must not leak)."""
    train_digests = {hashes.get(path) for path, _ in train} - {None}
    moved = [item for item in valid if hashes.get(item[0]) in train_digests]
    if not moved:
        return train, valid, 0
    moved_set = set(moved)
    return sorted(train + moved), [item for item in valid if item not in moved_set], len(moved)


def check_report(dataset, errors: Sequence[str]) -> dict:
    """The ``graft check --json`` document for a scanned :class:`graft.image.data.Dataset`."""
    usable = sum(len(items) for items in dataset.splits.values())
    unused_files = sum(1 for entry in dataset.skipped if os.path.isfile(entry["file"]))
    return {
        "data": dataset.root,
        "layout": dataset.layout,
        "classes": dataset.classes,
        "counts": {name: len(items) for name, items in dataset.splits.items()},
        "images": usable + unused_files,
        "usable": usable,
        "skipped": dataset.skipped,
        "skipped_by_reason": summarise(dataset.skipped),
        "warnings": dataset.warnings,
        "errors": list(errors),
        "ok": not errors,
    }
