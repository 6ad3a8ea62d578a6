"""Did adaptation help? Answers that need no target label.

- information maximisation (IM; Shi & Sha 2012, the validator Musgrave et al. 2022 rank among the best
  in their 1,000,000-checkpoint study): the entropy of the mean target prediction minus the mean
  entropy of each prediction; high when predictions are confident *and* spread over the classes;
- mean entropy of target predictions (low is confident; alone it rewards collapse);
- soft neighbourhood density (Saito et al. 2021): how clustered target predictions are;
- the proxy A-distance (Ben-David et al. 2007): 2 (1 - 2 err) of a domain classifier on features,
  0 when source and target cannot be told apart, 2 when they always can.
"""

from __future__ import annotations

import numpy as np

from graft.perf import one_blas_thread


def _entropy(probs: np.ndarray, axis: int = -1) -> np.ndarray:
    return -(probs * np.log(np.clip(probs, 1e-12, None))).sum(axis)


def information_maximization(probs: np.ndarray) -> float:
    return float(_entropy(probs.mean(0)) - _entropy(probs).mean())


def soft_neighbourhood_density(probs: np.ndarray, temperature: float = 0.05, limit: int = 2000) -> float:
    """Mean entropy of each target prediction's softmax similarity to the others (higher: denser)."""
    rows = probs[:limit]
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True).clip(1e-12)
    similarity = unit @ unit.T / temperature
    np.fill_diagonal(similarity, -np.inf)
    similarity -= similarity.max(1, keepdims=True)
    weights = np.exp(similarity)
    weights /= weights.sum(1, keepdims=True)
    return float(_entropy(weights).mean())


def unsupervised_scores(probs: np.ndarray) -> dict[str, float]:
    """The label-free scores of target predictions (class probabilities, one row per target example)."""
    return {
        "im": information_maximization(probs),
        "entropy": float(_entropy(probs).mean()),
        "snd": soft_neighbourhood_density(probs),
    }


def proxy_a_distance(source: np.ndarray, target: np.ndarray, seed: int = 0) -> float:
    """The proxy A-distance between two sets of features: a logistic-regression domain classifier trained
    on half of each (as many rows of each domain) and tested on the other half."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    count = min(len(source), len(target))
    if count < 4:
        return float("nan")
    rows = np.concatenate([source[rng.permutation(len(source))[:count]], target[rng.permutation(len(target))[:count]]])
    domains = np.concatenate([np.zeros(count), np.ones(count)])
    order = rng.permutation(2 * count)
    train, test = order[:count], order[count:]
    scaler = StandardScaler().fit(rows[train])
    with one_blas_thread():
        classifier = LogisticRegression(max_iter=1000, C=0.1).fit(scaler.transform(rows[train]), domains[train])
    error = float((classifier.predict(scaler.transform(rows[test])) != domains[test]).mean())
    return float(np.clip(2 * (1 - 2 * error), 0.0, 2.0))
