"""LogME: how well frozen features suit a labelled target task, before any training.

You, Liu, Wang, Long, "LogME: Practical Assessment of Pre-trained Models for Transfer Learning"
(ICML 2021). For each class ``k`` a Bayesian linear model ``y_k = F w + noise`` is fitted to the
one-hot labels, with a Gaussian prior ``w ~ N(0, 1/alpha)`` and noise precision ``beta``; alpha and
beta are set by evidence maximisation (MacKay's fixed-point iteration) and the score is the
log marginal likelihood ``log p(y_k | F)`` per sample, averaged over classes.

Higher is better. The value is an average log-likelihood per image and label (nats), so it is
comparable between backbones (and between depths of one backbone) *on the same data*, not between
datasets. Unlike a linear probe it needs no hyper-parameters and no held-out split, and it
costs one SVD.
"""

from __future__ import annotations

import numpy as np

from graft.errors import DataError

__all__ = ["logme"]


def _evidence(
    projected: np.ndarray, residual_outside: float, eigenvalues: np.ndarray, n: int, d: int, iterations: int
) -> float:
    """Maximised log evidence of one target column, from its projection on the feature SVD basis.

    ``projected`` = ``U^T y`` (length r), ``residual_outside`` = ``|y|^2 - |U^T y|^2`` (the part of y the
    features cannot express), ``eigenvalues`` = squared singular values of ``F`` (length r <= d).
    """
    alpha, beta = 1.0, 1.0
    for _ in range(iterations):
        shrink = beta * eigenvalues / (alpha + beta * eigenvalues)
        gamma = float(shrink.sum())  # effective number of well-determined parameters
        mean_norm = float(np.sum(beta**2 * eigenvalues * projected**2 / (alpha + beta * eigenvalues) ** 2))  # |m|^2
        residual = (
            float(np.sum((alpha * projected / (alpha + beta * eigenvalues)) ** 2)) + residual_outside
        )  # |F m - y|^2
        new_alpha = gamma / max(mean_norm, 1e-12)
        new_beta = (n - gamma) / max(residual, 1e-12)
        converged = abs(new_alpha / new_beta - alpha / beta) <= 1e-3 * (alpha / beta)
        alpha, beta = new_alpha, new_beta
        if converged:
            break
    mean_norm = float(np.sum(beta**2 * eigenvalues * projected**2 / (alpha + beta * eigenvalues) ** 2))
    residual = float(np.sum((alpha * projected / (alpha + beta * eigenvalues)) ** 2)) + residual_outside
    log_det = float(np.sum(np.log(alpha + beta * eigenvalues))) + (d - len(eigenvalues)) * np.log(alpha)
    evidence = (
        0.5 * n * np.log(beta)
        + 0.5 * d * np.log(alpha)
        - 0.5 * n * np.log(2 * np.pi)
        - 0.5 * beta * residual
        - 0.5 * alpha * mean_norm
        - 0.5 * log_det
    )
    return float(evidence / n)


def logme(features: np.ndarray, labels: np.ndarray, iterations: int = 50) -> float:
    """LogME score of ``features`` ``(n, d)`` for integer class ``labels`` ``(n,)``; higher = more transferable.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> labels = np.repeat([0, 1], 50)
    >>> good = rng.normal(size=(100, 8)) + labels[:, None] * 3.0
    >>> noise = rng.normal(size=(100, 8))
    >>> logme(good, labels) > logme(noise, labels)
    True
    """
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    if features.ndim != 2 or labels.ndim != 1 or len(features) != len(labels):
        raise DataError(f"logme needs features (n, d) and labels (n,); got {features.shape} and {labels.shape}")
    if len(np.unique(labels)) < 2:
        raise DataError("logme needs at least 2 classes among the labels")
    n, d = features.shape
    u, singular, _ = np.linalg.svd(features, full_matrices=False)
    eigenvalues = singular**2
    scores = []
    for value in np.unique(labels):
        target = (labels == value).astype(np.float64)
        projected = u.T @ target
        outside = max(float(target @ target - projected @ projected), 0.0)
        scores.append(_evidence(projected, outside, eigenvalues, n, d, iterations))
    return float(np.mean(scores))
