"""Importance weights for sample-selection bias: w(x) = p_world(x) / p_sample(x), estimated from features.

The training sample was drawn with a bias (mostly bright images, say); an unlabelled pool drawn like
the world shows what it should have looked like. The estimators, on frozen pooled features:

- ``classifier``: a logistic-regression domain classifier, sample against pool; by Bayes' rule
  w(x) = (n_sample / n_pool) * P(pool | x) / P(sample | x) (Bickel, Brückner & Scheffer 2009);
- ``kliep``: Sugiyama et al. 2008's KLIEP, w(x) a non-negative mix of Gaussian kernels centred on pool
  examples, fitted to maximise the pool's log-likelihood under w times the sample's density;
- ``labelshift``: for a bias in how often each class was drawn (a selection that depends on the label, what
  a class looks like unchanged): the pool's class frequencies estimated by EM from a classifier trained on the
  sample (Saerens, Latinne & Decaestecker 2002), and w = p_pool(y) / p_sample(y) for an example of class y.
  Then p_world(x) / p_sample(x) is that mix over the classes x may belong to; the estimate uses the label the
  example has. Measured on sign-language digits (BENCHMARKS.md section 8): with the sample drawn 0.95 / 0.1 by
  class its weights correlate 0.84 with the true ones (calibrated EM), the domain classifier's 0.19; with a selection by
  appearance it is the wrong model (0.41) and costs accuracy. Its weights are one per class (``per_class``), and a
  run uses them as a shift of the classes' priors in the logits rather than as example weights (see
  :mod:`graft.adaptation.reweighted`);
- ``none``: every weight 1, the same run left uncorrected, to measure on one's own data what the weights do.

Weights are normalised to mean 1 over the sample and clipped to ``[1/CLIP, CLIP]`` (a few huge weights
would otherwise be the whole loss); the effective sample size (sum w)^2 / sum w^2 says how many
examples' worth of information the weighted sample still holds.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

CLIP = 10.0
ESTIMATORS = ("classifier", "kliep", "labelshift", "none")
EM_STEPS = 1000
LABELSHIFT_C = 0.1  # on standardised features; calibration, not this strength, sets the posteriors' scale
LABELSHIFT_FOLDS = 5


@dataclass
class ImportanceWeights:
    train: np.ndarray  # one weight per training example (mean 1)
    valid: np.ndarray  # for the validation examples, from the same estimate (importance-weighted validation)
    estimator: str
    clipped: int  # training weights moved to the clip bounds
    per_class: np.ndarray | None = None  # labelshift: the weight of each class, on the same scale as ``train``

    @property
    def effective_sample_size(self) -> float:
        return float(self.train.sum() ** 2 / (self.train**2).sum())

    def summary(self) -> dict:
        return {
            "estimator": self.estimator,
            "effective_sample_size": self.effective_sample_size,
            "examples": len(self.train),
            "clipped": self.clipped,
            "clip": CLIP,
            "min": float(self.train.min()),
            "max": float(self.train.max()),
            **({"per_class": self.per_class.tolist()} if self.per_class is not None else {}),
        }


def _standardised(sample: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean, scale = sample.mean(0), sample.std(0) + 1e-6
    return [(x - mean) / scale for x in (sample, *others)]


def classifier_ratio(sample: np.ndarray, pool: np.ndarray, *query: np.ndarray, seed: int = 0) -> list[np.ndarray]:
    from sklearn.linear_model import LogisticRegression

    sample, pool, *query = _standardised(sample, pool, *query)
    rows = np.concatenate([sample, pool])
    is_pool = np.concatenate([np.zeros(len(sample)), np.ones(len(pool))])
    model = LogisticRegression(C=0.1, max_iter=2000, random_state=seed).fit(rows, is_pool)
    prior = len(sample) / len(pool)
    ratios = []
    for x in (sample, *query):
        p = np.clip(model.predict_proba(x)[:, 1], 1e-6, 1 - 1e-6)
        ratios.append(prior * p / (1 - p))
    return ratios


def kliep_ratio(
    sample: np.ndarray, pool: np.ndarray, *query: np.ndarray, seed: int = 0, centres: int = 100
) -> list[np.ndarray]:
    """KLIEP with Gaussian kernels on PCA-reduced features; the kernel width is chosen, as in the paper,
    by the likelihood of held-out pool examples (a fifth of the pool) among multiples of the median distance."""
    from sklearn.decomposition import PCA

    sample, pool, *query = _standardised(sample, pool, *query)
    pca = PCA(n_components=min(20, sample.shape[1], len(sample) - 1), random_state=seed)
    pca.fit(np.concatenate([sample, pool]))
    sample, pool, *query = [pca.transform(x) for x in (sample, pool, *query)]
    rng = np.random.default_rng(seed)
    shuffled = pool[rng.permutation(len(pool))]
    held_out, fitting = shuffled[: len(pool) // 5], shuffled[len(pool) // 5 :]
    centre = fitting[:centres]
    median = np.median(np.linalg.norm(fitting[:, None] - centre[None], axis=2))

    def kernel(x: np.ndarray, width: float) -> np.ndarray:
        return np.exp(-(np.linalg.norm(x[:, None] - centre[None], axis=2) ** 2) / (2 * width**2))

    def fit(width: float) -> np.ndarray:
        """The paper's problem, max mean log(K_pool a) with mean_sample . a = 1 and a >= 0, written scale-free
        (a = b / (mean_sample . b)) and solved by L-BFGS-B."""
        from scipy.optimize import minimize

        k_pool, mean_sample = kernel(fitting, width), kernel(sample, width).mean(0)

        def negative_likelihood(b: np.ndarray) -> tuple[float, np.ndarray]:
            fitted = np.clip(k_pool @ b, 1e-12, None)
            total = max(float(mean_sample @ b), 1e-12)  # b = 0 at the start of a line search
            value = -np.log(fitted).mean() + np.log(total)
            gradient = -k_pool.T @ (1.0 / fitted) / len(fitting) + mean_sample / total
            return value, gradient

        start = np.ones(len(centre))
        b = minimize(negative_likelihood, start, jac=True, method="L-BFGS-B", bounds=[(0, None)] * len(centre)).x
        return b / (mean_sample @ b)

    def held_out_likelihood(width: float, alpha: np.ndarray) -> float:
        return float(np.log(np.clip(kernel(held_out, width) @ alpha, 1e-12, None)).mean())

    fitted = {width: fit(width) for width in median * np.array([0.25, 0.5, 1.0, 2.0])}
    width = max(fitted, key=lambda w: held_out_likelihood(w, fitted[w]))
    return [kernel(x, width) @ fitted[width] for x in (sample, *query)]


def _cross_validated_logits(sample: np.ndarray, labels: np.ndarray, pool: np.ndarray, classes: int, seed: int):
    """A logistic regression's logits for each sample row from a model that did not see it (stratified folds),
    and the pool's from a model fitted on the whole sample; a class a model never saw gets
    :data:`graft.core.head_refit.ABSENT`."""
    from sklearn.model_selection import StratifiedKFold

    from graft.core.head_refit import fit_logistic, logits

    folds = StratifiedKFold(max(2, min(LABELSHIFT_FOLDS, int(np.bincount(labels)[np.unique(labels)].min()))))
    held_out = np.zeros((len(sample), classes))
    with warnings.catch_warnings():  # a class rarer than the folds: scikit-learn warns, the split still works
        warnings.simplefilter("ignore", UserWarning)
        for fitting, scoring in folds.split(sample, labels):
            fitted = fit_logistic(sample[fitting], labels[fitting], LABELSHIFT_C)
            held_out[scoring] = logits(fitted, sample[scoring], classes)
    return held_out, logits(fit_logistic(sample, labels, LABELSHIFT_C), pool, classes)


def _bias_corrected_scaling(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """A temperature and a bias per class that make ``logits`` calibrated on held-out ``labels`` (bias-corrected
    temperature scaling, minimum log-loss), so EM can trust the posteriors' scale."""
    from scipy.optimize import minimize
    from scipy.special import log_softmax

    rows = np.arange(len(labels))

    def log_loss(parameters: np.ndarray) -> float:
        scaled = logits * np.exp(-parameters[0]) + parameters[1:]
        return float(-log_softmax(scaled, axis=1)[rows, labels].mean())

    start = np.zeros(logits.shape[1] + 1)
    parameters = minimize(log_loss, start, method="L-BFGS-B").x
    return float(np.exp(parameters[0])), parameters[1:]


