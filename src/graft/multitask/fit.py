"""Training several tasks at once: masked per-task losses, task weighting, the soft-sharing tie, metrics.

Regression targets are standardised with the training split's mean and standard deviation, so an age
in years does not outweigh a cross-entropy; ``weighting="uncertainty"`` learns one log-variance per
task (Kendall, Gal & Cipolla, 2018): ``sum_t exp(-s_t) * L_t + s_t``. A missing label (NaN) adds
nothing to its task's loss. The best epoch is the one with the highest combined validation score:
the mean over tasks of accuracy (classification) and of ``1 - MAE / MAE(predicting the training
median)`` (regression skill).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, log_loss, precision_recall_fscore_support
from torch import nn

from graft.checkpoint import Checkpoint
from graft.errors import ConfigError, TrainingError
from graft.freeze import FreezePlan
from graft.multitask.model import MultiTaskModel
from graft.tasks import Task
from graft.training import adamw, one_cycle

WEIGHTINGS = ("uncertainty", "equal")


@dataclass(frozen=True)
class TargetScale:
    """Standardisation of a regression task (from the training split) and its naive baseline (the median)."""

    mean: float
    std: float
    median: float

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "std": self.std, "median": self.median}


def target_scales(tasks: Sequence[Task], train_targets: np.ndarray) -> dict[str, TargetScale]:
    scales = {}
    for index, task in enumerate(tasks):
        if not task.is_classification:
            values = train_targets[:, index]
            values = values[~np.isnan(values)]
            scales[task.name] = TargetScale(float(values.mean()), float(max(values.std(), 1e-6)), float(np.median(values)))
    return scales


class MultiTaskLoss(nn.Module):
    """Masked per-task losses combined with fixed (``equal``) or learned (``uncertainty``) weights."""

    def __init__(self, tasks: Sequence[Task], scales: dict[str, TargetScale], weighting: str = "uncertainty", label_smoothing: float = 0.1):
        super().__init__()
        if weighting not in WEIGHTINGS:
            raise ConfigError(f"--task-weighting must be one of {', '.join(WEIGHTINGS)}; got '{weighting}'")
        self.tasks = list(tasks)
        self.scales = scales
        self.weighting = weighting
        self.label_smoothing = label_smoothing
        self.log_vars = nn.Parameter(torch.zeros(len(tasks)), requires_grad=weighting == "uncertainty")

    def task_losses(self, outputs: dict[str, torch.Tensor], targets: torch.Tensor) -> dict[str, torch.Tensor]:
        losses = {}
        for index, task in enumerate(self.tasks):
            column = targets[:, index]
            mask = ~torch.isnan(column)
            if not mask.any():
                continue
            output = outputs[task.name][mask]
            if task.is_classification:
                losses[task.name] = nn.functional.cross_entropy(output, column[mask].long(), label_smoothing=self.label_smoothing)
            else:
                scale = self.scales[task.name]
                losses[task.name] = nn.functional.smooth_l1_loss(output.squeeze(1), (column[mask] - scale.mean) / scale.std)
        return losses

    def forward(self, outputs: dict[str, torch.Tensor], targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        losses = self.task_losses(outputs, targets)
        total = torch.zeros(())
        for index, task in enumerate(self.tasks):
            if task.name in losses:
                total = total + (torch.exp(-self.log_vars[index]) * losses[task.name] + self.log_vars[index] if self.weighting == "uncertainty" else losses[task.name])
        return total, losses

    def weights(self) -> dict[str, float]:
        return {task.name: float(torch.exp(-self.log_vars[i].detach())) for i, task in enumerate(self.tasks)}


def decode(task: Task, output: np.ndarray, scales: dict[str, TargetScale]) -> np.ndarray:
    """Probabilities (classification) or values in the task's units (regression) from raw outputs."""
    if task.is_classification:
        shifted = output - output.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        return exp / exp.sum(axis=1, keepdims=True)
    scale = scales[task.name]
    return output[:, 0] * scale.std + scale.mean


