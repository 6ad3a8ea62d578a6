"""graft's public functions: ``classify``, ``train``, ``resume``, ``load``, ``evaluate``, ``predict``.

Each is a thin composition of the modules (backbones, data, strategies, training, runs); the CLI
calls exactly these and adds nothing but formatting.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch
from timm.data import ImageNetInfo

from graft import trainer
from graft.backbones import create_backbone
from graft.data import ImageDataset, collect_image_paths, scan_folder
from graft.errors import ConfigError
from graft.inputs import check_workers
from graft.multitask.run import train_multitask  # several tasks or domains in one model (hard or soft sharing)
from graft.runs import TrainedRun, load_run, resume_run
from graft.strategies import DEFAULT_VIEWS
from graft.trainer import DEFAULT_BACKBONE, TrainOptions

__all__ = ["DEFAULT_BACKBONE", "check", "classify", "evaluate", "load", "predict", "resume", "train", "train_multitask"]


def load(run: str | os.PathLike) -> TrainedRun:
    """Load a run folder (the only loader): ``graft.load("runs/signs").predict(["a.jpg"])``."""
    return load_run(run)


def check(data: str | os.PathLike, valid_fraction: float = 0.2, seed: int = 0) -> dict[str, Any]:
    """Inspect a data folder as ``train`` would, without training: images, usable, skipped (file, reason),
    warnings (file, message: duplicates, missing classes, odd names) and errors that would stop training."""
    from graft.checking import check_report

    errors: list[str] = []
    dataset = scan_folder(data, valid_fraction=valid_fraction, seed=seed, errors=errors)
    return check_report(dataset, errors)


def classify(images: Sequence[str | os.PathLike], backbone: str = DEFAULT_BACKBONE, top: int = 5, weights: str | None = None) -> list[dict[str, Any]]:
    """Use the pretrained ImageNet classifier as is: the ``top`` labels with probabilities for each image."""
    if top < 1:
        raise ConfigError(f"--top must be at least 1; got {top}")
    paths = collect_image_paths(images)
    loaded = create_backbone(backbone, weights=weights)
    info = ImageNetInfo()
    loader = torch.utils.data.DataLoader(ImageDataset([(p, -1) for p in paths], loaded.preprocessing.eval_transform()), batch_size=16)
    results = []
    with torch.inference_mode():
        for inputs, _ in loader:
            probabilities = torch.softmax(loaded.model(inputs), dim=1)
            values, indices = probabilities.topk(min(top, probabilities.shape[1]), dim=1)
            for row_values, row_indices in zip(values, indices):
                results.append(
                    {
                        "image": paths[len(results)],
                        "top": [
                            {"label": info.index_to_description(int(i)), "index": int(i), "prob": float(v)}
                            for v, i in zip(row_values, row_indices)
                        ],
                    }
                )
    return results


def train(
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    mode: str = "extract",
    backbone: str = DEFAULT_BACKBONE,
    weights: str | None = None,
    pretrained: bool = True,
    unfreeze: int | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int = 32,
    seed: int = 0,
    head: str = "linear",
    patience: int = 5,
    augment: bool | None = None,
    views: int = DEFAULT_VIEWS,
    bn: str | None = None,
    backbone_lr_mult: float | None = None,
    valid_fraction: float = 0.2,
    num_workers: int | None = None,
    deterministic: bool = False,
    quiet: bool = False,
    head_epochs: int | None = None,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Train a classifier on an image folder by transfer from a pretrained backbone; write a run folder.

    ``mode="extract"`` freezes the whole backbone and trains a new head; ``mode="finetune"`` also
    trains the last ``unfreeze`` stages at ``lr * backbone_lr_mult``; ``mode="auto"`` runs
    ``graft.advise`` first and trains its plan (options given explicitly win; the advice is saved as
    ``advice.json``). ``head_epochs`` trains the head alone first. ``pretrained=False`` starts from
    random weights (the from-scratch baseline).

    The frozen stages run once per image: their activations are cached on disk (``cache_dir``,
    default ``~/.cache/graft``) for the clean image (``augment=False``, the default of ``extract``)
    or for ``views`` augmented views (``augment=True``, the default of ``finetune``); ``cache=False``
    recomputes them every epoch with fresh augmentation. ``image_size`` replaces the backbone's input
    size (faster; images smaller than the backbone's size lose nothing). ``device``: ``auto`` (CUDA when
    torch sees a GPU), ``cpu``, ``cuda`` or ``cuda:N``. Returns the ``train`` JSON summary.
    """
    options = TrainOptions(
        data=str(data), mode=mode, backbone=backbone, weights=weights, pretrained=pretrained, unfreeze=unfreeze, epochs=epochs, lr=lr,
        batch_size=batch_size, seed=seed, head=head, patience=patience, augment=augment, views=views, bn=bn, backbone_lr_mult=backbone_lr_mult,
        valid_fraction=valid_fraction, deterministic=deterministic, head_epochs=head_epochs, cache=cache,
        cache_dir=str(cache_dir) if cache_dir is not None else None, image_size=image_size, device=device,
    )
    return trainer.train(options, out, num_workers=num_workers, quiet=quiet)


def resume(run: str | os.PathLike, *, num_workers: int | None = None, quiet: bool = False) -> dict[str, Any]:
    """Continue a killed or interrupted run of any kind from its last completed epoch (same plan,
    optimizer, schedule and random state); returns the ``train`` JSON summary."""
    check_workers(num_workers)
    return resume_run(run, num_workers=num_workers, quiet=quiet)


def evaluate(run: str | os.PathLike | TrainedRun, data: str | os.PathLike | None = None, batch_size: int = 32) -> dict[str, Any]:
    """Metrics of a run on labelled data: loss, accuracy, per-class precision/recall/F1 and a confusion
    matrix PNG (a multi-task run: every task, accuracy/F1 or MAE). Without ``data``: the run's held-out
    test split (valid if it has none)."""
    trained = load_run(run) if isinstance(run, (str, os.PathLike)) else run
    return trained.evaluate(data, batch_size=batch_size)


def predict(run: str | os.PathLike | TrainedRun, images: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """Predictions for each input, from a trained run of any kind."""
    trained = load_run(run) if isinstance(run, (str, os.PathLike)) else run
    return trained.predict(images)
