"""A finished run as the source of another transfer (``--backbone RUN``): the network a user pre-trained
(``graft pretrain``) or trained on an earlier task becomes a backbone like a built-in one. What the run
stands for is resolved once, before anything loads: its architecture, its weights file (whose stages are
taken, its head left) and the input size it was trained at. The new run records those, so it loads
without the source run folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from graft.core.run_files import CONFIG, WEIGHTS
from graft.errors import ConfigError, RunFolderError
from graft.fileio import read_json

TRANSFERABLE_KINDS = ("classifier", "self-taught")  # runs whose stages are a backbone
# the rate its stages fine-tune at, relative to the head's, unless the user says otherwise: features learnt
# without labels must move to become discriminative (MNIST 5-9 -> 0-4 at 10 a class: at 0.1x they lose 1.8
# points to scratch, at 1x they gain 1.1; BENCHMARKS.md section 10)
FINE_TUNE_RATE = {"self-taught": 1.0}


@dataclass(frozen=True)
class Source:
    backbone: str | None
    weights: str | None
    image_size: int | None
    run: str | None = None  # the run folder it came from, if any
    backbone_lr_mult: float | None = None  # the rate the source's kind fine-tunes at (None: graft's default)


def run_config(backbone: str | None) -> dict | None:
    """The config of the graft run folder ``backbone`` names, or None when it names none (a Hugging Face
    model folder also has a config.json: a graft run's has a ``backbone`` section and ``preprocessing``)."""
    if backbone is None or not (Path(backbone) / CONFIG).is_file():
        return None
    try:
        saved = read_json(Path(backbone) / CONFIG)
    except (OSError, ValueError):
        return None
    return (
        saved
        if isinstance(saved, dict) and isinstance(saved.get("backbone"), dict) and "preprocessing" in saved
        else None
    )


def is_run_folder(backbone: str | None) -> bool:
    return run_config(backbone) is not None


def resolve_source(
    backbone: str | None, weights: str | None, image_size: int | None, pretrained: bool = True
) -> Source:
    """``backbone`` as given when it names a network; when it is a run folder, that run's architecture,
    weights and input size (an explicit ``image_size`` wins)."""
    saved = run_config(backbone)
    if saved is None:
        return Source(backbone, weights, image_size)
    folder = Path(backbone)
    if weights is not None:
        raise ConfigError(
            f"--weights does not apply with --backbone {folder}: the run folder's weights are the source",
            hint="drop --weights",
        )
    if not pretrained:
        raise ConfigError(
            f"--from-scratch does not apply with --backbone {folder}: a run folder is a trained source",
            hint=f"--backbone {saved['backbone'].get('name', 'NAME')} --from-scratch "
            "trains its architecture from nothing",
        )
    kind, modality = saved.get("kind", "classifier"), saved.get("modality", "image")
    if kind not in TRANSFERABLE_KINDS or modality != "image":
        raise ConfigError(
            f"--backbone {folder} is a {modality} {kind} run; a run folder is a source for image classifier runs "
            "so far",
            hint="use an image classifier run (graft pretrain or graft train)",
        )
    if not (folder / WEIGHTS).is_file():
        raise RunFolderError(f"run folder '{folder}' has no {WEIGHTS}: it never finished an epoch")
    size = saved.get("preprocessing", {}).get("input_size")
    return Source(
        backbone=str(saved["backbone"]["name"]),
        weights=str((folder / WEIGHTS).resolve()),
        image_size=image_size or size,
        run=str(folder.resolve()),
        backbone_lr_mult=FINE_TUNE_RATE.get(kind),
    )
