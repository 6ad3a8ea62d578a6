"""Running a model over a loader, and the metrics of a trained classifier (loss, accuracy, per-class
precision/recall/F1, confusion matrix). scikit-learn computes the metrics; tests check graft's
shapes against it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, log_loss, precision_recall_fscore_support

from graft.core.runtime import CPU, Runtime


@torch.inference_mode()
def collect_outputs(
    model: torch.nn.Module, loader, start: int = 0, runtime: Runtime = CPU, on_batch: Callable[[], None] | None = None
) -> tuple[np.ndarray | dict[str, np.ndarray], np.ndarray]:
    """The model's outputs for every batch of ``loader`` (in order, as float32 numpy arrays: one array,
    or one per key when the model returns a mapping) and the batches' targets."""
    model.eval()
    parts: list[Any] = []
    targets = []
    for inputs, batch_targets in loader:
        outputs = model(runtime.put(inputs), start=start)
        parts.append(
            {k: v.float().cpu().numpy() for k, v in outputs.items()}
            if isinstance(outputs, dict)
            else outputs.float().cpu().numpy()
        )
        targets.append(np.asarray(batch_targets))
        if on_batch is not None:
            on_batch()
    joined_targets = np.concatenate(targets) if targets else np.empty((0,))
    if parts and isinstance(parts[0], dict):
        return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}, joined_targets
    return (np.concatenate(parts) if parts else np.empty((0, 0), dtype=np.float32)), joined_targets


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Softmax over classes (float32, as the model computes it)."""
    return torch.softmax(torch.from_numpy(logits), dim=1).numpy()


def answer(row: Sequence[float], classes: Sequence[str]) -> dict[str, Any]:
    """One example's class probabilities as graft reports them (``predict --json``, the served API): the
    top label, its probability and every class's."""
    best = int(np.argmax(row))
    return {
        "label": classes[best],
        "prob": float(row[best]),
        "probs": {name: float(p) for name, p in zip(classes, row)},
    }


def predict_probabilities(
    model: torch.nn.Module, loader, start: int = 0, runtime: Runtime = CPU, on_batch: Callable[[], None] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities of a classifier and the labels, for every batch of ``loader``, in order."""
    logits, labels = collect_outputs(model, loader, start=start, runtime=runtime, on_batch=on_batch)
    return probabilities(logits), labels


def classification_metrics(probabilities: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """The ``evaluate`` JSON shape: accuracy, macro_f1, loss, n, per_class, confusion_matrix."""
    indices = list(range(len(classes)))
    predicted = probabilities.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=indices, zero_division=0)
    clipped = np.clip(probabilities, 1e-7, 1.0)
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "macro_f1": float(np.mean(f1)),  # what an imbalanced task (spam) is judged by
        "loss": float(log_loss(labels, clipped / clipped.sum(axis=1, keepdims=True), labels=indices)),
        "n": int(len(labels)),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        },
        "confusion_matrix": confusion_matrix(labels, predicted, labels=indices).tolist(),
    }
