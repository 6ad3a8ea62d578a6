"""One training run of any kind, from a config to a finished run folder, or resumed after a crash.

The steps are the same for every kind of run: validate the config, scan the data, load the backbone
(and, for ``--mode auto``, measure it: :mod:`graft.core.advisor`), build the model and its freeze plan,
compute the frozen part once (:mod:`graft.core.inputs`), run the one loop (:mod:`graft.core.fit`) writing
history, best weights and a checkpoint after each epoch, then evaluate and write metrics, plots and
the report. What differs between kinds (how data is scanned, the model's heads, the objective, the
metrics and plots) comes from a :class:`RunKind` looked up in :mod:`graft.core.runs`' registry: a single
classifier (:mod:`graft.core.classifier`), several tasks or domains (:mod:`graft.multitask.run`) and a
classifier adapted to an unlabelled target domain (:mod:`graft.adaptation.run`).

``config.json`` holds the resolved :class:`~graft.core.config.RunConfig` (``--mode auto``'s advice
already applied), so ``resume`` rebuilds the same model, plan, split and inputs, checks the config
again, and continues from ``checkpoint.safetensors``.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from torch import nn

from graft.console import progress as make_progress
from graft.console import progress_task, stderr, table
from graft.core import report
from graft.core.callbacks import ProgressBars, TensorBoardLog
from graft.core.checkpoint import load_checkpoint
from graft.core.config import HEAD_ONLY_MODES, RunConfig, check_workers, validate
from graft.core.distributed import lost_a_process
from graft.core.evaluation import collect_outputs
from graft.core.fit import apply_plan, fit
from graft.core.freeze import FreezePlan, parameter_counts
from graft.core.inputs import Inputs, build_inputs
from graft.core.modality import Modality, modality_for, modality_of, refuse_inapplicable
from graft.core.model import TransferModel
from graft.core.objectives import Objective
from graft.core.reproducibility import seed_everything
from graft.core.run_files import (
    ADVICE,
    CHECKPOINT,
    CONFIG,
    LEARNING_CURVE,
    LOCK,
    MANIFEST,
    METRICS,
    PLAN,
    REPORT,
    WEIGHTS,
)
from graft.core.runs import RunFolder, SaveEveryEpoch, kind_of, load_plan, run_kind
from graft.core.runtime import Runtime
from graft.core.source_runs import resolve_source
from graft.core.strategies import AUTO, FEWSHOT, plan_for_mode
from graft.errors import ConfigError, RunFolderError, TrainingError
from graft.perf import startup_seconds


class RunKind(Protocol):
    """What a kind of run supplies to the one pipeline (registered in :data:`graft.core.runs.RUN_KINDS`)."""

    name: str
    modalities: tuple[str, ...] | None  # the modalities this kind of run can learn from (None: any)

    def scan(self, config: RunConfig, modality: Modality) -> Any:
        """The labelled data, split (train/valid[/test]), with what was skipped."""

    def reload(self, run: RunFolder, saved: dict[str, Any], config: RunConfig, modality: Modality) -> Any:
        """The data a run started with (for ``--resume``), or a clear error if it changed."""

    def advice_view(self, dataset: Any) -> Any:
        """A one-label view of the data for the advisor (``--mode auto``)."""

    def build_model(
        self, config: RunConfig, modality: Modality, make_backbone, dataset: Any, input_size: int | None
    ) -> nn.Module:
        """The model: pretrained stages and the new heads (``make_backbone()`` gives a fresh backbone)."""

    def frozen_trunk(self, model: nn.Module) -> TransferModel:
        """The trunk whose frozen stages the activation cache computes."""

    def objective(self, config: RunConfig, dataset: Any) -> Objective: ...

    def config_section(self, config: RunConfig, dataset: Any, objective: Objective, model: nn.Module) -> dict[str, Any]:
        """The kind's own entries of ``config.json`` (e.g. class names, tasks)."""

    def headline(self, dataset: Any) -> str:
        """One line on what is learned from what."""

    def metrics(self, outputs: Any, targets: Any, dataset: Any, objective: Objective, split: str) -> dict[str, Any]:
        """One split's metrics from the model's outputs (in the split's order)."""

    def finish(
        self,
        run: RunFolder,
        history: list[dict],
        metrics: dict[str, Any],
        dataset: Any,
        model: nn.Module,
        objective: Objective,
        title: str,
        inputs: Inputs,
    ) -> dict[str, Any]:
        """Plots and the kind's extra metrics (added to ``metrics``); returns the kind's fields of the summary."""

    def plot_history(self, history: list[dict], path, title: str) -> None: ...

    def results(self, metrics: dict[str, Any]) -> str:
        """The headline figures, in words, for the last line of a run."""

    def load_trained(self, folder, config: dict[str, Any]) -> Any:
        """A finished run loaded for prediction and evaluation (:class:`graft.core.runs.TrainedRun`)."""

    # Optional flags (absent: False): ``races`` (--mode auto may race plans on folds, graft.core.race) and
    # ``several_processes`` (its loop may run over torchrun's processes, graft.core.distributed).
    # Optional: ``build_inputs(session, saved, preprocessing, dataset, model, plan, objective, progress)``
    # for a kind whose loop is fed otherwise than by graft.core.inputs.build_inputs (domain adaptation's
    # source and target rows in mixed batches). ``refit_head(session, model, inputs, dataset)`` refits an extract
    # run's linear head after the loop and returns what the run records about it, or None.


