"""One single-task training run, from options to a finished run folder, or resumed after a crash.

:class:`TrainOptions` is everything that determines a run; it is saved (resolved: ``--mode auto``'s
advice already applied) in ``config.json``, so ``resume`` rebuilds the same model, freeze plan,
split and inputs and continues from ``checkpoint.safetensors``. The steps: scan the data, build the
model and its freeze plan, print the plan, compute the frozen part once (``graft.inputs``), run the
loop (``graft.core.fit``) writing history, best weights and a checkpoint after each epoch, then
evaluate and write metrics, plots and the report.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from typing import Any

from graft import plots, report
from graft.backbones import create_backbone
from graft.console import progress as make_progress
from graft.console import stderr, table
from graft.core.callbacks import ProgressBars
from graft.core.checkpoint import load_checkpoint
from graft.core.evaluation import classification_metrics, predict_probabilities
from graft.core.fit import FitState, fit
from graft.core.objectives import Classification
from graft.core.runtime import Runtime, resolve_device
from graft.data import Dataset, scan_folder
from graft.errors import ConfigError, RunFolderError, TrainingError
from graft.fileio import read_json
from graft.freeze import FreezePlan, parameter_counts
from graft.inputs import Inputs, build_inputs, check_workers
from graft.model import TransferModel, build_transfer_model
from graft.preprocessing import Preprocessing
from graft.reproducibility import seed_everything
from graft.runs import ADVICE, CHECKPOINT, CONFIG, CONFUSION, LEARNING_CURVE, MANIFEST, METRICS, PLAN, REPORT, WEIGHTS, RunFolder, SaveEveryEpoch, load_plan
from graft.strategies import AUTO, DEFAULT_BACKBONE_LR_MULT, DEFAULT_BN, DEFAULT_VIEWS, augment_by_default, plan_for_mode, resolve_auto

DEFAULT_BACKBONE = "tf_efficientnet_lite0"
DEFAULT_EPOCHS = 10


@dataclass(frozen=True)
class TrainOptions:
    """What determines a training run. ``None`` means "the mode's default" until :meth:`resolved`."""

    data: str
    mode: str = "extract"
    backbone: str = DEFAULT_BACKBONE
    weights: str | None = None
    pretrained: bool = True
    unfreeze: int | None = None
    epochs: int | None = None
    lr: float | None = None
    batch_size: int = 32
    seed: int = 0
    head: str = "linear"
    patience: int = 5
    augment: bool | None = None
    views: int = DEFAULT_VIEWS
    bn: str | None = None
    backbone_lr_mult: float | None = None
    valid_fraction: float = 0.2
    deterministic: bool = False
    head_epochs: int | None = None
    cache: bool = True
    cache_dir: str | None = None
    image_size: int | None = None  # instead of the backbone's input size (smaller is faster)
    device: str = "auto"  # auto (CUDA when present), cpu, cuda or cuda:N

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainOptions":
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise RunFolderError(f"training options have unknown keys {sorted(unknown)}", hint="was the run written by a newer graft?")
        return cls(**data)

    def validate(self) -> None:
        for name, value in (("--epochs", self.epochs), ("--batch-size", self.batch_size), ("--patience", self.patience)):
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1; got {value}")
        if self.image_size is not None and not 32 <= self.image_size <= 1024:
            raise ConfigError(f"--image-size must be between 32 and 1024 pixels; got {self.image_size}")
        if self.views < 0:
            raise ConfigError(f"--views must be 0 or more; got {self.views}")
        if not 0 < self.valid_fraction < 1:
            raise ConfigError(f"valid_fraction must be between 0 and 1; got {self.valid_fraction}")
        resolve_device(self.device)
        if self.mode == AUTO and not self.pretrained:
            raise ConfigError("--mode auto measures the pretrained backbone; it cannot be combined with --from-scratch",
                              hint="pick --mode extract or finetune for a from-scratch baseline")

    def resolved(self, advised: dict[str, Any] | None = None) -> "TrainOptions":
        """Concrete values for every default (after applying ``advised``, the plan of ``--mode auto``)."""
        options = self
        if advised is not None:
            resolved = resolve_auto(advised, unfreeze=self.unfreeze, epochs=self.epochs, lr=self.lr, backbone_lr_mult=self.backbone_lr_mult,
                                    bn=self.bn, head_epochs=self.head_epochs)
            options = dataclasses.replace(self, **resolved)
        return dataclasses.replace(
            options,
            epochs=DEFAULT_EPOCHS if options.epochs is None else options.epochs,
            backbone_lr_mult=DEFAULT_BACKBONE_LR_MULT if options.backbone_lr_mult is None else options.backbone_lr_mult,
            bn=DEFAULT_BN if options.bn is None else options.bn,
            head_epochs=0 if options.head_epochs is None else options.head_epochs,
            augment=augment_by_default(options.mode) if options.augment is None else options.augment,
        )


def train(options: TrainOptions, out: str | os.PathLike, *, num_workers: int | None = None, quiet: bool = False) -> dict[str, Any]:
    """Train from scratch of the run folder ``out``; returns the ``train`` JSON summary."""
    began = time.perf_counter()
    options.validate()
    check_workers(num_workers)
    run = RunFolder(out)
    run.prepare()
    run.refuse_unfinished()
    dataset = scan_folder(options.data, valid_fraction=options.valid_fraction, seed=options.seed)
    seed_everything(options.seed, options.deterministic)
    loaded = create_backbone(options.backbone, weights=options.weights, pretrained=options.pretrained)
    advice = None
    if options.mode == AUTO:
        from graft.advisor import advise_scanned

        advice = advise_scanned(dataset, loaded, options.backbone, seed=options.seed)
    options = options.resolved(advice.plan.to_dict() if advice is not None else None)
    preprocessing = loaded.preprocessing if options.image_size is None else dataclasses.replace(loaded.preprocessing, input_size=options.image_size)
    model = build_transfer_model(loaded.model, options.head, len(dataset.classes), input_size=preprocessing.input_size)
    plan = plan_for_mode(options.mode, model.stage_names, lr=options.lr, unfreeze=options.unfreeze, backbone_lr_mult=options.backbone_lr_mult, bn_policy=options.bn)
    plan.apply(model)
    run.require_space(model)
    config = {
        "kind": "classifier",
        "graft_version": _version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data": {"root": str(options.data), "layout": dataset.layout, "counts": {k: len(v) for k, v in dataset.splits.items()}, "skipped": len(dataset.skipped)},
        "backbone": {"name": options.backbone, "architecture": loaded.report.architecture, "load_report": loaded.report.to_dict()},
        "preprocessing": preprocessing.to_dict(),
        "mode": options.mode,
        "head": options.head,
        "classes": dataset.classes,
        "options": options.to_dict(),
        "hyperparameters": {
            "epochs": options.epochs, "lr": plan.lr, "backbone_lr_mult": options.backbone_lr_mult, "batch_size": options.batch_size,
            "seed": options.seed, "patience": options.patience, "augment": options.augment, "views": options.views, "bn": plan.bn_policy,
            "unfreeze": len(plan.trainable_stages), "valid_fraction": options.valid_fraction, "deterministic": options.deterministic,
            "head_epochs": options.head_epochs,
        },
        "params": parameter_counts(model),
    }
    if advice is not None:
        config["advice"] = {"file": ADVICE, "scenario": advice.scenario, "similarity": advice.similarity, "plan": advice.plan.to_dict()}
        run.write_json(ADVICE, advice.to_dict())
    if not quiet:
        _print_plan(dataset, options, model, plan, advice)
    run.write_json(PLAN, plan.to_dict())
    run.write_json(MANIFEST, dataset.manifest())
    run.write_json(CONFIG, config)  # last: a config.json means the run folder is complete enough to resume
    summary = _run(run, config, options, dataset, model, plan, None, num_workers, quiet, began)
    if advice is not None:
        summary["advice"] = {"scenario": advice.scenario, "similarity": advice.similarity, "seconds": advice.seconds}
    return summary


def resume(out: str | os.PathLike, *, num_workers: int | None = None, quiet: bool = False) -> dict[str, Any]:
    """Continue a run that was killed or interrupted, from its last completed epoch."""
    began = time.perf_counter()
    check_workers(num_workers)
    run = RunFolder(out)
    config = run.config_to_resume()
    options = TrainOptions.from_dict(config["options"])
    run.prepare()
    dataset = Dataset.from_manifest(read_json(run / MANIFEST))
    seed_everything(options.seed, options.deterministic)
    has_checkpoint = (run / CHECKPOINT).is_file()
    loaded = create_backbone(options.backbone, weights=options.weights, pretrained=options.pretrained and not has_checkpoint)
    model = build_transfer_model(loaded.model, options.head, len(dataset.classes), input_size=Preprocessing.from_dict(config["preprocessing"]).input_size)
    plan = load_plan(run.path)
    plan.apply(model)
    checkpoint = load_checkpoint(run / CHECKPOINT, model, Classification()) if has_checkpoint else None
    if not quiet:
        where = f"after epoch {checkpoint[0].epoch}" if checkpoint else "from the start (no epoch had finished)"
        stderr.print(f"[bold]graft train --resume[/] {run.path}: continuing {where}")
    return _run(run, config, options, dataset, model, plan, checkpoint, num_workers, quiet, began)


def _run(run: RunFolder, config: dict, options: TrainOptions, dataset: Dataset, model: TransferModel, plan: FreezePlan,
         checkpoint: tuple[FitState, dict, dict] | None, num_workers: int | None, quiet: bool, began: float) -> dict[str, Any]:
    preprocessing = Preprocessing.from_dict(config["preprocessing"])
    title = f"{options.backbone}, {options.mode}"
    runtime = Runtime.create(options.device)
    resume_state, optimizer_state, scheduler_state = checkpoint if checkpoint else (None, None, None)
    objective = (resume_state.objective if resume_state is not None else Classification()).to(runtime.device)
    model.to(runtime.device)
    saver = SaveEveryEpoch(run, lambda history: plots.learning_curve(history, run / LEARNING_CURVE, title=title))
    try:
        with make_progress(quiet) as progress:
            inputs = build_inputs(model, dataset, preprocessing, architecture=config["backbone"]["architecture"], trainable_from=plan.trainable_from,
                                  augment=options.augment, views=options.views, seed=options.seed, batch_size=options.batch_size,
                                  workers=num_workers, cache=options.cache, cache_dir=options.cache_dir, progress=progress, device=runtime.device)
            prepared = time.perf_counter()
            if not quiet:
                stderr.print(_describe_inputs(inputs, prepared - began))
            state = fit(model, objective, plan, inputs.train, inputs.evaluation["valid"], epochs=options.epochs, head_epochs=options.head_epochs,
                        patience=options.patience, start=inputs.start, callbacks=[ProgressBars(progress), saver], runtime=runtime,
                        resume=resume_state, optimizer_state=optimizer_state, scheduler_state=scheduler_state)
            fitted = time.perf_counter()
            metrics = _evaluate(model, inputs, dataset.classes, runtime)
    except KeyboardInterrupt:
        raise run.interrupted() from None
    except TrainingError as error:
        kept = f"the best weights so far are in '{run / WEIGHTS}'" if (run / WEIGHTS).is_file() else "no epoch had finished"
        raise TrainingError(f"{error.message}; {kept}", hint=error.hint) from None
    metrics["best_epoch"] = state.best_epoch
    plots.learning_curve(state.history, run / LEARNING_CURVE, title=title)
    final_split = "test" if "test" in metrics else "valid"
    plots.confusion_matrix(metrics[final_split]["confusion_matrix"], dataset.classes, run / CONFUSION, title=f"confusion matrix ({final_split})")
    seconds = time.perf_counter() - began
    metrics["seconds"] = seconds
    metrics["phase_seconds"] = {"prepare": prepared - began, "fit": fitted - prepared, "evaluate": time.perf_counter() - fitted}
    metrics["inputs"] = inputs.description
    run.write_json(METRICS, metrics)
    (run / REPORT).write_text(report.render(run.path, config, plan.rows(model), state.history, metrics), encoding="utf-8")
    (run / CHECKPOINT).unlink(missing_ok=True)  # finished: the run folder's weights are the result
    summary = {
        "run": str(run.path),
        "mode": options.mode,
        "backbone": options.backbone,
        "best_epoch": state.best_epoch,
        "epochs_run": len(state.history),
        "valid_accuracy": metrics["valid"]["accuracy"],
        "test_accuracy": metrics["test"]["accuracy"] if "test" in metrics else None,
        "seconds": seconds,
        "phase_seconds": metrics["phase_seconds"],
        "params": config["params"],
        "skipped": len(dataset.skipped),
        "unfreeze": len(plan.trainable_stages),
        "head_epochs": options.head_epochs,
        "cached": inputs.description["cached"],
    }
    if not quiet:
        test_text = f", test accuracy {summary['test_accuracy']:.4f}" if summary["test_accuracy"] is not None else ""
        stderr.print(f"[green]done[/] in {seconds:.1f}s: best epoch {state.best_epoch}, valid accuracy {summary['valid_accuracy']:.4f}{test_text}; run saved to {run.path}")
    return summary


def _describe_inputs(inputs: Inputs, seconds: float) -> str:
    described = inputs.description
    if not described["cached"]:
        return f"inputs: images through the whole network every epoch (augmentation: {described['views']})"
    views = f"{described['views']} augmented view(s) per training image" if described["views"] else "the clean view of each image"
    return (f"inputs: activations of the frozen stages, cached at '{described['start_stage']}' {tuple(described['activation_shape'])} "
            f"for {views} ({seconds:.1f}s so far; cache: {described['cache_dir']})")


def _evaluate(model: TransferModel, inputs: Inputs, classes: list[str], runtime: Runtime) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    for split, loader in inputs.evaluation.items():
        probabilities, labels = predict_probabilities(model, loader, start=inputs.start, runtime=runtime)
        metrics[split] = classification_metrics(probabilities, labels, classes)
    return metrics


def _print_plan(dataset: Dataset, options: TrainOptions, model: TransferModel, plan: FreezePlan, advice) -> None:
    stderr.print(f"[bold]graft train[/]: {dataset.layout}; {len(dataset.classes)} classes; "
                 + ", ".join(f"{name} {len(items)}" for name, items in dataset.splits.items())
                 + (f"; [yellow]{len(dataset.skipped)} file(s) skipped (see manifest.json)[/]" if dataset.skipped else "")
                 + (f"; [yellow]{len(dataset.warnings)} warning(s)[/] (graft check {options.data} lists them)" if dataset.warnings else ""))
    rows = plan.rows(model)
    stderr.print(table(f"freeze plan ({options.mode}, {options.backbone})", ["part", "status", "params", "lr", "batchnorm"],
                       [[r["part"], r["status"], f"{r['params']:,}", f"{r['lr']:.2g}", r["batchnorm"]] for r in rows]))
    counts = parameter_counts(model)
    stderr.print(f"trainable params: {counts['trainable']:,}   frozen params: {counts['frozen']:,}")
    if advice is not None:
        stderr.print(f"[bold]advice[/]: scenario {advice.scenario}, similarity {advice.similarity:.2f}; " + "; ".join(advice.reasons[2:]))


def _version() -> str:
    from graft import __version__

    return __version__