def pool_class_frequencies(sample: np.ndarray, labels: np.ndarray, pool: np.ndarray, seed: int = 0) -> np.ndarray:
    """The pool's class frequencies (classes ``0..labels.max()``) by EM on calibrated posteriors (maximum
    likelihood with bias-corrected calibration, Alexandari, Kundaje & Shrikumar 2020): a logistic regression of
    the labelled sample gives the pool's logits, a temperature and per-class biases fitted on its
    cross-validated logits of the sample calibrate them, and each EM step reweights the posteriors by the
    current frequencies over the sample's and renormalises (Saerens et al. 2002). Measured on sign-language
    digits drawn 0.95 / 0.1 by class (BENCHMARKS.md section 8, a prototype on the same features): uncalibrated
    posteriors under-correct; these weights correlate 0.84 with the true ones on average, against 0.70 before."""
    from scipy.special import softmax

    sample, pool = _standardised(sample, pool)
    classes = int(labels.max()) + 1
    held_out, pool_logits = _cross_validated_logits(sample, labels, pool, classes, seed)
    temperature, bias = _bias_corrected_scaling(held_out, labels)
    posteriors = softmax(pool_logits / temperature + bias, axis=1)
    drawn = np.bincount(labels, minlength=classes) / len(labels)
    frequencies = drawn.copy()
    for _ in range(EM_STEPS):
        adjusted = posteriors * np.divide(frequencies, drawn, out=np.zeros(classes), where=drawn > 0)
        adjusted /= np.clip(adjusted.sum(1, keepdims=True), 1e-12, None)
        updated = adjusted.mean(0)
        if np.abs(updated - frequencies).max() < 1e-7:
            return updated
        frequencies = updated
    return frequencies


