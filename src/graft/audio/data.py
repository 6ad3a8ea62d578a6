"""Folders of labelled sound files (``DATA/<class>/*.wav`` or ``DATA/{train,valid,test}/<class>/``), read as
image folders are (:func:`graft.image.data.scan_folder`: the same layouts, splits and skip lists), each
file inspected by :func:`graft.audio.signal.inspect_audio` instead of an image decoder."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from graft.audio.signal import AUDIO_EXTENSIONS, inspect_files
from graft.core.dataset import Dataset
from graft.image.data import IMAGE_EXTENSIONS, collect_image_paths, scan_folder
from graft.image.data import scan_for_evaluation as scan_folder_for_evaluation

LOOK_AT = 200  # files looked at to tell a folder of sound files from one of images


def is_audio_data(data: str | os.PathLike | None) -> bool:
    """Whether ``data`` is a folder holding more sound files than images (among the first files found)."""
    if data is None or not Path(data).is_dir():
        return False
    sounds = images = 0
    for _root, _folders, files in os.walk(data):
        for name in files:
            suffix = os.path.splitext(name)[1].lower()
            sounds += suffix in AUDIO_EXTENSIONS
            images += suffix in IMAGE_EXTENSIONS
            if sounds + images >= LOOK_AT:
                return sounds > images
    return sounds > images


def scan_sounds(location: str, *, valid_fraction: float, seed: int, errors: list[str] | None = None) -> Dataset:
    return scan_folder(location, valid_fraction=valid_fraction, seed=seed, errors=errors, inspector=inspect_files)


def scan_for_evaluation(location: str, classes: Sequence[str]):
    return scan_folder_for_evaluation(location, classes, inspector=inspect_files)


def collect_sound_paths(inputs: Sequence[str | os.PathLike]) -> list[str]:
    return collect_image_paths(inputs, AUDIO_EXTENSIONS, "sound files")
