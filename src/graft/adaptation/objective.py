"""The adaptation objective: cross-entropy on the batch's source rows plus ``strength`` times the
method's alignment term between source and target rows (target rows carry the label -1: the loop
never sees a target label).

Epochs are judged on the source validation split (its accuracy is recorded) and, without labels, on
the target rows (information maximisation, mean entropy); the *last* epoch is kept, as adaptation
papers do, since no labelled target split can say which epoch was best.

Over several processes the alignment term is computed on the whole batch, every rank's rows gathered
(:meth:`graft.core.distributed.Processes.gather`): a covariance (CORAL) or a class-confusion matrix (MCC) of
half a batch is not half of the whole batch's, so each rank's share alone would train a different model."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from graft.adaptation.methods import Method
from graft.adaptation.validators import unsupervised_scores
from graft.core.evaluation import probabilities
from graft.core.objectives import Objective

UNLABELLED = -1


class AdaptationObjective(Objective):
    def __init__(self, method: Method | None, strength: float | None, features: int, label_smoothing: float = 0.1):
        super().__init__()
        self.label_smoothing = label_smoothing
        self.features = features
        self.method: Method | None = None
        self.strength = 0.0
        self.extra: nn.Module | None = None
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.total_steps = 1
        if method is not None:
            self.use(method, strength)

    def use(self, method: Method, strength: float | None = None) -> None:
        """Train with ``method`` (``--method auto`` decides after the objective is made)."""
        self.method = method
        self.strength = method.default_strength if strength is None else float(strength)
        self.extra = method.modules(self.features)

    def loss(self, outputs, targets: torch.Tensor, model: nn.Module) -> torch.Tensor:
        logits, features = outputs
        source = targets != UNLABELLED
        summed = nn.functional.cross_entropy(
            logits[source], targets[source].long(), label_smoothing=self.label_smoothing, reduction="sum"
        )
        loss = self.processes.batch_mean(summed, int(source.sum()))
        if self.method.uses_target and self.strength > 0:
            logits, features, source = self._whole_batch(logits, features, source)
            target = ~source
            if target.sum() > 1:
                progress = min(1.0, float(self.steps) / max(1, self.total_steps))
                loss = loss + self.strength * self.method.alignment(
                    features[source], features[target], logits[target], self.extra, progress
                )
        self.steps += 1
        return loss

    def _whole_batch(self, logits, features, source):
        """The batch's logits, features and source mask over every rank (this rank's alone in one process),
        gathered as one tensor: one collective a step."""
        if not self.processes.distributed:
            return logits, features, source
        width = features.shape[1]
        whole = self.processes.gather(torch.cat([features, logits, source[:, None].to(features.dtype)], 1))
        return whole[:, width:-1], whole[:, :width], whole[:, -1] > 0.5

    def train_sums(self, outputs, targets: torch.Tensor) -> dict[str, float]:
        logits = outputs[0]
        source = targets != UNLABELLED
        rows = int(source.sum())
        correct = float((logits[source].argmax(1) == targets[source]).sum())
        # the loop divides by every row of the batch: scaled so the epoch's figure is the source accuracy
        return {"train_accuracy": correct * len(targets) / max(rows, 1)}

    def validate(self, outputs: np.ndarray, targets: np.ndarray, model: nn.Module) -> dict[str, Any]:
        probs = probabilities(outputs)
        source = targets != UNLABELLED
        labels = targets[source].astype(np.int64)
        picked = np.clip(probs[source][np.arange(len(labels)), labels], 1e-7, None)
        accuracy = float((probs[source].argmax(1) == labels).mean()) if len(labels) else 0.0
        record = {"valid_loss": float(-np.log(picked).mean()) if len(labels) else 0.0, "valid_accuracy": accuracy}
        if (~source).any():
            record.update({f"target_{k}": v for k, v in unsupervised_scores(probs[~source]).items()})
        return {**record, "valid_score": accuracy}

    def rank(self, record: dict[str, Any]) -> tuple:
        return (record["epoch"],)

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        if self.extra is None:
            return []
        return [{"name": self.method.name, "params": list(self.extra.parameters()), "lr": lr, "weight_decay": 0.01}]

    def status(self, record: dict[str, Any]) -> str:
        target = f", target IM {record['target_im']:.3f}" if "target_im" in record else ""
        return f"source valid acc {record['valid_accuracy']:.3f}{target}"