def train(
    config: RunConfig,
    out: str | os.PathLike,
    *,
    num_workers: int | None = None,
    quiet: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train into the run folder ``out``; returns the ``train`` JSON summary. ``out`` must be new or empty:
    with ``overwrite`` what it holds is moved aside (never deleted); an unfinished run is never replaced."""
    began, startup = time.perf_counter(), startup_seconds()
    validate(config)
    config = config.with_split_defaults()
    check_workers(num_workers)
    runtime = Runtime.create(config.device, config.precision)
    kind: RunKind = run_kind(config.kind)
    source_run = resolve_source(config.backbone, config.weights, config.image_size, config.pretrained)
    config = config.replace(backbone=source_run.backbone, weights=source_run.weights, image_size=source_run.image_size)
    if (
        source_run.backbone_lr_mult is not None
        and config.backbone_lr_mult is None
        and config.mode not in HEAD_ONLY_MODES
    ):
        config = config.replace(backbone_lr_mult=source_run.backbone_lr_mult)
    source = modality_for(config.data, config.backbone)
    config = _for_modality(config, source, kind)
    _refuse_in_several_processes(config, kind, runtime)
    scratch = None
    if (
        not runtime.processes.is_main
    ):  # rank 0 writes the run; the others write their copy here (graft.core.distributed)
        scratch = Path(tempfile.mkdtemp(prefix=f"graft-rank{runtime.processes.rank}-"))
        out, overwrite, quiet = scratch / "run", False, True
    run = RunFolder(out)
    run.claim(overwrite)
    if run.moved_aside is not None and not quiet:
        stderr.print(f"--overwrite: the previous contents of '{run.path}' are now in '{run.moved_aside}'")
    try:
        summary = _train(Session(run, config, kind, source, runtime, num_workers, quiet, began, startup))
    except BaseException:
        run.abandon()  # a folder this run created and that holds no run yet goes
        raise
    finally:
        run.release()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    if run.moved_aside is not None:
        summary["moved_aside"] = str(run.moved_aside)
    return summary


def _refuse_in_several_processes(config: RunConfig, kind: RunKind, runtime: Runtime) -> None:
    """What a run over several processes does not do yet (each would need its own agreement between the ranks)."""
    if not runtime.processes.distributed:
        return
    hint = "run it in one process (without torchrun or --nproc)"
    if not getattr(kind, "several_processes", False):
        raise ConfigError(f"{kind.name} runs train in one process for now", hint=hint)
    if config.mode not in ("extract", "finetune"):
        raise ConfigError(
            f"--mode {config.mode} trains in one process for now: several processes run extract and finetune",
            hint="for auto: graft advise DATA, then train the plan it prints" if config.mode == AUTO else hint,
        )
    if config.greedy_epochs:
        raise ConfigError("--greedy-epochs trains in one process for now", hint=hint)


def _for_modality(config: RunConfig, source: Modality, kind: RunKind) -> RunConfig:
    """The config with the modality's defaults (backbone, learning rates...; no augmentation where it has
    none) for what the user left unset, after refusing the options that do not apply to it."""
    if kind.modalities is not None and source.name not in kind.modalities:
        raise ConfigError(
            f"{kind.name} runs learn from {', '.join(kind.modalities)} data; '{config.data}' is {source.name} data"
        )
    refuse_inapplicable(config, source)
    defaults = {name: value for name, value in source.defaults(config.mode).items() if getattr(config, name) is None}
    return config.replace(
        backbone=config.backbone or source.default_backbone,
        augment=False if source.augmentation_recipe is None else config.augment,
        **defaults,
    )


@dataclass
class Session:
    """What one ``train`` or ``--resume`` works with throughout: the folder, the config, the kind of run
    and the modality, the device, and how it shows progress."""

    run: RunFolder
    config: RunConfig
    kind: RunKind
    source: Modality
    runtime: Runtime
    num_workers: int | None
    quiet: bool
    began: float
    startup: float | None  # seconds from the process's start to ``began``, where the OS tells
    marks: dict[str, float] = dataclasses.field(default_factory=dict)  # when each phase ended (perf_counter)

    def mark(self, phase: str) -> None:
        self.marks[phase] = time.perf_counter()


def _train(session: Session) -> dict[str, Any]:
    run, config, kind, source, quiet = session.run, session.config, session.kind, session.source, session.quiet
    dataset = kind.scan(config, source)
    session.mark("scan")
    seed_everything(config.seed, config.deterministic)
    loaded = source.load_backbone(config.backbone, weights=config.weights, pretrained=config.pretrained)
    advice = None
    if config.mode == AUTO:
        from graft.core.advisor import advise_scanned

        advice = advise_scanned(kind.advice_view(dataset), loaded, config.backbone, source, seed=config.seed)
    preprocessing = (
        loaded.preprocessing
        if config.image_size is None
        else source.with_input_size(loaded.preprocessing, config.image_size)
    )
    preprocessing = source.fit_preprocessing(preprocessing, dataset)
    if advice is not None:
        advice = _choose(session, advice, dataset, loaded, preprocessing)
        if config.time_budget is not None and advice.race and "seconds" in advice.race:
            config = config.replace(time_budget=max(1.0, config.time_budget - advice.race["seconds"]))
    config = session.config = config.resolved(advice.plan.to_dict() if advice is not None else None)
    validate(config)  # what config.json will hold, and --resume will check again
    first = [loaded.model]  # the backbone just loaded serves the first tower; more towers load fresh copies

    def make_backbone() -> nn.Module:
        return (
            first.pop()
            if first
            else source.load_backbone(config.backbone, weights=config.weights, pretrained=config.pretrained).model
        )

    model, plan = _model_and_plan(config, kind, source, make_backbone, dataset, preprocessing)
    objective = kind.objective(config, dataset)
    session.mark("model")
    run.require_space(model)
    saved = {
        "kind": kind.name,
        "modality": source.name,
        "graft_version": _version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data": {
            "root": config.data,
            "layout": getattr(dataset, "layout", kind.name),
            "counts": {k: len(v) for k, v in dataset.splits.items()},
            "skipped": len(dataset.skipped),
        },
        "backbone": {
            "name": config.backbone,
            "architecture": loaded.report.architecture,
            "load_report": loaded.report.to_dict(),
        },
        "preprocessing": preprocessing.to_dict(),
        "mode": config.mode,
        "head": config.head,
        "options": config.to_dict(),
        "hyperparameters": {
            "epochs": config.epochs,
            "lr": plan.lr,
            "backbone_lr_mult": plan.backbone_lr_mult,
            "batch_size": config.batch_size,
            "seed": config.seed,
            "patience": config.patience,
            "augment": config.augment,
            "views": config.views,
            "bn": plan.bn_policy,
            "unfreeze": len(plan.trainable_stages),
            "valid_fraction": config.valid_fraction,
            "deterministic": config.deterministic,
            "head_epochs": config.head_epochs or 0,
            "time_budget": config.time_budget,
        },
        "params": parameter_counts(model),
        **kind.config_section(config, dataset, objective, model),
    }
    if advice is not None:
        saved["advice"] = {
            "file": ADVICE,
            "scenario": advice.scenario,
            "similarity": advice.similarity,
            "plan": advice.plan.to_dict(),
            "race": advice.race,
        }
        run.write_json(ADVICE, advice.to_dict())
    if not quiet:
        _print_plan(kind, dataset, config, model, plan, advice)
    run.write_json(PLAN, plan.to_dict())
    run.write_json(MANIFEST, dataset.manifest())
    run.write_json(CONFIG, saved)  # last: a config.json means the run folder is complete enough to resume
    summary = _execute(session, saved, preprocessing, dataset, model, plan, objective, resuming=False)
    if advice is not None:
        summary["advice"] = {
            "scenario": advice.scenario,
            "similarity": advice.similarity,
            "seconds": advice.seconds,
            "plan": advice.plan.to_dict(),
            "race_seconds": (advice.race or {}).get("seconds"),
        }
    return summary


def resume(out: str | os.PathLike, *, num_workers: int | None = None, quiet: bool = False) -> dict[str, Any]:
    """Continue a run of any kind that was killed or interrupted, from its last completed epoch."""
    began, startup = time.perf_counter(), startup_seconds()
    check_workers(num_workers)
    run = RunFolder(out)
    saved = run.config_to_resume()
    config = RunConfig.from_dict(saved["options"], source=str(run / CONFIG))
    if config.cache_dir is not None and not _own_folder(config.cache_dir):
        # a run folder can come from someone else: its paths are not trusted with this user's writes
        if not quiet:
            stderr.print(
                f"--resume: the run's cache folder '{config.cache_dir}' is not this user's; using the default cache"
            )
        config = config.replace(cache_dir=None)
    runtime = Runtime.create(config.device, config.precision)
    kind: RunKind = run_kind(kind_of(saved))
    source = modality_of(saved)
    _refuse_in_several_processes(config, kind, runtime)
    # Any number of processes resumes any run: each batch is split between them, never changed by their number.
    scratch = None
    if not runtime.processes.is_main:  # a copy to resume from and write to; rank 0 continues the run itself
        scratch = Path(tempfile.mkdtemp(prefix=f"graft-rank{runtime.processes.rank}-"))
        shutil.copytree(run.path, scratch / "run", ignore=shutil.ignore_patterns(LOCK))
        run, quiet = RunFolder(scratch / "run"), True
    runtime.processes.barrier()  # every copy taken before rank 0 writes anything
    run.prepare()
    run.lock()
    try:
        return _resume(Session(run, config, kind, source, runtime, num_workers, quiet, began, startup), saved)
    finally:
        run.release()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _resume(session: Session, saved: dict[str, Any]) -> dict[str, Any]:
    run, config, kind, source = session.run, session.config, session.kind, session.source
    dataset = kind.reload(run, saved, config, source)
    session.mark("scan")
    seed_everything(config.seed, config.deterministic)
    has_checkpoint = (run / CHECKPOINT).is_file()

    def make_backbone() -> nn.Module:  # the checkpoint holds every weight: no need to read pretrained ones
        return source.load_backbone(
            config.backbone, weights=config.weights, pretrained=config.pretrained and not has_checkpoint
        ).model

    preprocessing = _saved_preprocessing(run, saved, source)
    model = kind.build_model(config, source, make_backbone, dataset, getattr(preprocessing, "input_size", None))
    plan = load_plan(run.path)
    apply_plan(plan, model)
    objective = kind.objective(config, dataset)
    session.mark("model")
    if not session.quiet:
        stderr.print(
            f"[bold]graft train --resume[/] {run.path}: "
            + (
                "continuing after the last completed epoch"
                if has_checkpoint
                else "starting over (no epoch had finished)"
            )
        )
    return _execute(session, saved, preprocessing, dataset, model, plan, objective, resuming=has_checkpoint)


def _own_folder(path: str) -> bool:
    """An existing folder that belongs to the user running graft."""
    try:
        return os.path.isdir(path) and os.stat(path).st_uid == os.getuid()
    except OSError:
        return False


def _saved_preprocessing(run: RunFolder, saved: dict[str, Any], source: Modality) -> Any:
    try:
        return source.preprocessing(saved["preprocessing"])
    except (KeyError, TypeError, ValueError) as error:
        raise RunFolderError(f"'{run / CONFIG}' has no valid preprocessing ({type(error).__name__}: {error})") from None


def _execute(
    session: Session,
    saved: dict,
    preprocessing: Any,
    dataset,
    model: nn.Module,
    plan: FreezePlan,
    objective: Objective,
    *,
    resuming: bool,
) -> dict[str, Any]:
    run, config, kind, source, runtime = session.run, session.config, session.kind, session.source, session.runtime
    quiet, began = session.quiet, session.began
    title = f"{config.backbone}, {config.mode}" + (f", {config.sharing} sharing" if config.sharing else "")
    model.to(runtime.device)
    objective.to(runtime.device)
    saver = SaveEveryEpoch(run, lambda history: kind.plot_history(history, run / LEARNING_CURVE, title))
    logger = TensorBoardLog(run / "tensorboard") if config.log == "tensorboard" and runtime.processes.is_main else None
    try:
        with make_progress(quiet) as progress:
            tuned = []
            if config.mode == FEWSHOT and not resuming:  # a checkpoint holds the tuned stages already
                tuned = _contrastive_step(session, saved, preprocessing, dataset, model, progress)
            greedy = []
            if config.greedy_epochs and not resuming:  # a checkpoint holds the pre-trained stages already
                greedy = _greedy_step(session, saved, preprocessing, dataset, model, plan, progress)
            if hasattr(kind, "build_inputs"):  # a kind that feeds the loop its own way (domain adaptation)
                inputs = kind.build_inputs(session, saved, preprocessing, dataset, model, plan, objective, progress)
            else:
                inputs = _loaders(
                    session, config, saved["backbone"]["architecture"], dataset, preprocessing, model, plan, progress
                )
            prepared = time.perf_counter()
            if not quiet:
                stderr.print(_describe_inputs(inputs, prepared - began))
            state = optimizer_state = scheduler_state = None
            if resuming:  # last: building the model and inputs must not disturb the random state it restores
                state, optimizer_state, scheduler_state = load_checkpoint(run / CHECKPOINT, model, objective)
            state = fit(
                model,
                objective,
                plan,
                inputs.train,
                inputs.evaluation["valid"],
                epochs=config.epochs,
                head_epochs=config.head_epochs or 0,
                patience=config.patience,
                start=inputs.start,
                time_budget=config.time_budget,
                callbacks=[ProgressBars(progress), saver, *([logger] if logger else [])]
                if runtime.processes.is_main
                else [],
                runtime=runtime,
                resume=state,
                optimizer_state=optimizer_state,
                scheduler_state=scheduler_state,
            )
            metrics: dict[str, Any] = {}
            refit = _refit_head(session, model, inputs, dataset)
            if refit is not None:
                if refit["on"] == "train+valid" and state.best_epoch:  # the last valid score that was held out
                    refit["loop_valid_score"] = state.best_record.get("valid_score")
                metrics["head_refit"] = refit
                if runtime.processes.is_main:
                    run.write_weights(model.state_dict(), {"epoch": str(state.best_epoch), "head": "refit"})
            if not runtime.processes.is_main:  # evaluating and writing up the run are rank 0's alone
                return {"run": str(run.path), "rank": runtime.processes.rank, "epochs_run": len(state.history)}
            if _has_floor(saved, kind):
                metrics["floor"] = _extract_floor(
                    session, saved, preprocessing, dataset, model, objective, state, progress
                )
                if metrics["floor"]["kept"] == "extract":
                    run.write_weights(model.state_dict(), {"epoch": str(state.best_epoch), "floor": "extract"})
            fitted = time.perf_counter()
            for split, loader in inputs.evaluation.items():
                outputs, targets = collect_outputs(model, loader, start=inputs.start, runtime=runtime)
                metrics[split] = kind.metrics(outputs, targets, dataset, objective, split)
            if logger is not None:
                logger.log_evaluation(metrics, state.epoch)
    except KeyboardInterrupt:
        raise run.interrupted() from None
    except TrainingError as error:
        kept = (
            f"the best weights so far are in '{run / WEIGHTS}'"
            if (run / WEIGHTS).is_file()
            else "no epoch had finished"
        )
        raise TrainingError(f"{error.message}; {kept}", hint=error.hint) from None
    except RuntimeError as error:  # after TrainingError, one of its kind
        if not lost_a_process(error, runtime.processes):
            raise
        raise TrainingError(
            "another process of this run stopped, so this one cannot go on"
            + ("" if (run / CHECKPOINT).is_file() else "; no epoch had finished"),
            hint=f"graft train --resume {run.path} (with --nproc N, any N) continues from the last checkpoint",
        ) from None
    finally:
        if logger is not None:
            logger.close()
    if tuned:
        metrics["contrastive"] = tuned
    if greedy:
        metrics["greedy"] = greedy
    metrics.update(
        {
            "best_epoch": state.best_epoch,
            "stopped": state.stopped or f"{len(state.history)} epochs",
            "inputs": inputs.description,
            "runtime": session.runtime.describe(),
        }
    )
    notes = source.pass_notes()
    if notes is not None:
        metrics["frozen_pass"] = notes
    evaluated = time.perf_counter()
    own = kind.finish(run, state.history, metrics, dataset, model, objective, title, inputs)
    worst = [entry["file"] for split in ("valid", "test") for entry in metrics.get(split, {}).get("worst", [])]
    thumbnails = {path: picture for path in worst if (picture := source.thumbnail(path))}
    seconds = time.perf_counter() - began
    metrics["seconds"] = seconds
    metrics["phase_seconds"] = _phase_seconds(session, prepared, fitted, evaluated)
    run.write_json(METRICS, metrics)
    run.write_text(
        REPORT, report.render(run.path, saved, plan.rows(kind.frozen_trunk(model)), state.history, metrics, thumbnails)
    )
    (run / CHECKPOINT).unlink(missing_ok=True)  # finished: the run folder's weights are the result
    summary = {
        "run": str(run.path),
        "kind": kind.name,
        "mode": config.mode,
        "backbone": config.backbone,
        "best_epoch": state.best_epoch,
        "epochs_run": len(state.history),
        "stopped": metrics["stopped"],
        **own,
        "seconds": seconds,
        "phase_seconds": metrics["phase_seconds"],
        "params": saved["params"],
        "skipped": len(dataset.skipped),
        "unfreeze": len(plan.trainable_stages),
        "head_epochs": config.head_epochs or 0,
        "cached": inputs.description["cached"],
        "runtime": metrics["runtime"],
        **({"floor": metrics["floor"]} if "floor" in metrics else {}),
        **({"frozen_pass": metrics["frozen_pass"]} if "frozen_pass" in metrics else {}),
    }
    if not quiet:
        if refit := metrics.get("head_refit"):  # why the scores below differ from the last epoch's
            stderr.print(f"head refit {report.refit_summary(refit)}")
        stderr.print(
            f"[green]done[/] in {seconds:.1f}s: best epoch {state.best_epoch}, {kind.results(metrics)}; run saved to "
            f"{run.path}"
        )
    return summary


def _model_and_plan(
    config: RunConfig, kind: RunKind, source: Modality, make_backbone, dataset, preprocessing
) -> tuple[nn.Module, FreezePlan]:
    """The run's model with its freeze plan applied."""
    model = kind.build_model(config, source, make_backbone, dataset, getattr(preprocessing, "input_size", None))
    plan = plan_for_mode(
        config.mode,
        model.stage_names,
        lr=config.lr,
        unfreeze=config.unfreeze,
        backbone_lr_mult=config.backbone_lr_mult,
        bn_policy=config.bn,
    )
    apply_plan(plan, model)
    return model, plan


