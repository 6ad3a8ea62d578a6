"""Objectives: what the loop minimises, and how an epoch is judged.

An :class:`Objective` is a module (it may hold learnable parameters and state, such as the learned
task weights of uncertainty weighting, which the checkpoint saves with it). It turns a batch's
outputs and targets into the loss, an epoch's validation outputs into the fields of the epoch's
record (``valid_score`` among them), and says which record is better. The loop (:mod:`graft.core.fit`)
knows nothing else about the task: cross-entropy for one classification task is one objective,
masked multi-task losses (:mod:`graft.multitask.objective`) another.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from graft.core.distributed import SINGLE, Processes
from graft.core.evaluation import probabilities


class Objective(nn.Module):
    """The interface the loop calls; subclasses implement :meth:`loss` and :meth:`validate`."""

    # True when a batch can leave some of the model's outputs out of the loss (a task none of its rows is
    # labelled for): over several processes DDP must then look for parameters without a gradient.
    leaves_outputs_unused = False
    # the run's processes (set by the loop): a loss term over the whole batch gathers every rank's rows
    processes: Processes = SINGLE

    def loss(self, outputs: Any, targets: torch.Tensor, model: nn.Module) -> torch.Tensor:
        """The training loss of one batch (a scalar tensor)."""
        raise NotImplementedError

    def train_sums(self, outputs: Any, targets: torch.Tensor) -> dict[str, float]:
        """Per-batch sums the loop adds up over an epoch and divides by the rows seen (e.g. correct predictions)."""
        return {}

    def validate(self, outputs: Any, targets: np.ndarray, model: nn.Module) -> dict[str, Any]:
        """The epoch record's validation fields from all validation outputs; must include ``valid_score``."""
        raise NotImplementedError

    def rank(self, record: dict[str, Any]) -> tuple:
        """Records compare by this key; the largest is the best epoch."""
        return (record["valid_score"],)

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimizer groups for the objective's own learnable parameters (none by default)."""
        return []

    def status(self, record: dict[str, Any]) -> str:
        """A short progress line for an epoch."""
        return f"valid score {record['valid_score']:.3f}"


class Classification(Objective):
    """One classification task: cross-entropy with label smoothing; the best epoch has the highest
    validation accuracy (ties: the lowest validation loss)."""

    def __init__(self, label_smoothing: float = 0.1):
        super().__init__()
        self.label_smoothing = label_smoothing

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, model: nn.Module) -> torch.Tensor:
        summed = nn.functional.cross_entropy(
            outputs, targets.long(), label_smoothing=self.label_smoothing, reduction="sum"
        )
        return self.processes.batch_mean(summed, len(targets))

    def train_sums(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        return {"train_accuracy": float((outputs.argmax(1) == targets).sum())}

    def validate(self, outputs: np.ndarray, targets: np.ndarray, model: nn.Module) -> dict[str, Any]:
        probs = probabilities(outputs)  # as evaluation and prediction compute them
        labels = targets.astype(np.int64)
        picked = np.clip(probs[np.arange(len(labels)), labels], 1e-7, None)
        accuracy = float((probs.argmax(1) == labels).mean())
        return {"valid_loss": float(-np.log(picked).mean()), "valid_accuracy": accuracy, "valid_score": accuracy}

    def rank(self, record: dict[str, Any]) -> tuple:
        return (record["valid_accuracy"], -record["valid_loss"])

    def status(self, record: dict[str, Any]) -> str:
        return f"valid acc {record['valid_accuracy']:.3f}"
