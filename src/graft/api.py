"""graft's public functions: ``classify``, ``train``, ``load``, ``evaluate``, ``predict``.

Each is a thin composition of the modules (backbones, data, strategies, training, runs); the CLI
calls exactly these and adds nothing but formatting.
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import torch
from timm.data import ImageNetInfo

from graft import plots, report
from graft.backbones import create_backbone
from graft.console import progress as make_progress
from graft.console import stderr, table
from graft.data import ImageDataset, collect_image_paths, scan_folder, scan_for_evaluation
from graft.errors import ConfigError
from graft.evaluation import classification_metrics, predict_probabilities
from graft.freeze import parameter_counts
from graft.model import build_transfer_model
from graft.multitask.run import train_multitask  # several tasks or domains in one model (hard or soft sharing)
from graft.reproducibility import seed_everything, worker_init
from graft.runs import ADVICE, CONFIG, CONFUSION, HISTORY, LEARNING_CURVE, MANIFEST, METRICS, PLAN, REPORT, RunFolder, TrainedModel, load_run
from graft.strategies import AUTO, DEFAULT_BACKBONE_LR_MULT, DEFAULT_BN, plan_for_mode, resolve_auto
from graft.training import FitState, fit_head_first

DEFAULT_BACKBONE = "tf_efficientnet_lite0"
DEFAULT_EPOCHS = {"extract": 10, "finetune": 10}

__all__ = ["DEFAULT_BACKBONE", "check", "classify", "evaluate", "load", "predict", "train", "train_multitask"]


def load(run: str | os.PathLike) -> TrainedModel:
    """Load a run folder (the only loader): ``graft.load("runs/signs").predict(["a.jpg"])``."""
    return load_run(run)


def check(data: str | os.PathLike, valid_fraction: float = 0.2, seed: int = 0) -> dict[str, Any]:
    """Inspect a data folder as ``train`` would, without training: images, usable, skipped (file, reason),
    warnings (file, message: duplicates, missing classes, odd names) and errors that would stop training."""
    from graft.checking import check_report

    errors: list[str] = []
    dataset = scan_folder(data, valid_fraction=valid_fraction, seed=seed, errors=errors)
    return check_report(dataset, errors)


def _loader(dataset, batch_size: int, shuffle: bool, num_workers: int, generator: torch.Generator | None = None):
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        worker_init_fn=worker_init,
        generator=generator,
    )


def _default_workers() -> int:
    return min(2, os.cpu_count() or 1)


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
    augment: bool = True,
    bn: str | None = None,
    backbone_lr_mult: float | None = None,
    valid_fraction: float = 0.2,
    num_workers: int | None = None,
    deterministic: bool = False,
    quiet: bool = False,
    head_epochs: int | None = None,
) -> dict[str, Any]:
    """Train a classifier on an image folder by transfer from a pretrained backbone; write a run folder.

    ``mode="extract"`` freezes the whole backbone and trains a new head; ``mode="finetune"`` also
    trains the last ``unfreeze`` stages at ``lr * backbone_lr_mult``; ``mode="auto"`` runs
    ``graft.advise`` first and trains its plan (options given explicitly win; the advice is saved as
    ``advice.json``). ``head_epochs`` trains the head alone first. ``pretrained=False`` starts from
    random weights (the from-scratch baseline). Returns the ``train`` JSON summary.
    """
    began = time.perf_counter()
    advice = None
    if mode == AUTO:
        if not pretrained:
            raise ConfigError("--mode auto measures the pretrained backbone; it cannot be combined with --from-scratch",
                              hint="pick --mode extract or finetune for a from-scratch baseline")
        from graft.advisor import advise as run_advise

        advice = run_advise(data, backbone=backbone, weights=weights, seed=seed, valid_fraction=valid_fraction)
        resolved = resolve_auto(advice.plan.to_dict(), unfreeze=unfreeze, epochs=epochs, lr=lr, backbone_lr_mult=backbone_lr_mult, bn=bn, head_epochs=head_epochs)
        mode, unfreeze, epochs, lr, backbone_lr_mult, bn, head_epochs = (resolved[k] for k in ("mode", "unfreeze", "epochs", "lr", "backbone_lr_mult", "bn", "head_epochs"))
    backbone_lr_mult = DEFAULT_BACKBONE_LR_MULT if backbone_lr_mult is None else backbone_lr_mult
    bn = DEFAULT_BN if bn is None else bn
    head_epochs = 0 if head_epochs is None else head_epochs
    epochs = DEFAULT_EPOCHS.get(mode, 10) if epochs is None else epochs
    for name, value in (("--epochs", epochs), ("--batch-size", batch_size), ("--patience", patience)):
        if value < 1:
            raise ConfigError(f"{name} must be at least 1; got {value}")
    if not 0 < valid_fraction < 1:
        raise ConfigError(f"valid_fraction must be between 0 and 1; got {valid_fraction}")
    run = RunFolder(out)
    run.prepare()
    dataset = scan_folder(data, valid_fraction=valid_fraction, seed=seed)
    generator = seed_everything(seed, deterministic)
    loaded = create_backbone(backbone, weights=weights, pretrained=pretrained)
    model = build_transfer_model(loaded.model, head, len(dataset.classes))
    plan = plan_for_mode(mode, model.stage_names, lr=lr, unfreeze=unfreeze, backbone_lr_mult=backbone_lr_mult, bn_policy=bn)
    plan.apply(model)
    counts = parameter_counts(model)
    plan_rows = plan.rows(model)
    if not quiet:
        stderr.print(f"[bold]graft train[/]: {dataset.layout}; {len(dataset.classes)} classes; "
                     + ", ".join(f"{name} {len(items)}" for name, items in dataset.splits.items())
                     + (f"; [yellow]{len(dataset.skipped)} file(s) skipped (see manifest.json)[/]" if dataset.skipped else "")
                     + (f"; [yellow]{len(dataset.warnings)} warning(s)[/] (graft check {data} lists them)" if dataset.warnings else ""))
        stderr.print(table(f"freeze plan ({mode}, {backbone})", ["part", "status", "params", "lr", "batchnorm"],
                           [[r["part"], r["status"], f"{r['params']:,}", f"{r['lr']:.2g}", r["batchnorm"]] for r in plan_rows]))
        stderr.print(f"trainable params: {counts['trainable']:,}   frozen params: {counts['frozen']:,}")
    config = {
        "graft_version": _version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data": {"root": str(data), "layout": dataset.layout, "counts": {k: len(v) for k, v in dataset.splits.items()}, "skipped": len(dataset.skipped)},
        "backbone": {"name": backbone, "architecture": loaded.report.architecture, "load_report": loaded.report.to_dict()},
        "preprocessing": loaded.preprocessing.to_dict(),
        "mode": mode,
        "head": head,
        "classes": dataset.classes,
        "hyperparameters": {
            "epochs": epochs, "lr": plan.lr, "backbone_lr_mult": backbone_lr_mult, "batch_size": batch_size, "seed": seed,
            "patience": patience, "augment": augment, "bn": plan.bn_policy, "unfreeze": len(plan.trainable_stages),
            "valid_fraction": valid_fraction, "deterministic": deterministic, "head_epochs": head_epochs,
        },
        "params": counts,
    }
    if advice is not None:
        config["advice"] = {"file": ADVICE, "scenario": advice.scenario, "similarity": advice.similarity, "plan": advice.plan.to_dict()}
        run.write_json(ADVICE, advice.to_dict())
        if not quiet:
            stderr.print(f"[bold]advice[/]: scenario {advice.scenario}, similarity {advice.similarity:.2f}; " + "; ".join(advice.reasons[2:]))
    run.write_json(CONFIG, config)
    run.write_json(PLAN, plan.to_dict())
    run.write_json(MANIFEST, dataset.manifest())

    workers = _default_workers() if num_workers is None else num_workers
    eval_transform = loaded.preprocessing.eval_transform()
    train_transform = loaded.preprocessing.train_transform() if augment else eval_transform
    train_loader = _loader(ImageDataset(dataset.split("train"), train_transform), batch_size, True, workers, generator)
    valid_loader = _loader(ImageDataset(dataset.split("valid"), eval_transform), batch_size, False, workers)

    def save_epoch(state: FitState) -> None:
        history = [record.to_dict() for record in state.history]
        run.write_json(HISTORY, history)
        if state.improved:
            run.write_weights(state.model.state_dict(), {"epoch": str(state.best_epoch)})
        plots.learning_curve(history, run / LEARNING_CURVE, title=f"{backbone}, {mode}")

    with make_progress(quiet) as progress:
        state = fit_head_first(model, plan, train_loader, valid_loader, epochs=epochs, head_epochs=head_epochs, patience=patience,
                               on_epoch_end=save_epoch, progress=progress)
        metrics = {"best_epoch": state.best_epoch}
        for split in ("valid", "test"):
            items = dataset.split(split)
            if items:
                loader = valid_loader if split == "valid" else _loader(ImageDataset(items, eval_transform), batch_size, False, workers)
                probabilities, labels = predict_probabilities(model, loader, progress=progress, description=f"evaluate {split}")
                metrics[split] = classification_metrics(probabilities, labels, dataset.classes)
    final_split = "test" if "test" in metrics else "valid"
    plots.confusion_matrix(metrics[final_split]["confusion_matrix"], dataset.classes, run / CONFUSION, title=f"confusion matrix ({final_split})")
    seconds = time.perf_counter() - began
    metrics["seconds"] = seconds
    run.write_json(METRICS, metrics)
    history = [record.to_dict() for record in state.history]
    (run / REPORT).write_text(report.render(run.path, config, plan_rows, history, metrics), encoding="utf-8")
    summary = {
        "run": str(run.path),
        "mode": mode,
        "backbone": backbone,
        "best_epoch": state.best_epoch,
        "epochs_run": len(state.history),
        "valid_accuracy": metrics["valid"]["accuracy"],
        "test_accuracy": metrics["test"]["accuracy"] if "test" in metrics else None,
        "seconds": seconds,
        "params": counts,
        "skipped": len(dataset.skipped),
        "unfreeze": len(plan.trainable_stages),
        "head_epochs": head_epochs,
    }
    if advice is not None:
        summary["advice"] = {"scenario": advice.scenario, "similarity": advice.similarity, "seconds": advice.seconds}
    if not quiet:
        test_text = f", test accuracy {summary['test_accuracy']:.4f}" if summary["test_accuracy"] is not None else ""
        stderr.print(f"[green]done[/] in {seconds:.1f}s: best epoch {state.best_epoch}, valid accuracy {summary['valid_accuracy']:.4f}{test_text}; run saved to {run.path}")
    return summary


def evaluate(run: str | os.PathLike | TrainedModel, data: str | os.PathLike | None = None, out_png: str | os.PathLike | None = None, batch_size: int = 32) -> dict[str, Any]:
    """Loss, accuracy, per-class precision/recall/F1 and confusion matrix of a run on labelled data.

    A multi-task run reports every task (accuracy/F1, or MAE); without ``data`` it uses its held-out test split.
    """
    trained = run if isinstance(run, TrainedModel) or hasattr(run, "tasks") else load_run(run)
    if not isinstance(trained, TrainedModel):  # a multi-task run: every task's metrics
        return trained.evaluate(data, batch_size=batch_size)
    if data is None:
        raise ConfigError("evaluate needs DATA (labelled images) for a single-task run")
    items, skipped, folder = scan_for_evaluation(data, trained.classes)
    loader = _loader(ImageDataset(items, trained.preprocessing.eval_transform()), batch_size, False, _default_workers())
    probabilities, labels = predict_probabilities(trained.model, loader)
    metrics = classification_metrics(probabilities, labels, trained.classes)
    metrics["skipped"] = skipped
    target = Path(out_png) if out_png else trained.path / "evaluate_confusion_matrix.png"
    plots.confusion_matrix(metrics["confusion_matrix"], trained.classes, target, title=f"confusion matrix ({Path(folder).name})")
    metrics["confusion_matrix_png"] = str(target)
    return metrics


def predict(run: str | os.PathLike | TrainedModel, images: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """Label and class probabilities for each image, from a trained run."""
    trained = run if isinstance(run, TrainedModel) or hasattr(run, "tasks") else load_run(run)
    return trained.predict(images)


def _version() -> str:
    from graft import __version__

    return __version__