def _loaders(
    session: Session, config: RunConfig, architecture: str, dataset, preprocessing, model, plan: FreezePlan, progress
) -> Inputs:
    """The loop's inputs for ``config``'s plan: activations of the frozen stages through the cache, or examples."""
    return build_inputs(
        session.source,
        session.kind.frozen_trunk(model),
        dataset,
        preprocessing,
        architecture=architecture,
        trainable_from=plan.trainable_from,
        augment=config.augment,
        views=config.views or 0,
        seed=config.seed,
        batch_size=config.batch_size,
        workers=session.num_workers,
        cache=config.cache,
        cache_dir=config.cache_dir,
        progress=progress,
        device=session.runtime.device,
        processes=session.runtime.processes,
    )


def _train_candidate(
    session: Session, candidate: RunConfig, make_backbone, dataset, preprocessing, architecture, progress
):
    """A model trained by ``candidate`` (a resolved config) on ``dataset``'s train split, its epoch chosen on
    valid, then its head refit where the run would refit it: what ``--mode auto`` compares (a plan in the race,
    the probe under a plan too large to race). Returns the model and its validation record."""
    seed_everything(candidate.seed, candidate.deterministic)
    model, freeze_plan = _model_and_plan(candidate, session.kind, session.source, make_backbone, dataset, preprocessing)
    model.to(session.runtime.device)
    objective = session.kind.objective(candidate, dataset)
    objective.to(session.runtime.device)
    inputs = _loaders(session, candidate, architecture, dataset, preprocessing, model, freeze_plan, progress)
    state = fit(
        model,
        objective,
        freeze_plan,
        inputs.train,
        inputs.evaluation["valid"],
        epochs=candidate.epochs,
        head_epochs=candidate.head_epochs or 0,
        patience=candidate.patience,
        start=inputs.start,
        runtime=session.runtime,
    )
    refit = _refit_head(dataclasses.replace(session, config=candidate), model, inputs, dataset)
    if refit is None or refit.get("kept") == "loop":
        return model, state.best_record
    outputs, targets = collect_outputs(model, inputs.evaluation["valid"], start=inputs.start, runtime=session.runtime)
    return model, {**state.best_record, **objective.validate(outputs, targets, model)}