def labelshift_per_class(sample: np.ndarray, pool: np.ndarray, labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """w = p_pool(y) / p_sample(y) for each class (1 for a class the sample lacks)."""
    labels = np.asarray(labels)
    frequencies = pool_class_frequencies(sample, labels, pool, seed)
    drawn = np.bincount(labels, minlength=len(frequencies)) / len(labels)
    return np.divide(frequencies, drawn, out=np.ones_like(frequencies), where=drawn > 0)


def estimate(
    sample: np.ndarray,
    pool: np.ndarray,
    valid: np.ndarray,
    estimator: str = "classifier",
    seed: int = 0,
    labels: np.ndarray | None = None,
    valid_labels: np.ndarray | None = None,
) -> ImportanceWeights:
    """Weights for the ``sample``'s training rows and its ``valid`` rows, against the ``pool`` (features);
    ``labelshift`` also takes the class indices of both (``labels``, ``valid_labels``)."""
    from graft.perf import one_blas_thread

    with one_blas_thread():
        return _estimate(sample, pool, valid, estimator, seed, labels, valid_labels)


def _estimate(sample, pool, valid, estimator, seed, labels, valid_labels) -> ImportanceWeights:
    if estimator == "none":
        return ImportanceWeights(np.ones(len(sample)), np.ones(len(valid)), estimator, 0)
    per_class = None
    if estimator == "labelshift":  # every labelled example informs the class frequencies: valid's too
        per_class = labelshift_per_class(
            np.concatenate([sample, valid]), pool, np.concatenate([labels, valid_labels]), seed
        )
        train, held_out = per_class[np.asarray(labels)], per_class[np.asarray(valid_labels)]
    else:
        ratio = classifier_ratio if estimator == "classifier" else kliep_ratio
        train, held_out = ratio(sample, pool, valid, seed=seed)
    scale = train.mean()
    clipped = int(((train / scale < 1 / CLIP) | (train / scale > CLIP)).sum())
    train, held_out = (np.clip(x / scale, 1 / CLIP, CLIP) for x in (train, held_out))
    if per_class is not None:
        per_class = np.clip(per_class / scale, 1 / CLIP, CLIP) / train.mean()
    return ImportanceWeights(train / train.mean(), held_out / train.mean(), estimator, clipped, per_class)
