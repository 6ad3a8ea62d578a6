"""graft's public functions: ``classify``, ``train``, ``resume``, ``load``, ``evaluate``, ``predict``.

Each is a thin composition of the modules (backbones, data, strategies, training, runs); the CLI
calls exactly these and adds nothing but formatting.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from timm.data import ImageNetInfo

from graft.core import trainer
from graft.core.config import DEFAULT_BACKBONE, RunConfig
from graft.core.inputs import check_workers
from graft.core.runs import TrainedRun, load_run
from graft.errors import ConfigError
from graft.image.backbones import create_backbone
from graft.image.data import ImageDataset, collect_image_paths, scan_folder

__all__ = ["DEFAULT_BACKBONE", "check", "classify", "evaluate", "load", "predict", "resume", "train", "train_multitask"]


def load(run: str | os.PathLike) -> TrainedRun:
    """Load a run folder (the only loader): ``graft.load("runs/signs").predict(["a.jpg"])``."""
    return load_run(run)


def check(data: str | os.PathLike, valid_fraction: float = 0.2, seed: int = 0) -> dict[str, Any]:
    """Inspect a data folder as ``train`` would, without training: images, usable, skipped (file, reason),
    warnings (file, message: duplicates, missing classes, odd names) and errors that would stop training."""
    from graft.image.checking import check_report

    errors: list[str] = []
    dataset = scan_folder(data, valid_fraction=valid_fraction, seed=seed, errors=errors)
    return check_report(dataset, errors)


def classify(
    images: Sequence[str | os.PathLike], backbone: str = DEFAULT_BACKBONE, top: int = 5, weights: str | None = None
) -> list[dict[str, Any]]:
    """Use the pretrained ImageNet classifier as is: the ``top`` labels with probabilities for each image."""
    if top < 1:
        raise ConfigError(f"--top must be at least 1; got {top}")
    paths = collect_image_paths(images)
    loaded = create_backbone(backbone, weights=weights)
    info = ImageNetInfo()
    loader = torch.utils.data.DataLoader(
        ImageDataset([(p, -1) for p in paths], loaded.preprocessing.eval_transform()), batch_size=16
    )
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
    data: str | os.PathLike | None,
    out: str | os.PathLike,
    *,
    mode: str = "extract",
    backbone: str = DEFAULT_BACKBONE,
    weights: str | os.PathLike | None = None,
    pretrained: bool = True,
    unfreeze: int | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    backbone_lr_mult: float | None = None,
    bn: str | None = None,
    head: str = "linear",
    head_epochs: int | None = None,
    batch_size: int = 32,
    augment: bool | None = None,
    views: int | None = None,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
    patience: int = 5,
    time_budget: float | None = None,
    seed: int = 0,
    deterministic: bool = False,
    device: str = "auto",
    log: str | None = None,
    labels: str | None = None,
    tasks: str | Sequence[str] | None = None,
    domains: dict[str, str] | None = None,
    sharing: str | None = None,
    tie: float | None = None,
    task_weighting: str | None = None,
    valid_fraction: float | None = None,
    test_fraction: float | None = None,
    limit: int | None = None,
    num_workers: int | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Train by transfer from a pretrained backbone and write a run folder; returns the ``train`` JSON summary.

    What is learned:
        data: a folder of class folders (``DATA/<class>/`` or ``DATA/{train,valid,test}/<class>/``): one
            classifier; with ``labels``, a folder of images with several labels each.
        labels: where several tasks' labels come from: ``"utkface"`` (file names), a CSV file, or
            ``"re:PATTERN"`` with a named group per task; ``tasks`` picks and types them
            (``"age,gender"`` or ``"size:regression,kind:a/b"``).
        domains: ``{name: path}`` for several domains in one model (a head per domain), instead of ``data``.
        valid_fraction, test_fraction: held-out shares (default 0.2 for one classifier; 0.15 and 0.15
            for several tasks); limit: a seeded subset of that many images (several tasks).

    How much is transferred:
        mode: ``"extract"`` (frozen backbone, new head), ``"finetune"`` (also the last ``unfreeze``
            stages, at ``lr * backbone_lr_mult``), or ``"auto"`` (``graft.advise`` measures the data and
            picks; options given explicitly win; the advice is saved as ``advice.json``).
        backbone, weights, pretrained: the source network (a built-in or timm name; a weights file;
            ``pretrained=False`` for a from-scratch baseline).
        bn: BatchNorm statistics of trained stages (``"train"`` or ``"frozen"``); head: ``"linear"`` or
            ``"mlp"``; head_epochs: epochs training the new head alone first (fastai's ``fine_tune``).
        sharing, tie, task_weighting: several tasks: one trunk (``"hard"``) or a tower per task tied by
            ``tie`` (``"soft"``); learned (``"uncertainty"``) or ``"equal"`` task weights.

    Inputs, budget and runtime:
        batch_size; augment (default: finetune yes, extract no); views: augmented views per training
            image computed through the frozen stages once and cached (default 4); cache, cache_dir:
            the activation cache (``cache=False`` recomputes the frozen part every epoch); image_size:
            instead of the backbone's input size.
        epochs (default 10), patience (epochs without a better validation score), time_budget (seconds).
        seed, deterministic (identical numbers on a rerun on the same CPU), device (``"auto"``: CUDA when
            torch sees a GPU; ``"cpu"``, ``"cuda"``, ``"cuda:N"``), num_workers (processes of the frozen pass
            and of image decoding), quiet; log: ``"tensorboard"`` writes every epoch's scalars and the
            confusion matrices to ``RUN/tensorboard/`` (``tensorboard --logdir RUN``).

    Every option is checked before any work (:mod:`graft.core.config`); one that does not apply to the
    run (e.g. ``tie`` without soft sharing, ``unfreeze`` with ``mode="extract"``) is refused.
    """
    config = RunConfig(
        data=_text(data),
        labels=labels,
        tasks=",".join(tasks) if isinstance(tasks, (list, tuple)) else tasks,
        domains=domains,
        valid_fraction=valid_fraction,
        test_fraction=test_fraction,
        limit=limit,
        mode=mode,
        backbone=backbone,
        weights=_text(weights),
        pretrained=pretrained,
        unfreeze=unfreeze,
        lr=lr,
        backbone_lr_mult=backbone_lr_mult,
        bn=bn,
        head=head,
        head_epochs=head_epochs,
        sharing=sharing,
        tie=tie,
        task_weighting=task_weighting,
        batch_size=batch_size,
        augment=augment,
        views=views,
        cache=cache,
        cache_dir=_text(cache_dir),
        image_size=image_size,
        epochs=epochs,
        patience=patience,
        time_budget=time_budget,
        seed=seed,
        deterministic=deterministic,
        device=device,
        log=log,
    )
    return trainer.train(config, out, num_workers=num_workers, quiet=quiet)