def _has_floor(saved: dict, kind: RunKind) -> bool:
    """Whether this run ends by checking its plan against a linear probe: ``--mode auto`` on data too large to
    race (:func:`_choose`), with a plan that trains stages."""
    advice = saved.get("advice") or {}
    return (
        getattr(kind, "races", False)
        and advice.get("plan", {}).get("mode") == "finetune"
        and ("skipped" in (advice.get("race") or {}))
    )


def _extract_floor(
    session: Session, saved: dict, preprocessing, dataset, model: nn.Module, objective, state, progress
) -> dict:
    """Large data is not raced, so the advised fine-tune trained alone. Its floor is the linear probe (``--mode
    extract`` with graft's defaults, the run's epochs, on the run's own split, from a freshly loaded backbone
    through the activation cache): when the probe's best validation record ranks above the fine-tune's, its
    weights replace the model's. auto then never ends below extraction on validation (BENCHMARKS.md section 11:
    on UTKFace gender the whole-network fine-tune was under extraction on validation at 3 of 3 seeds, and on
    test by 0.8 points). The random state afterwards is as if no probe ran."""
    from graft.core.reproducibility import preserved_random_state

    began = time.perf_counter()
    config, source = session.config, session.source
    probe = config.replace(
        mode="extract", unfreeze=None, lr=None, backbone_lr_mult=None, bn=None, head_epochs=None, augment=None,
        views=None,
    ).resolved()  # fmt: skip

    def fresh_backbone() -> nn.Module:
        return source.load_backbone(probe.backbone, weights=probe.weights, pretrained=probe.pretrained).model

    architecture = saved["backbone"]["architecture"]
    with preserved_random_state():
        floor, probed = _train_candidate(session, probe, fresh_backbone, dataset, preprocessing, architecture, progress)
    kept = "extract" if objective.rank(probed) > objective.rank(state.best_record) else "plan"
    if kept == "extract":
        model.load_state_dict(floor.state_dict())
    return {
        "kept": kept,
        "plan_valid_score": state.best_record["valid_score"],
        "extract_valid_score": probed["valid_score"],
        "seconds": time.perf_counter() - began,
    }