def task_metrics(tasks: Sequence[Task], outputs: dict[str, np.ndarray], targets: np.ndarray, scales: dict[str, TargetScale], detail: bool = False) -> dict[str, Any]:
    """Per-task metrics on the labelled rows of each task, and the combined score."""
    result: dict[str, Any] = {}
    scores = []
    for index, task in enumerate(tasks):
        mask = ~np.isnan(targets[:, index])
        if not mask.any():
            continue
        decoded = decode(task, outputs[task.name][mask], scales)
        truth = targets[mask, index]
        if task.is_classification:
            labels = truth.astype(int)
            indices = list(range(len(task.classes)))
            predicted = decoded.argmax(axis=1)
            clipped = np.clip(decoded, 1e-7, 1.0)
            entry = {
                "kind": "classification",
                "n": int(mask.sum()),
                "accuracy": float(accuracy_score(labels, predicted)),
                "macro_f1": float(f1_score(labels, predicted, labels=indices, average="macro", zero_division=0)),
                "loss": float(log_loss(labels, clipped / clipped.sum(axis=1, keepdims=True), labels=indices)),
            }
            if detail:
                precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=indices, zero_division=0)
                entry["per_class"] = {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
                                      for i, name in enumerate(task.classes)}
                entry["confusion_matrix"] = confusion_matrix(labels, predicted, labels=indices).tolist()
            scores.append(entry["accuracy"])
        else:
            errors = decoded - truth
            baseline = float(np.abs(truth - scales[task.name].median).mean())
            entry = {
                "kind": "regression",
                "n": int(mask.sum()),
                "mae": float(np.abs(errors).mean()),
                "rmse": float(np.sqrt((errors**2).mean())),
                "median_baseline_mae": baseline,
            }
            scores.append(1.0 - entry["mae"] / baseline if baseline > 0 else 0.0)
        result[task.name] = entry
    return {"score": float(np.mean(scores)) if scores else float("nan"), "tasks": result}


@torch.inference_mode()
def collect_outputs(model: MultiTaskModel, loader, start: int = 0, progress=None, description: str = "predict") -> tuple[dict[str, np.ndarray], np.ndarray]:
    model.eval()
    outputs: dict[str, list[np.ndarray]] = {}
    targets = []
    task = progress.add_task(description, total=len(loader), status="") if progress is not None else None
    for inputs, batch_targets in loader:
        for name, value in model(inputs.float(), start=start).items():
            outputs.setdefault(name, []).append(value.float().numpy())
        targets.append(np.asarray(batch_targets, dtype=np.float64))
        if task is not None:
            progress.advance(task)
    if task is not None:
        progress.remove_task(task)
    return {name: np.concatenate(parts) for name, parts in outputs.items()}, np.concatenate(targets)


@dataclass
class MultiTaskState:
    """What the loop hands to ``on_epoch_end`` and returns."""

    model: MultiTaskModel
    loss: MultiTaskLoss
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    improved: bool = False
    stopped: str = ""
    since_best: int = 0
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None

    def position(self) -> dict[str, Any]:
        """The JSON-able part of the state, for a checkpoint (:func:`graft.checkpoint.write_checkpoint`)."""
        return {"history": self.history, "best_epoch": self.best_epoch, "stopped": self.stopped, "since_best": self.since_best}

    def restore(self, position: dict[str, Any], best_state: dict[str, torch.Tensor] | None) -> None:
        self.history, self.best_epoch, self.stopped, self.since_best = position["history"], position["best_epoch"], position["stopped"], position["since_best"]
        self.best_state = best_state


