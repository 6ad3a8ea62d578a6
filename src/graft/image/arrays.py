"""Images stored as arrays, the way large labelled sets are shipped: a NumPy ``.npz`` file with Keras's
``mnist.npz`` layout (``x_train``, ``y_train``, and optionally ``x_test``, ``y_test``, ``class_names``), or a
folder of IDX files named as MNIST's and Fashion-MNIST's (``train-images-idx3-ubyte[.gz]``,
``train-labels-idx1-ubyte[.gz]``, ``t10k-...`` for the test split).

Images are ``(n, height, width)`` or ``(n, height, width, 1 or 3)``, ``uint8`` or floats in [0, 1]; labels
are class indices. graft unpacks them once into PNG class folders in its cache (keyed by the files'
sha256; written aside and renamed, so an interrupted unpacking is never used), and from then on they are
image data like any other: every command, the activation cache and the run's manifest work unchanged.
``.npz`` files are read with ``allow_pickle=False``: arrays only, never Python objects.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from graft.errors import DataError

SPLITS = {"train": "train", "t10k": "test"}  # IDX file prefix -> graft split
NPZ_SPLITS = {"train": "train", "test": "test"}


def idx_files(folder: Path, prefix: str, what: str) -> Path | None:
    """``folder``'s IDX file of ``what`` (images or labels) for the split ``prefix`` (train or t10k), if any."""
    for suffix in ("", ".gz"):
        name = f"{prefix}-{what}-idx{3 if what == 'images' else 1}-ubyte{suffix}"
        if (folder / name).is_file():
            return folder / name
    return None


def is_array_data(location: str | os.PathLike | None) -> bool:
    """Whether ``location`` is an ``.npz`` file or a folder of MNIST-named IDX files."""
    if location is None:
        return False
    path = Path(location)
    if path.is_file():
        return path.suffix == ".npz"
    return path.is_dir() and idx_files(path, "train", "images") is not None


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (the format of MNIST's files: a magic number, the dimensions, then the values)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as stream:
            data = stream.read()
    except OSError as error:
        raise DataError(f"could not read IDX file '{path}': {error}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"'{path}' is not an IDX file of unsigned bytes (its magic number is wrong)")
    dimensions = data[3]
    header = 4 + 4 * dimensions
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dimensions))
    values = np.frombuffer(data, dtype=np.uint8, offset=header)
    if values.size != int(np.prod(shape)):
        raise DataError(f"IDX file '{path}' is truncated: its header says {shape}, it holds {values.size} values")
    return values.reshape(shape)


def read_arrays(location: str | os.PathLike) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str] | None]:
    """``{split: (images, labels)}`` and the class names if the file names them."""
    path = Path(location)
    splits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    names = None
    if path.is_dir():
        for prefix, split in SPLITS.items():
            images, labels = idx_files(path, prefix, "images"), idx_files(path, prefix, "labels")
            if images is None:
                continue
            if labels is None:
                raise DataError(f"'{images}' has no labels file beside it ({prefix}-labels-idx1-ubyte[.gz])")
            splits[split] = (read_idx(images), read_idx(labels))
    else:
        try:
            with np.load(path, allow_pickle=False) as arrays:
                found = dict(arrays.items())
        except ValueError as error:
            raise DataError(f"could not read '{path}' as arrays: {error}", hint="an .npz of plain arrays") from None
        except (OSError, EOFError) as error:
            raise DataError(f"could not read '{path}': {error}") from None
        for suffix, split in NPZ_SPLITS.items():
            if f"x_{suffix}" in found or f"y_{suffix}" in found:
                if f"x_{suffix}" not in found or f"y_{suffix}" not in found:
                    raise DataError(f"'{path}' has only one of x_{suffix} and y_{suffix}")
                splits[split] = (found[f"x_{suffix}"], found[f"y_{suffix}"])
        if "class_names" in found:
            names = [str(name) for name in found["class_names"]]
        if "train" not in splits:
            raise DataError(
                f"'{path}' has no x_train and y_train arrays (it has {', '.join(sorted(found)) or 'none'})",
                hint="the layout of Keras's mnist.npz: x_train, y_train, optionally x_test, y_test, class_names",
            )
    for split, (images, labels) in splits.items():
        splits[split] = _checked(path, split, images, labels)
    return splits, names


def _checked(path: Path, split: str, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
        raise DataError(f"'{path}' {split} images have shape {images.shape}; expected (n, height, width[, 1 or 3])")
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(images):
        raise DataError(f"'{path}' has {len(images)} {split} images but {len(labels)} labels")
    if not np.issubdtype(labels.dtype, np.integer) or (labels < 0).any():
        raise DataError(f"'{path}' {split} labels must be class indices (integers from 0); got {labels.dtype}")
    if images.dtype != np.uint8:
        if not np.issubdtype(images.dtype, np.floating) or images.min() < 0 or images.max() > 1:
            raise DataError(f"'{path}' {split} images must be uint8, or floats in [0, 1]; got {images.dtype}")
        images = np.round(images * 255).astype(np.uint8)
    return images, labels.astype(np.int64)


def sources_digest(location: str | os.PathLike) -> str:
    """The identity of the arrays at ``location``: the names and contents of its files."""
    from graft.fileio import sha256_file

    path = Path(location)
    files = sorted(p for p in path.iterdir() if "idx" in p.name) if path.is_dir() else [path]
    return hashlib.sha256("".join(f"{file.name}:{sha256_file(file)};" for file in files).encode()).hexdigest()[:16]


def as_image_folder(
    location: str | os.PathLike, cache_root: str | os.PathLike | None = None, quiet: bool = False
) -> Path:
    """The PNG class folders (``train/``, and ``test/`` when there is a test split) unpacked from the arrays
    at ``location``, made once and reused."""
    from PIL import Image

    from graft.console import progress, progress_task
    from graft.core.cache import default_cache_dir

    root = Path(cache_root) if cache_root is not None else default_cache_dir()
    folder = root / "arrays" / sources_digest(location)
    if folder.is_dir():
        return folder
    splits, names = read_arrays(location)
    count = max(int(labels.max()) for _, labels in splits.values()) + 1
    if names is not None and len(names) < count:
        raise DataError(f"'{location}' names {len(names)} classes but its labels go up to {count - 1}")
    width = len(str(count - 1))
    class_names = names or [str(index).zfill(width) for index in range(count)]
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        total = sum(len(labels) for _, labels in splits.values())
        description = f"unpacking {Path(location).name} into image folders (once)"
        with progress(quiet) as bars, progress_task(bars, description, total) as advance:
            for split, (images, labels) in splits.items():
                for name in {class_names[label] for label in labels}:
                    (staging / split / name).mkdir(parents=True)
                for index, (image, label) in enumerate(zip(images, labels)):
                    target = staging / split / class_names[label] / f"{index:06d}.png"
                    Image.fromarray(image).save(target, compress_level=1)
                    advance(1)
        os.rename(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if not folder.is_dir():
            raise
    return folder
