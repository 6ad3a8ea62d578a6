"""LogME against a direct transcription of the paper's algorithm (eigendecomposition of F^T F)."""

import numpy as np
import pytest

from graft.core.transferability import logme
from graft.errors import DataError


def _reference_logme(features, labels):
    """Algorithm 1 of You et al. (2021), written naively: D x D eigendecomposition, the same fixed point."""
    f = features.astype(np.float64)
    n, d = f.shape
    s, v = np.linalg.eigh(f.T @ f)
    s = np.clip(s, 0, None)
    scores = []
    for k in np.unique(labels):
        y = (labels == k).astype(np.float64)
        alpha, beta = 1.0, 1.0
        for _ in range(200):
            gamma = np.sum(beta * s / (alpha + beta * s))
            a_inv = v @ np.diag(1 / (alpha + beta * s)) @ v.T
            m = beta * a_inv @ f.T @ y
            new_alpha = gamma / (m @ m)
            new_beta = (n - gamma) / np.sum((f @ m - y) ** 2)
            done = abs(new_alpha / new_beta - alpha / beta) <= 1e-9 * alpha / beta
            alpha, beta = new_alpha, new_beta
            if done:
                break
        a_inv = v @ np.diag(1 / (alpha + beta * s)) @ v.T
        m = beta * a_inv @ f.T @ y
        evidence = (
            n / 2 * np.log(beta)
            + d / 2 * np.log(alpha)
            - n / 2 * np.log(2 * np.pi)
            - beta / 2 * np.sum((f @ m - y) ** 2)
            - alpha / 2 * m @ m
            - 0.5 * np.sum(np.log(alpha + beta * s))
        )
        scores.append(evidence / n)
    return float(np.mean(scores))


@pytest.mark.parametrize("n,d", [(60, 5), (30, 50)])  # more samples than features, and fewer
def test_logme_matches_the_papers_algorithm(n, d):
    rng = np.random.default_rng(n + d)
    labels = rng.integers(0, 3, n)
    features = rng.normal(size=(n, d)) + labels[:, None] * rng.normal(size=d) + 1.0
    assert logme(features, labels, iterations=200) == pytest.approx(
        _reference_logme(features, labels), rel=1e-4, abs=1e-4
    )


def test_logme_prefers_features_that_separate_the_classes():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 25)
    noise = rng.normal(size=(100, 32))
    informative = noise + 4.0 * np.eye(32)[labels]
    assert logme(informative, labels) > logme(noise, labels) + 0.2


def test_logme_rejects_a_single_class():
    with pytest.raises(DataError, match="at least 2 classes"):
        logme(np.zeros((5, 3)), np.zeros(5, dtype=int))