def _choose(session: Session, advice, dataset, loaded, preprocessing):
    """``--mode auto``'s plan: on small data the winner of a race of plans on folds of the data
    (:mod:`graft.core.race`), else the advised one. The random state afterwards is as if no race ran."""
    from graft.core import race as racing
    from graft.core.advisor import AdvisedPlan
    from graft.core.reproducibility import preserved_random_state

    why = (
        racing.why_no_race(advice)
        if getattr(session.kind, "races", False)
        else f"{session.kind.name} runs are not raced"
    )
    if why is not None:
        return dataclasses.replace(advice, race={"skipped": why})
    config = session.config
    plans: list[AdvisedPlan] = []
    for candidate in racing.candidates(advice):  # as the run would train it: options the user gave win
        resolved = config.resolved(candidate.to_dict())
        plan = AdvisedPlan(
            resolved.mode,
            resolved.unfreeze or 0,
            resolved.lr,
            resolved.backbone_lr_mult if resolved.backbone_lr_mult is not None else candidate.backbone_lr_mult,
            resolved.epochs,
            resolved.head_epochs or 0,
            resolved.bn or "frozen",
        )
        if plan not in plans:
            plans.append(plan)
    fold_data = racing.folds(dataset, config.seed)
    budget = None if config.time_budget is None else config.time_budget / 2
    architecture = loaded.report.architecture

    def copied_backbone() -> nn.Module:
        return copy.deepcopy(loaded.model)

    def train_one(plan: AdvisedPlan, fold) -> dict[str, float]:
        began = time.perf_counter()
        candidate = config.resolved(plan.to_dict())
        _, best = _train_candidate(session, candidate, copied_backbone, fold, preprocessing, architecture, progress)
        return {
            "score": best["valid_score"],
            "loss": best.get("valid_loss", 0.0),
            "seconds": time.perf_counter() - began,
            "n": len(fold.split("valid")),
        }

    total = racing.trainings(len(plans), len(fold_data))
    with preserved_random_state(), make_progress(session.quiet) as progress:
        with progress_task(progress, f"choosing a plan ({len(plans)} candidates)", total) as advance:
            result = racing.race(plans, fold_data, train_one, budget=budget, advance=advance)
    return dataclasses.replace(
        advice,
        plan=result.plans[result.winner],
        reasons=(*advice.reasons, result.reason()),
        race=result.to_dict(),
    )


