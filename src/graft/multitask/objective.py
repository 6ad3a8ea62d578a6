"""The objective of several tasks at once: masked per-task losses, task weighting, the soft-sharing
tie, and per-task metrics. It plugs into the one loop (:mod:`graft.core.fit`) like any objective.

Regression targets are standardised with the training split's mean and standard deviation, so an age
in years does not outweigh a cross-entropy; ``weighting="uncertainty"`` learns one log-variance per
task (Kendall, Gal & Cipolla, 2018): ``sum_t exp(-s_t) * L_t + s_t``. A missing label (NaN) adds
nothing to its task's loss. The best epoch is the one with the highest combined validation score:
the mean over tasks of accuracy (classification) and of ``1 - MAE / MAE(predicting the training
median)`` (regression skill).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from graft.core.evaluation import class_scores, probabilities
from graft.core.objectives import Objective
from graft.errors import ConfigError
from graft.multitask.tasks import Task

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
            scales[task.name] = TargetScale(
                float(values.mean()), float(max(values.std(), 1e-6)), float(np.median(values))
            )
    return scales


class MultiTaskObjective(Objective):
    """Masked per-task losses combined with fixed (``equal``) or learned (``uncertainty``) weights, plus
    ``tie * model.tower_distance()`` for soft sharing. The best epoch has the best combined score."""

    leaves_outputs_unused = True  # a batch (or a rank's share of it) without a task's labels leaves its head out

    def __init__(
        self,
        tasks: Sequence[Task],
        scales: dict[str, TargetScale],
        weighting: str = "uncertainty",
        label_smoothing: float = 0.1,
        tie: float = 0.0,
    ):
        super().__init__()
        if weighting not in WEIGHTINGS:
            raise ConfigError(f"--task-weighting must be one of {', '.join(WEIGHTINGS)}; got '{weighting}'")
        if not tie >= 0:
            raise ConfigError(f"--tie must be zero or positive; got {tie}")
        self.tasks = list(tasks)
        self.scales = scales
        self.weighting = weighting
        self.label_smoothing = label_smoothing
        self.tie = tie
        self.log_vars = nn.Parameter(torch.zeros(len(tasks)), requires_grad=weighting == "uncertainty")

    def task_losses(self, outputs: dict[str, torch.Tensor], targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each task's mean loss over the batch's rows labelled for it (tasks without such a row are left out).
        Over several processes the mean is the whole batch's: this rank's sum over every rank's count, times
        the world (DDP's averaging divides it out); a task only other ranks' rows hold counts zero here."""
        sums, rows = {}, {}
        for index, task in enumerate(self.tasks):
            column = targets[:, index]
            mask = ~torch.isnan(column)
            output = outputs[task.name][mask]
            if task.is_classification:
                summed = nn.functional.cross_entropy(
                    output, column[mask].long(), label_smoothing=self.label_smoothing, reduction="sum"
                )
            else:
                scale = self.scales[task.name]
                summed = nn.functional.smooth_l1_loss(
                    output.squeeze(1), (column[mask] - scale.mean) / scale.std, reduction="sum"
                )
            sums[task.name], rows[task.name] = summed, float(mask.sum())
        return self.processes.batch_means(sums, rows)

    def forward(
        self, outputs: dict[str, torch.Tensor], targets: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted sum of the task losses (without the tie) and each task's loss."""
        losses = self.task_losses(outputs, targets)
        total = self.log_vars.new_zeros(())
        for index, task in enumerate(self.tasks):
            if task.name in losses:
                total = total + (
                    torch.exp(-self.log_vars[index]) * losses[task.name] + self.log_vars[index]
                    if self.weighting == "uncertainty"
                    else losses[task.name]
                )
        return total, losses

    def loss(self, outputs: dict[str, torch.Tensor], targets: torch.Tensor, model: nn.Module) -> torch.Tensor:
        total, _ = self(outputs, targets.float())
        return total + self.tie * model.tower_distance() if self.tie > 0 else total

    def validate(self, outputs: dict[str, np.ndarray], targets: np.ndarray, model: nn.Module) -> dict[str, Any]:
        metrics = task_metrics(self.tasks, outputs, targets.astype(np.float64), self.scales)
        return {
            "valid_score": metrics["score"],
            "valid": metrics["tasks"],
            "task_weights": self.weights(),
            "tower_distance": float(model.tower_distance().detach()),
        }

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        return (
            [{"name": "task_weights", "params": [self.log_vars], "lr": lr, "weight_decay": 0.0}]
            if self.weighting == "uncertainty"
            else []
        )

    def status(self, record: dict[str, Any]) -> str:
        return f"score {record['valid_score']:.3f}"  # per task: the history, the report and the final table

    def weights(self) -> dict[str, float]:
        return {task.name: float(torch.exp(-self.log_vars[i].detach())) for i, task in enumerate(self.tasks)}


def decode(task: Task, output: np.ndarray, scales: dict[str, TargetScale]) -> np.ndarray:
    """Probabilities (classification) or values in the task's units (regression) from raw outputs."""
    if task.is_classification:
        return probabilities(output)
    scale = scales[task.name]
    return output[:, 0] * scale.std + scale.mean


def task_metrics(
    tasks: Sequence[Task],
    outputs: dict[str, np.ndarray],
    targets: np.ndarray,
    scales: dict[str, TargetScale],
    detail: bool = False,
) -> dict[str, Any]:
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
            entry = {
                "kind": "classification",
                **class_scores(decoded, truth.astype(int), task.classes, detail=detail),
            }
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
