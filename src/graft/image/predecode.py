"""Decode images while graft starts: the second core's work during the first core's imports.

A ``graft train`` on images spends its first ~3 seconds importing torch and timm and building the network
on one core; the other core has nothing to do. Before those imports, :func:`start` forks a child process
(it has imported neither, so the fork is cheap and safe) that decodes the data folder's images into shared
memory exactly as the backbone's evaluation transform would (resize, centre crop, uint8 pixels), as many
as fit in :data:`BUDGET_BYTES`. When the frozen pass begins it stops the child and takes the images that
are ready instead of decoding them again (:meth:`Predecoded.serving`); the rest are decoded as before.

The preprocessing is the backbone's spec (:mod:`graft.image.backbones.registry`, data that needs neither
torch nor timm). The pass uses an image only if the preprocessing it runs with turns out to be the same
(:meth:`Predecoded.matches`), and :func:`clean_pixels` gives the evaluation transform's pixels to the bit
(tests/test_predecode.py), so cached activations do not depend on which process decoded an image.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from graft.image.data import IMAGE_EXTENSIONS, load_image
from graft.image.preprocessing import Preprocessing

# Shared memory for decoded images at most (224 px: ~2,600 images): more than the imports give time to
# decode on one core (~1.6 ms an image), and bounded so a 100,000-image folder costs no more.
BUDGET_BYTES = 384 * 2**20
OPT_OUT = "GRAFT_PREDECODE"  # set to 0 to decode only in the frozen pass (an A/B comparison)
# torchvision's InterpolationMode names (what timm's transforms resize with) as Pillow's filters.
_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}
# Per image one status byte: not yet, decoded, or failed (the pass then decodes it and reports the problem).
_PENDING, _READY, _FAILED = 0, 1, 2
# After the status bytes: a stop flag the parent sets, then the child's clock when its first image was ready
# (written on its own, never over the flag).
_HEADER = struct.Struct("<Bd")
_STAMP = struct.Struct("<d")

_running: Predecoded | None = None


def clean_pixels(path: str, preprocessing: Preprocessing) -> np.ndarray:
    """The uint8 pixels (3, size, size) of the image at ``path`` as ``preprocessing.eval_transform(normalize=
    False)`` gives them: the shorter side resized to ``floor(size / crop_pct)`` with Pillow's filter, the
    longer one in proportion (rounded down), then the centred square (torchvision's Resize and CenterCrop)."""
    image = load_image(path)
    size = preprocessing.input_size
    scaled = math.floor(size / preprocessing.crop_pct)
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = scaled, int(scaled * long / short)
    new_width, new_height = (new_short, new_long) if width <= height else (new_long, new_short)
    if (new_width, new_height) != (width, height):
        image = image.resize((new_width, new_height), _FILTERS[preprocessing.interpolation])
    top, left = int(round((new_height - size) / 2.0)), int(round((new_width - size) / 2.0))
    image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)


def can_predecode(preprocessing: Preprocessing) -> bool:
    """Whether :func:`clean_pixels` reproduces this preprocessing (a known filter; never a crop larger than
    the resized image, which torchvision would pad)."""
    return preprocessing.interpolation in _FILTERS and math.floor(
        preprocessing.input_size / preprocessing.crop_pct
    ) >= (preprocessing.input_size)


def image_files(root: str, limit: int) -> list[str]:
    """Up to ``limit`` image files under ``root`` (folders and names sorted, hidden ones left out): the order
    the child decodes them in. A best guess at what the scan will find; a file it lists that the scan does
    not use is decoded for nothing, one the scan uses that is missing here is decoded by the pass."""
    found: list[str] = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        for name in sorted(names):
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(os.path.abspath(os.path.join(folder, name)))
                if len(found) == limit:
                    return found
    return found