def _refit_head(session, model, inputs, dataset) -> dict[str, Any] | None:
    """A linear head refit to convergence after the loop: few-shot's on train and valid, and in extract mode the
    kind's own where it has one (a classifier's on small data, a reweighted run's with its importance weights);
    what the run records about it, or None."""
    config = session.config
    if config.head != "linear":
        return None
    if config.mode == FEWSHOT:
        from graft.fewshot.head import refit_head

        return refit_head(model, inputs, len(dataset.classes), session.runtime)
    if config.mode == "extract" and hasattr(session.kind, "refit_head"):
        return session.kind.refit_head(session, model, inputs, dataset)
    return None


def _contrastive_step(session: Session, saved: dict, preprocessing, dataset, model, progress) -> list[dict]:
    """``--mode fewshot``'s first step (:mod:`graft.fewshot.tune`); the head then trains on the tuned features."""
    from graft.fewshot.tune import contrastive_tune

    config = session.config
    tuned = contrastive_tune(
        model,
        session.source,
        dataset,
        preprocessing,
        architecture=saved["backbone"]["architecture"],
        unfreeze=config.unfreeze,
        seed=config.seed,
        batch_size=config.batch_size,
        cache=config.cache,
        cache_dir=config.cache_dir,
        workers=session.num_workers,
        runtime=session.runtime,
        progress=progress,
    )
    if not session.quiet:
        stderr.print(
            f"contrastive step: last {tuned.stages} stage(s) tuned on in-batch pairs, {len(tuned.history)} epochs; "
            f"best valid centroid accuracy {tuned.best['valid_centroid_accuracy']:.3f}"
        )
    return tuned.history


