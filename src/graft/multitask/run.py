"""Multi-task and multi-domain runs: ``train_multitask`` writes a run folder, ``resume`` continues it,
``load_trained`` reads it (the "multitask" run kind of :mod:`graft.runs`).

The run folder is the single-task one (config, freeze plan, safetensors weights, history, metrics,
manifest) with ``config["kind"] == "multitask"`` and a ``multitask`` section (tasks, sharing, tie,
weighting, regression scales); ``graft.load`` dispatches on it. Inputs (:mod:`graft.inputs`: the
activation cache, with augmented views when augmenting), the loop (:mod:`graft.core.fit`) and the
checkpoint are those of single-task runs; only the model (a head per task, a tower per task under
soft sharing) and the objective (:mod:`graft.multitask.objective`) differ.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from graft import plots
from graft.backbones import create_backbone
from graft.console import progress as make_progress
from graft.console import stderr, table
from graft.core.callbacks import ProgressBars
from graft.core.checkpoint import load_checkpoint
from graft.core.evaluation import collect_outputs
from graft.core.fit import fit
from graft.core.runtime import Runtime
from graft.data import ImageDataset, collect_image_paths
from graft.errors import ConfigError, DataError, RunFolderError
from graft.fileio import read_json
from graft.freeze import parameter_counts
from graft.inputs import build_inputs, check_workers, default_workers, image_loader
from graft.multitask.model import MultiTaskModel, build_multitask_model
from graft.multitask.objective import MultiTaskObjective, TargetScale, decode, target_scales, task_metrics
from graft.preprocessing import Preprocessing
from graft.reproducibility import seed_everything
from graft.runs import CHECKPOINT, CONFIG, LEARNING_CURVE, MANIFEST, METRICS, PLAN, RunFolder, SaveEveryEpoch, load_weights
from graft.strategies import DEFAULT_VIEWS, augment_by_default, plan_for_mode
from graft.tasks import Task, read_labels, scan_domains, scan_multitask

DEFAULT_BACKBONE = "tf_efficientnet_lite0"


def _targets(items) -> torch.Tensor:
    return torch.tensor([labels for _, labels in items], dtype=torch.float32)


def train_multitask(
    data: str | os.PathLike | None,
    out: str | os.PathLike,
    *,
    labels: str | None = None,
    tasks: str | Sequence[str] | None = None,
    domains: dict[str, str] | None = None,
    sharing: str = "hard",
    tie: float = 0.0,
    weighting: str = "uncertainty",
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
    head_epochs: int = 0,
    bn: str = "train",
    backbone_lr_mult: float = 0.1,
    valid_fraction: float = 0.15,
    test_fraction: float = 0.15,
    image_size: int | None = None,
    limit: int | None = None,
    time_budget: float | None = None,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    num_workers: int | None = None,
    deterministic: bool = False,
    device: str = "auto",
    quiet: bool = False,
    _resuming: bool = False,
) -> dict[str, Any]:
    """Train several tasks (``labels`` + ``tasks`` on ``data``) or several domains (``domains``) in one model.

    ``sharing="hard"``: one trunk (frozen in ``mode="extract"``, last ``unfreeze`` stages trained in
    ``"finetune"``) and a head per task. ``sharing="soft"``: one tower per task from the same
    pretrained weights, with ``tie * sum of squared differences`` between the towers' trained
    parameters added to the loss. Inputs, the activation cache (``views`` augmented views when
    augmenting), the head-first phase (``head_epochs``) and the loop are those of single-task runs.
    Returns the JSON summary (per-task valid/test metrics).
    """
    began = time.perf_counter()
    # everything but where to write and how to show it: resume replays these arguments
    options = {name: str(value) if isinstance(value, os.PathLike) else value for name, value in locals().items()
               if name not in ("out", "quiet", "num_workers", "_resuming", "began")}
    epochs = 10 if epochs is None else epochs
    augment = augment_by_default(mode) if augment is None else augment
    for name, value in (("--epochs", epochs), ("--batch-size", batch_size), ("--patience", patience)):
        if value < 1:
            raise ConfigError(f"{name} must be at least 1; got {value}")
    if views < 0 or head_epochs < 0:
        raise ConfigError(f"--views and --head-epochs must be 0 or more; got {views} and {head_epochs}")
    check_workers(num_workers)
    runtime = Runtime.create(device)
    if (domains is None) == (data is None):
        raise ConfigError("give either DATA with --labels/--tasks, or --domain NAME=PATH (at least two), not both")
    if data is not None and not labels:
        raise ConfigError("multi-task training needs --labels (a preset such as utkface, a CSV file, or re:PATTERN)")
    run = RunFolder(out)
    run.prepare()
    if not _resuming:
        run.refuse_unfinished()
    dataset = (scan_domains(domains, valid_fraction, test_fraction, seed, limit) if domains is not None
               else scan_multitask(data, labels, tasks, valid_fraction, test_fraction, seed, limit))
    if _resuming and json.loads(json.dumps(dataset.manifest())) != read_json(run / MANIFEST):
        raise RunFolderError(f"the data of '{run.path}' changed since the run started (its split no longer matches manifest.json)",
                             hint="restore the data, or train again with another --out")
    seed_everything(seed, deterministic)
    loaded = create_backbone(backbone, weights=weights, pretrained=pretrained)
    preprocessing = loaded.preprocessing if image_size is None else dataclasses.replace(loaded.preprocessing, input_size=int(image_size))
    model = build_multitask_model(lambda: create_backbone(backbone, weights=weights, pretrained=pretrained).model, dataset.tasks, sharing, head,
                                  input_size=preprocessing.input_size)
    plan = plan_for_mode(mode, model.stage_names, lr=lr, unfreeze=unfreeze, backbone_lr_mult=backbone_lr_mult, bn_policy=bn)
    for tower in model.towers.values():
        plan.apply(tower)
    if sharing == "hard" and tie:
        raise ConfigError("--tie only applies to --sharing soft (hard sharing has one trunk)")
    scales = target_scales(dataset.tasks, _targets(dataset.split("train")).numpy())
    objective = MultiTaskObjective(dataset.tasks, scales, weighting, tie=tie)
    counts = parameter_counts(model)
    run.require_space(model)
    if not quiet:
        stderr.print(f"[bold]graft train[/] ({'multi-domain' if domains else 'multi-task'}, {sharing} sharing): "
                     + ", ".join(f"{t.name} ({t.kind}{', ' + str(len(t.classes)) + ' classes' if t.is_classification else ''})" for t in dataset.tasks) + "; "
                     + ", ".join(f"{k} {v}" for k, v in dataset.counts().items())
                     + (f"; [yellow]{len(dataset.skipped)} file(s) skipped (see manifest.json)[/]" if dataset.skipped else ""))
        rows = plan.rows(next(iter(model.towers.values())))
        stderr.print(table(f"freeze plan per tower ({mode}, {backbone}, {len(model.towers)} tower(s))", ["part", "status", "params", "lr"],
                           [[r["part"], r["status"], f"{r['params']:,}", f"{r['lr']:.2g}"] for r in rows]))
        stderr.print(f"trainable params: {counts['trainable']:,}   frozen params: {counts['frozen']:,}")
    config = {
        "kind": "multitask",
        "options": options,
        "graft_version": _version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data": {"root": str(data) if data is not None else None, "counts": dataset.counts(), "skipped": len(dataset.skipped)},
        "backbone": {"name": backbone, "architecture": loaded.report.architecture, "load_report": loaded.report.to_dict()},
        "preprocessing": preprocessing.to_dict(),
        "mode": mode,
        "head": head,
        "classes": [],
        "multitask": {
            "sharing": sharing, "tie": tie, "weighting": weighting, "labels": dataset.source,
            "tasks": [t.to_dict() for t in dataset.tasks], "scales": {k: v.to_dict() for k, v in scales.items()},
            "towers": list(model.towers.keys()), "domains": bool(domains),
        },
        "hyperparameters": {
            "epochs": epochs, "lr": plan.lr, "backbone_lr_mult": backbone_lr_mult, "batch_size": batch_size, "seed": seed, "patience": patience,
            "augment": augment, "views": views, "head_epochs": head_epochs, "bn": plan.bn_policy, "unfreeze": len(plan.trainable_stages),
            "valid_fraction": valid_fraction, "test_fraction": test_fraction, "limit": limit, "time_budget": time_budget,
        },
        "params": counts,
    }
    if not _resuming:
        run.write_json(PLAN, plan.to_dict())
        run.write_json(MANIFEST, dataset.manifest())
        run.write_json(CONFIG, config)  # last: a config.json means the run folder is complete enough to resume

    model.to(runtime.device)
    objective.to(runtime.device)
    title = f"{backbone}, {sharing} sharing, {mode}"
    saver = SaveEveryEpoch(run, lambda history: plots.task_curves(history, run / LEARNING_CURVE, title=title))
    with make_progress(quiet) as progress:
        # the frozen stages are the same in every tower (same pretrained weights, never trained): one tower computes them
        inputs = build_inputs(next(iter(model.towers.values())), dataset, preprocessing, architecture=loaded.report.architecture,
                              trainable_from=plan.trainable_from, augment=augment, views=views, seed=seed, batch_size=batch_size,
                              workers=num_workers, cache=cache, cache_dir=cache_dir, progress=progress, device=runtime.device)
        if not quiet and inputs.description["cached"]:
            stderr.print(f"inputs: activations cached at '{inputs.description['start_stage']}'"
                         + (f" for {inputs.description['views']} augmented view(s) per training image" if inputs.description["views"] else ""))
        resume_state = optimizer_state = scheduler_state = None
        if _resuming and (run / CHECKPOINT).is_file():  # read last: building the model and inputs must not disturb the restored random state
            resume_state, optimizer_state, scheduler_state = load_checkpoint(run / CHECKPOINT, model, objective)
            if not quiet:
                stderr.print(f"[bold]graft train --resume[/] {run.path}: continuing after epoch {resume_state.epoch}")
        fit_began = time.perf_counter()
        try:
            state = fit(model, objective, plan, inputs.train, inputs.evaluation["valid"], epochs=epochs, head_epochs=head_epochs, patience=patience,
                        start=inputs.start, time_budget=time_budget, callbacks=[ProgressBars(progress), saver], runtime=runtime,
                        resume=resume_state, optimizer_state=optimizer_state, scheduler_state=scheduler_state)
        except KeyboardInterrupt:
            raise run.interrupted() from None
        fit_seconds = time.perf_counter() - fit_began
        metrics: dict[str, Any] = {"best_epoch": state.best_epoch, "stopped": state.stopped or f"{len(state.history)} epochs", "inputs": inputs.description}
        for split, loader in inputs.evaluation.items():
            outputs, targets = collect_outputs(model, loader, start=inputs.start, runtime=runtime)
            metrics[split] = task_metrics(dataset.tasks, outputs, targets.astype(np.float64), scales, detail=True)
    seconds = time.perf_counter() - began
    metrics.update({"seconds": seconds, "fit_seconds": fit_seconds, "tower_distance": float(model.tower_distance().detach()),
                    "tied_parameters": model.tied_parameter_count(), "task_weights": objective.weights()})
    run.write_json(METRICS, metrics)
    (run / CHECKPOINT).unlink(missing_ok=True)  # finished: the run folder's weights are the result
    final = metrics.get("test", metrics["valid"])
    plots.task_curves(state.history, run / LEARNING_CURVE, title=f"{backbone}, {sharing} sharing, {mode}")
    for task in dataset.tasks:
        if task.is_classification:
            plots.confusion_matrix(final["tasks"][task.name]["confusion_matrix"], task.classes, run / f"confusion_matrix_{task.name}.png", title=f"{task.name} ({'test' if 'test' in metrics else 'valid'})")
    summary = {
        "run": str(run.path), "kind": "multi-domain" if domains else "multi-task", "sharing": sharing, "tie": tie, "weighting": weighting, "backbone": backbone,
        "mode": mode, "tasks": [t.name for t in dataset.tasks], "best_epoch": state.best_epoch, "epochs_run": len(state.history),
        "valid_score": metrics["valid"]["score"], "test_score": metrics["test"]["score"] if "test" in metrics else None,
        "valid": _brief(metrics["valid"]), "test": _brief(metrics["test"]) if "test" in metrics else None,
        "tower_distance": metrics["tower_distance"], "seconds": seconds, "fit_seconds": fit_seconds, "params": counts, "skipped": len(dataset.skipped),
        "cached": inputs.description["cached"],
    }
    if not quiet:
        stderr.print(table(f"{'test' if 'test' in metrics else 'valid'} metrics (best epoch {state.best_epoch})", ["task", "metric", "value"],
                           [[name, *_headline(entry)] for name, entry in final["tasks"].items()]))
        stderr.print(f"[green]done[/] in {seconds:.1f}s; run saved to {run.path}")
    return summary


def resume(out: str | os.PathLike, *, num_workers: int | None = None, quiet: bool = False) -> dict[str, Any]:
    """Continue a killed or interrupted multi-task run from its last completed epoch, with the arguments it was started with."""
    config = RunFolder(out).config_to_resume()
    options = dict(config["options"])
    return train_multitask(options.pop("data"), out, **options, num_workers=num_workers, quiet=quiet, _resuming=True)


def _brief(metrics: dict[str, Any]) -> dict[str, Any]:
    keep = ("kind", "n", "accuracy", "macro_f1", "mae", "rmse")
    return {"score": metrics["score"], "tasks": {name: {k: v for k, v in entry.items() if k in keep} for name, entry in metrics["tasks"].items()}}


def _headline(entry: dict[str, Any]) -> list[str]:
    if entry["kind"] == "classification":
        return ["accuracy / macro F1", f"{entry['accuracy']:.4f} / {entry['macro_f1']:.4f}"]
    return ["MAE / RMSE", f"{entry['mae']:.3f} / {entry['rmse']:.3f}"]


@dataclass
class MultiTaskTrainedModel:
    """A multi-task (or multi-domain) model loaded from a run folder: every task on every image."""

    model: MultiTaskModel
    tasks: list[Task]
    scales: dict[str, TargetScale]
    preprocessing: Preprocessing
    config: dict[str, Any]
    path: Path

    @property
    def classes(self) -> dict[str, list[str]]:
        return {t.name: list(t.classes) for t in self.tasks if t.is_classification}

    def _outputs(self, items, batch_size: int):
        outputs, targets = collect_outputs(self.model, image_loader(ImageDataset(items, self.preprocessing.eval_transform()), batch_size, default_workers()))
        return outputs, targets.astype(np.float64)

    def predict(self, images: Sequence[str | os.PathLike], batch_size: int = 32) -> list[dict[str, Any]]:
        """For each image: ``{"image", "tasks": {name: {"label", "prob", "probs"} or {"value"}}}``."""
        paths = collect_image_paths(images)
        outputs, _ = self._outputs([(p, [float("nan")] * len(self.tasks)) for p in paths], batch_size)
        decoded = {t.name: decode(t, outputs[t.name], self.scales) for t in self.tasks}
        results = []
        for row, path in enumerate(paths):
            entry: dict[str, Any] = {}
            for task in self.tasks:
                value = decoded[task.name][row]
                if task.is_classification:
                    entry[task.name] = {"label": task.classes[int(value.argmax())], "prob": float(value.max()),
                                        "probs": {name: float(p) for name, p in zip(task.classes, value)}}
                else:
                    entry[task.name] = {"value": float(value)}
            results.append({"image": path, "tasks": entry})
        return results

    def evaluate(self, data: str | os.PathLike | None = None, batch_size: int = 32) -> dict[str, Any]:
        """Every task's metrics. ``data=None`` or the training folder: the run's held-out test split
        (valid if none); another folder: all its images labelled by the run's label source."""
        manifest_path = self.path / MANIFEST
        labels = self.config["multitask"]["labels"]
        root = self.config["data"]["root"]
        skipped: list = []
        if data is None or (root is not None and Path(data).resolve() == Path(root).resolve()):
            manifest = read_json(manifest_path)
            split = "test" if manifest["splits"].get("test") else "valid"
            items = [(p, [float("nan") if v is None else v for v in values]) for p, values in manifest["splits"][split]]
            evaluated_on = f"{split} split of the run's manifest"
        elif labels.get("kind") == "domains":
            raise DataError(f"a multi-domain run is evaluated on its own test splits; got DATA '{data}'", hint="run graft evaluate RUN without DATA")
        else:
            source = labels["name"] if labels["kind"] == "preset" else labels["file"] if labels["kind"] == "csv" else "re:" + labels["pattern"]
            _, items, skipped, _ = read_labels(data, source, list(self.tasks))
            evaluated_on = str(data)
        if not items:
            raise DataError(f"no labelled images to evaluate in '{data or manifest_path}'")
        outputs, targets = self._outputs(items, batch_size)
        metrics = task_metrics(self.tasks, outputs, targets, self.scales, detail=True)
        return {"kind": "multitask", "evaluated_on": evaluated_on, "n": len(items), **metrics, "skipped": skipped}

    def example_input(self) -> torch.Tensor:
        """One normalised image-shaped batch, as the model takes it."""
        size = self.preprocessing.input_size
        return torch.zeros(1, 3, size, size)


def load_trained(folder: Path, config: dict[str, Any]) -> MultiTaskTrainedModel:
    """The "multitask" run kind's loader (see :func:`graft.runs.load_run`)."""
    try:
        section = config["multitask"]
        tasks = [Task.from_dict(t) for t in section["tasks"]]
        scales = {name: TargetScale(**values) for name, values in section["scales"].items()}
        preprocessing = Preprocessing.from_dict(config["preprocessing"])
        name = config["backbone"]["name"]
        model = build_multitask_model(lambda: create_backbone(name, pretrained=False).model, tasks, section["sharing"], config["head"],
                                      input_size=preprocessing.input_size)
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise RunFolderError(f"'{folder / CONFIG}' is damaged or not a graft multi-task config ({type(error).__name__}: {error})") from None
    load_weights(model, folder)
    return MultiTaskTrainedModel(model=model.eval(), tasks=tasks, scales=scales, preprocessing=preprocessing, config=config, path=folder)


def _version() -> str:
    from graft import __version__

    return __version__
