"""The contrastive objective: pull same-class embeddings together, push other classes apart.

SetFit samples sentence pairs up front (a list that grows with the square of the data: SetFit #472).
Here every pair *within a batch* is a training pair: a batch of B examples gives B(B-1)/2 pairs for
B forward passes, and memory is one B x B similarity matrix, whatever the size of the data. The loss
is SetFit's cosine-similarity regression (same class: cosine 1, other class: 0), with positive and
negative pairs weighted equally (with many classes most pairs are negative).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from graft.core.objectives import Objective


def pair_losses(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean squared error of the cosine similarity against 1 for same-label pairs and 0 for the others."""
    unit = nn.functional.normalize(features, dim=1)
    similarity = unit @ unit.T
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positive, negative = same & off_diagonal, ~same
    zero = similarity.new_zeros(())
    pos = ((similarity[positive] - 1) ** 2).mean() if positive.any() else zero
    neg = (similarity[negative] ** 2).mean() if negative.any() else zero
    return pos, neg


def centroid_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out nearest-class-centroid accuracy under cosine similarity: how well the embedding
    separates the classes, with no head trained yet."""
    unit = features / np.clip(np.linalg.norm(features, axis=1, keepdims=True), 1e-12, None)
    classes = np.unique(labels)
    sums = np.stack([unit[labels == c].sum(0) for c in classes])
    counts = np.array([(labels == c).sum() for c in classes], dtype=np.float64)
    own = np.searchsorted(classes, labels)
    scores = np.empty((len(labels), len(classes)))
    for k in range(len(classes)):
        total = sums[k] - np.where((own == k)[:, None], unit, 0.0)
        n = counts[k] - (own == k)
        centroid = total / np.clip(n, 1, None)[:, None]
        centroid /= np.clip(np.linalg.norm(centroid, axis=1, keepdims=True), 1e-12, None)
        scores[:, k] = np.where(n > 0, (unit * centroid).sum(1), -np.inf)
    return float((classes[scores.argmax(1)] == labels).mean())


class ContrastivePairs(Objective):
    """In-batch pairs, cosine-similarity targets; an epoch is judged by leave-one-out centroid accuracy
    on the validation embeddings."""

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, model: nn.Module) -> torch.Tensor:
        pos, neg = pair_losses(outputs, targets.long())
        return pos + neg

    def validate(self, outputs: np.ndarray, targets: np.ndarray, model: nn.Module) -> dict[str, Any]:
        features, labels = torch.from_numpy(outputs), torch.from_numpy(targets.astype(np.int64))
        pos, neg = pair_losses(features, labels)
        accuracy = centroid_accuracy(outputs, targets.astype(np.int64))
        return {"valid_loss": float(pos + neg), "valid_centroid_accuracy": accuracy, "valid_score": accuracy}

    def rank(self, record: dict[str, Any]) -> tuple:
        return (record["valid_score"], -record["valid_loss"])

    def status(self, record: dict[str, Any]) -> str:
        return f"valid centroid acc {record['valid_centroid_accuracy']:.3f}"