def _greedy_step(session: Session, saved: dict, preprocessing, dataset, model, plan, progress) -> list[dict]:
    """Greedy layer-wise pre-training (:mod:`graft.pretraining.greedy`) before the run's whole-network fit."""
    from graft.pretraining.greedy import greedy_layerwise, require_greedy_plan

    config = session.config
    require_greedy_plan(plan.trainable_from, list(plan.stages))
    records = greedy_layerwise(
        model,
        session.source,
        dataset,
        preprocessing,
        architecture=saved["backbone"]["architecture"],
        epochs=config.greedy_epochs,
        lr=plan.lr,
        head=config.head,
        seed=config.seed,
        batch_size=config.batch_size,
        patience=config.patience,
        workers=session.num_workers,
        runtime=session.runtime,
        progress=progress,
    )
    if not session.quiet:
        stderr.print(
            "greedy layer-wise: "
            + ", ".join(f"{r['stage']} {r['valid_accuracy']:.3f} ({r['seconds']:.0f}s)" for r in records)
            + "; now the whole network"
        )
    return records


def _phase_seconds(session: Session, prepared: float, fitted: float, evaluated: float) -> dict[str, float]:
    """Where the run's time went. ``prepare`` = ``scan`` (listing and checking the data) + ``model`` (loading the
    backbone; advising and racing plans under ``--mode auto``) + ``inputs`` (the frozen pass, or a cache hit);
    ``finish`` writes the weights and plots; ``startup``, before the run began, is importing Python, torch and
    graft (absent where the OS does not tell a process's age)."""
    began, marks = session.began, session.marks
    scanned = marks.get("scan", began)
    modelled = marks.get("model", scanned)
    phases = {
        "scan": scanned - began,
        "model": modelled - scanned,
        "inputs": prepared - modelled,
        "prepare": prepared - began,
        "fit": fitted - prepared,
        "evaluate": evaluated - fitted,
        "finish": time.perf_counter() - evaluated,
    }
    if session.startup is not None:
        phases["startup"] = session.startup
    return phases