def fit_multitask(
    model: MultiTaskModel,
    loss: MultiTaskLoss,
    plan: FreezePlan,
    train_loader,
    valid_loader,
    *,
    epochs: int,
    patience: int = 5,
    tie: float = 0.0,
    weight_decay: float = 0.01,
    start: int = 0,
    time_budget: float | None = None,
    on_epoch_end: Callable[[MultiTaskState], None] | None = None,
    progress=None,
    resume: Checkpoint | None = None,
) -> MultiTaskState:
    """Train all towers and heads together; validation metrics per task every epoch; best combined score kept.

    ``tie`` weighs the soft-sharing penalty ``tie * model.tower_distance()``. ``time_budget`` (seconds of
    epochs) stops after the epoch that exceeds it. ``resume`` (a checkpoint already loaded into ``model``)
    continues after its last epoch with its optimizer and schedule.
    """
    if tie < 0:
        raise ConfigError(f"--tie must be zero or positive; got {tie}")
    groups = []
    for name, tower in model.towers.items():
        plan.apply(tower)
        for group in plan.param_groups(tower, weight_decay):
            groups.append({**group, "name": f"{name}.{group['name']}"})
    if loss.weighting == "uncertainty":
        groups.append({"name": "task_weights", "params": [loss.log_vars], "lr": plan.lr, "weight_decay": 0.0})
    optimizer = adamw(groups)
    scheduler = one_cycle(optimizer, epochs * len(train_loader))
    state = MultiTaskState(model=model, loss=loss, optimizer=optimizer, scheduler=scheduler)
    if resume is not None:
        optimizer.load_state_dict(resume.optimizer_state)
        scheduler.load_state_dict(resume.scheduler_state)
        state.restore(resume.position, resume.best_state)
    epoch_task = progress.add_task("epochs", total=epochs, completed=len(state.history), status="") if progress is not None else None
    for epoch in range(len(state.history) + 1, epochs + 1):
        if state.stopped:
            break
        began = time.perf_counter()
        train_loss = _train_epoch(model, loss, plan, train_loader, optimizer, scheduler, tie, start, progress, epoch)
        outputs, targets = collect_outputs(model, valid_loader, start=start, progress=progress, description="validate")
        metrics = task_metrics(loss.tasks, outputs, targets, loss.scales)
        record = {
            "epoch": epoch,
            "train_loss": train_loss,
            "valid_score": metrics["score"],
            "valid": metrics["tasks"],
            "task_weights": loss.weights(),
            "tower_distance": float(model.tower_distance().detach()),
            "lr": float(optimizer.param_groups[0]["lr"]),
            "seconds": time.perf_counter() - began,
        }
        best = state.history[state.best_epoch - 1]["valid_score"] if state.history else -math.inf
        state.improved = record["valid_score"] > best
        state.history.append(record)
        if state.improved:
            state.best_epoch, state.since_best = epoch, 0
            state.best_state = copy.deepcopy(model.state_dict())
        else:
            state.since_best += 1
        if state.since_best >= patience and epoch < epochs:
            state.stopped = f"no better validation score for {patience} epochs"
        elif time_budget is not None and sum(r["seconds"] for r in state.history) >= time_budget and epoch < epochs:
            state.stopped = f"time budget of {time_budget:.0f}s used"
        if epoch_task is not None:
            summary = ", ".join(_short(name, entry) for name, entry in metrics["tasks"].items())
            progress.update(epoch_task, advance=1, status=f"score {record['valid_score']:.3f} ({summary})")
        if on_epoch_end is not None:
            on_epoch_end(state)
    model.load_state_dict(state.best_state)
    return state


def _short(name: str, entry: dict[str, Any]) -> str:
    return f"{name} acc {entry['accuracy']:.3f}" if entry["kind"] == "classification" else f"{name} MAE {entry['mae']:.2f}"


def _train_epoch(model, loss, plan, loader, optimizer, scheduler, tie, start, progress, epoch) -> float:
    for tower in model.towers.values():
        plan.train_mode(tower)
    total, seen = 0.0, 0
    task = progress.add_task(f"epoch {epoch}", total=len(loader), status="") if progress is not None else None
    for inputs, targets in loader:
        outputs = model(inputs.float(), start=start)
        value, _ = loss(outputs, torch.as_tensor(targets, dtype=torch.float32))
        if tie > 0:
            value = value + tie * model.tower_distance()
        if not math.isfinite(value.item()):
            raise TrainingError(f"the training loss became {value.item()} in epoch {epoch}", hint="try a 10x smaller --lr (or a smaller --tie)")
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        scheduler.step()
        total += value.item() * len(targets)
        seen += len(targets)
        if task is not None:
            progress.update(task, advance=1, status=f"loss {total / seen:.3f}")
    if task is not None:
        progress.remove_task(task)
    return total / max(seen, 1)