def train_multitask(data: str | os.PathLike | None, out: str | os.PathLike, **options: Any) -> dict[str, Any]:
    """:func:`train` for several tasks (``labels=...``) or domains (``domains=...``): the same options,
    and a clear error when neither is given."""
    if options.get("labels") is None and options.get("domains") is None:
        raise ConfigError(
            "multi-task training needs --labels (a preset such as utkface, a CSV file, or re:PATTERN), or --domain "
            "NAME=PATH per domain"
        )
    return train(data, out, **options)


def _text(value: str | os.PathLike | None) -> str | None:
    return None if value is None else str(value)


def resume(run: str | os.PathLike, *, num_workers: int | None = None, quiet: bool = False) -> dict[str, Any]:
    """Continue a killed or interrupted run of any kind from its last completed epoch (same plan,
    optimizer, schedule and random state); returns the ``train`` JSON summary."""
    check_workers(num_workers)
    return trainer.resume(run, num_workers=num_workers, quiet=quiet)


def evaluate(
    run: str | os.PathLike | TrainedRun, data: str | os.PathLike | None = None, batch_size: int = 32
) -> dict[str, Any]:
    """Metrics of a run on labelled data: loss, accuracy, per-class precision/recall/F1 and a confusion
    matrix PNG (a multi-task run: every task, accuracy/F1 or MAE). Without ``data``: the run's held-out
    test split (valid if it has none)."""
    trained = load_run(run) if isinstance(run, (str, os.PathLike)) else run
    return trained.evaluate(data, batch_size=batch_size)


def predict(run: str | os.PathLike | TrainedRun, images: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """Predictions for each input, from a trained run of any kind."""
    trained = load_run(run) if isinstance(run, (str, os.PathLike)) else run
    return trained.predict(images)