class Predecoded:
    """Images being decoded by a child process into shared memory (anonymous, so worker processes forked
    later see it too). Create it with :func:`start`."""

    def __init__(self, paths: Sequence[str], preprocessing: Preprocessing, started: float):
        self.preprocessing = preprocessing
        self.paths = list(paths)
        self.slots = {path: slot for slot, path in enumerate(self.paths)}
        self.image_bytes = 3 * preprocessing.input_size**2
        self.started = started
        self.pixels = mmap.mmap(-1, max(len(self.paths), 1) * self.image_bytes)
        self.status = mmap.mmap(-1, len(self.paths) + _HEADER.size)
        self.child: int | None = None

    def run_child(self, parent: int) -> None:
        """The child's work: decode every image in order, until done, told to stop, or ``parent`` is gone
        (killed: nobody will read the images)."""
        warnings.simplefilter("ignore")  # the pass decodes a problem file again and reports it there, once
        first = True
        for slot, path in enumerate(self.paths):
            if self.status[len(self.paths)] or os.getppid() != parent:
                return
            try:
                pixels = clean_pixels(path, self.preprocessing)
            except Exception:  # noqa: BLE001  (any problem: the pass decodes this image itself and reports it)
                self.status[slot] = _FAILED
                continue
            start = slot * self.image_bytes
            self.pixels[start : start + self.image_bytes] = pixels.tobytes()
            self.status[slot] = _READY
            if first:
                _STAMP.pack_into(self.status, len(self.paths) + 1, time.monotonic())
                first = False

    def stop(self) -> None:
        """Tell the child to stop after its current image and wait for it; what it decoded stays readable."""
        if self.child is None:
            return
        self.status[len(self.paths)] = 1
        try:
            os.waitpid(self.child, 0)
        except ChildProcessError:  # already reaped
            pass
        self.child = None

    def matches(self, preprocessing: Preprocessing) -> bool:
        """Whether images decoded for this preprocessing are what ``preprocessing`` would give."""
        return (preprocessing.input_size, preprocessing.interpolation, preprocessing.crop_pct) == (
            self.preprocessing.input_size,
            self.preprocessing.interpolation,
            self.preprocessing.crop_pct,
        )

    def pixels_of(self, path: str) -> np.ndarray | None:
        """The decoded pixels of ``path``, or None where the child did not get to it (or it failed)."""
        slot = self.slots.get(os.path.abspath(path))
        if slot is None or self.status[slot] != _READY:
            return None
        size = self.preprocessing.input_size
        start = slot * self.image_bytes
        return np.frombuffer(self.pixels, np.uint8, self.image_bytes, start).reshape(3, size, size).copy()

    def ready(self) -> int:
        """How many images are decoded."""
        return self.status[: len(self.paths)].count(_READY)

    def describe(self) -> dict[str, Any]:
        """For the run's metrics: images listed, decoded ahead, and when the first one was ready."""
        return {"listed": len(self.paths), "decoded": self.ready(), "first_image_seconds": self.first_image_seconds()}

    def first_image_seconds(self) -> float | None:
        """Seconds from this process's start to the child's first decoded image (None before there is one)."""
        stamp = _HEADER.unpack_from(self.status, len(self.paths))[1]
        return None if stamp == 0 else stamp - self.started

    def serving(self, dataset: Any) -> Any:
        """``dataset`` (an :class:`~graft.image.decoded.ImageDataset` of clean views) with the decoded images
        taken from here."""
        from graft.image.decoded import PredecodedImages

        return PredecodedImages(dataset, self)


def start(data: str, preprocessing: Preprocessing, *, process_age: float | None) -> Predecoded | None:
    """Fork the decoding child for the images under ``data``; None where there is nothing to gain: torch is
    imported already (a notebook, a test: no imports left to overlap), one core, no fork, one of several
    processes of a run (each shards the frozen pass: a child per process would decode every image again), a
    preprocessing :func:`clean_pixels` cannot reproduce, or no image files. ``process_age``: seconds since the process
    started (:func:`graft.perf.process_seconds`), to report when the first image was ready."""
    global _running
    import sys

    from graft.perf import usable_cores

    stop_running()
    if os.environ.get(OPT_OUT) == "0" or "torch" in sys.modules or not hasattr(os, "fork") or usable_cores() < 2:
        return None
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        return None
    if not can_predecode(preprocessing) or not os.path.isdir(data):
        return None
    paths = image_files(data, BUDGET_BYTES // (3 * preprocessing.input_size**2))
    if not paths:
        return None
    _running = launch(paths, preprocessing, started=time.monotonic() - (process_age or 0.0))
    return _running


def launch(paths: Sequence[str], preprocessing: Preprocessing, *, started: float) -> Predecoded:
    """Fork the child that decodes ``paths`` (absolute) for ``preprocessing``; ``started``: the monotonic
    clock's reading when this process started."""
    predecoded = Predecoded(paths, preprocessing, started)
    parent = os.getpid()
    child = os.fork()
    if child == 0:  # the child: decode, then leave without running the parent's exit handlers
        code = 0
        try:
            predecoded.run_child(parent)
        except BaseException:  # noqa: BLE001  (Ctrl-C included: the parent reports; the child just ends)
            code = 1
        os._exit(code)
    predecoded.child = child
    return predecoded


def running() -> Predecoded | None:
    """The decoding this process started, if any."""
    return _running


def stop_running() -> None:
    """Stop the child (if any) and forget its images: the process is done with them."""
    global _running
    if _running is not None:
        _running.stop()
        _running = None