def _describe_inputs(inputs: Inputs, seconds: float) -> str:
    described = inputs.description
    if not described["cached"]:
        return f"inputs: examples through the whole network every epoch (augmentation: {described['views']})"
    views = (
        f"{described['views']} augmented view(s) per training example"
        if described["views"]
        else "the clean view of each example"
    )
    return (
        f"inputs: activations of the frozen stages, cached at '{described['start_stage']}' "
        f"{tuple(described['activation_shape'])} "
        f"for {views} ({seconds:.1f}s so far; cache: {described['cache_dir']})"
    )


def _print_plan(kind: RunKind, dataset, config: RunConfig, model: nn.Module, plan: FreezePlan, advice) -> None:
    stderr.print(
        f"[bold]graft train[/]: {kind.headline(dataset)}; "
        + ", ".join(f"{name} {len(items)}" for name, items in dataset.splits.items())
        + (f"; [yellow]{len(dataset.skipped)} file(s) skipped (see manifest.json)[/]" if dataset.skipped else "")
        + (
            f"; [yellow]{len(dataset.warnings)} warning(s)[/] (graft check {config.data} lists them)"
            if getattr(dataset, "warnings", None)
            else ""
        )
    )
    trunks = model.trunks()
    rows = plan.rows(next(iter(trunks.values())))
    per = f", {len(trunks)} towers, each" if len(trunks) > 1 else ""
    stderr.print(
        table(
            f"freeze plan ({config.mode}, {config.backbone}{per})",
            ["part", "status", "params", "lr", "batchnorm"],
            [[r["part"], r["status"], f"{r['params']:,}", f"{r['lr']:.2g}", r["batchnorm"]] for r in rows],
        )
    )
    counts = parameter_counts(model)
    stderr.print(f"trainable params: {counts['trainable']:,}   frozen params: {counts['frozen']:,}")
    if advice is not None and advice.race and "candidates" in advice.race:
        stderr.print(race_table(advice.race))
    if advice is not None:
        stderr.print(
            f"[bold]advice[/]: scenario {advice.scenario}, similarity {advice.similarity:.2f}; "
            + "; ".join(advice.reasons[2:])
        )


def race_table(race: dict[str, Any]):
    """``--mode auto``'s race as a table: every candidate's held-out accuracy per fold, the winner marked."""
    from graft.core.race import rows

    shown = rows(race)
    return table(
        f"--mode auto: race over {race['folds']} folds ({race['seconds']:.0f}s)",
        list(shown[0]),
        [list(row.values()) for row in shown],
    )


def _version() -> str:
    from graft import __version__

    return __version__
