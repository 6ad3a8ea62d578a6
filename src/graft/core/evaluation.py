"""Running a model over a loader, and the metrics of a trained classifier (loss, accuracy, per-class
precision/recall/F1, confusion matrix). The metrics are a few lines of numpy from the confusion matrix
rather than scikit-learn's: importing ``sklearn.metrics`` (SciPy, pandas) cost every run about a second
of start-up; tests check them against scikit-learn's."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

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
        with runtime.autocast():
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


def class_scores(
    probabilities: np.ndarray, labels: np.ndarray, classes: Sequence[str], *, detail: bool = True
) -> dict[str, Any]:
    """Accuracy, macro F1 (what an imbalanced task such as spam is judged by), log loss and n; with ``detail``
    also precision, recall, F1 and support per class and the confusion matrix (rows: true class). A class
    with no examples or no predictions scores 0 where its ratio is undefined (scikit-learn's ``zero_division=0``)."""
    count = len(classes)
    labels = np.asarray(labels, dtype=np.int64)
    predicted = probabilities.argmax(axis=1)
    confusion = np.bincount(labels * count + predicted, minlength=count * count).reshape(count, count)
    hits, support, chosen = np.diag(confusion), confusion.sum(axis=1), confusion.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(chosen > 0, hits / chosen, 0.0)
        recall = np.where(support > 0, hits / support, 0.0)
        f1 = np.where(support + chosen > 0, 2 * hits / (support + chosen), 0.0)  # 2tp / (2tp + fp + fn)
    clipped = np.clip(probabilities.astype(np.float64), 1e-7, 1.0)
    clipped /= clipped.sum(axis=1, keepdims=True)
    truth = np.clip(clipped[np.arange(len(labels)), labels], np.finfo(np.float32).eps, 1.0)
    scores: dict[str, Any] = {
        "accuracy": float(hits.sum() / len(labels)) if len(labels) else 0.0,
        "macro_f1": float(np.mean(f1)),
        "loss": float(-np.mean(np.log(truth))),
        "n": int(len(labels)),
    }
    if detail:
        scores["per_class"] = {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        }
        scores["confusion_matrix"] = confusion.tolist()
    return scores


def classification_metrics(probabilities: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """The ``evaluate`` JSON shape: accuracy, macro_f1, loss, n, per_class, confusion_matrix."""
    return class_scores(probabilities, labels, classes)
