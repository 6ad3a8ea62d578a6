"""The files of a run folder, by name, and the check that a folder holds a loadable run: no torch, so
the command can answer a wrong path before it loads anything heavy (:mod:`graft.api`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from graft.errors import RunFolderError

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
PLAN = "freeze_plan.json"
HISTORY = "history.json"
METRICS = "metrics.json"
MANIFEST = "manifest.json"
LEARNING_CURVE = "learning_curve.png"
CONFUSION = "confusion_matrix.png"
REPORT = "report.html"
ADVICE = "advice.json"
LOCK = ".graft.lock"  # holds the pid of the process writing the run
CHECKPOINT = "checkpoint.safetensors"  # an unfinished run's last epoch (graft.core.checkpoint)


def first_split(manifest: dict[str, Any], *names: str) -> str:
    """The first of ``names`` that the run's manifest has images in (e.g. its held-out test split, else
    valid), so every reader of a run picks the same split."""
    return next((name for name in names if manifest["splits"].get(name)), names[-1])


def run_modality(folder: str | os.PathLike) -> str:
    """The modality a run was trained on (``config.json``; runs from before modalities were recorded: image)."""
    import json

    try:
        with open(Path(folder) / CONFIG, encoding="utf-8") as handle:
            return str(json.load(handle).get("modality", "image"))
    except (OSError, ValueError, AttributeError):
        return "image"  # a damaged config is reported by the loader, with its own message


def require_run_folder(path: str | os.PathLike) -> Path:
    """``path`` as a folder that holds a run with weights, or a clear error."""
    folder = Path(path)
    if not folder.is_dir():
        raise RunFolderError(f"run folder '{folder}' does not exist")
    for name in (CONFIG, WEIGHTS):
        if not (folder / name).is_file():
            raise RunFolderError(
                f"run folder '{folder}' has no {name}",
                hint="is this a folder written by graft train (and did it finish an epoch)?",
            )
    return folder
