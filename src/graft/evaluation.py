"""Metrics for a trained classifier: loss, accuracy, per-class precision/recall/F1, confusion matrix.

scikit-learn computes the metrics; tests check graft's shapes against it.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, log_loss, precision_recall_fscore_support


@torch.inference_mode()
def predict_probabilities(model: torch.nn.Module, loader, start: int = 0, progress=None, description: str = "predict") -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities and labels for every batch of ``loader``, in order."""
    model.eval()
    probabilities, labels = [], []
    task = progress.add_task(description, total=len(loader), status="") if progress is not None else None
    for inputs, targets in loader:
        probabilities.append(torch.softmax(model(inputs, start=start).float(), dim=1).numpy())
        labels.append(np.asarray(targets))
        if task is not None:
            progress.advance(task)
    if task is not None:
        progress.remove_task(task)
    return np.concatenate(probabilities), np.concatenate(labels)


def classification_metrics(probabilities: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """The ``evaluate`` JSON shape: accuracy, loss, n, per_class, confusion_matrix."""
    indices = list(range(len(classes)))
    predicted = probabilities.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=indices, zero_division=0)
    clipped = np.clip(probabilities, 1e-7, 1.0)
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "loss": float(log_loss(labels, clipped / clipped.sum(axis=1, keepdims=True), labels=indices)),
        "n": int(len(labels)),
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
            for i, name in enumerate(classes)
        },
        "confusion_matrix": confusion_matrix(labels, predicted, labels=indices).tolist(),
    }
