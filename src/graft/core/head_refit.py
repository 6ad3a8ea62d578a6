"""A linear head refit to convergence on the features the loop's head saw: an L2 logistic regression
(scikit-learn's objective, minimised with torch's L-BFGS) whose coefficients are copied into the head's last
layer.

The loop trains a head by a fixed number of optimizer steps, which on a few hundred examples stops far from
the optimum. Where the features are fixed (the head's input does not train), a convex fit finds it: measured on
frozen EfficientNet-Lite0 features of sign-language digits, the loop's head reaches 55.0% at 10 photos a class
and 83.7% at 50, a converged one 78.5% and 90.4% (BENCHMARKS.md section 8). Used by ``--mode extract``
(:func:`converge_head`, on small data), ``--mode fewshot`` (after its contrastive step), and ``--reweight``
runs, whose importance weights change a converged model and barely move one stopped early."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from graft.core.evaluation import collect_outputs, probabilities
from graft.core.runtime import Runtime
from graft.perf import torch_threads

ABSENT = -30.0  # the logit of a class the refit never saw


def head_inputs(model: nn.Module, loader, start: int, runtime: Runtime) -> tuple[np.ndarray, np.ndarray]:
    """What the head sees (its input) for every example of ``loader``, and the loader's targets."""
    head, model.head = model.head, nn.Identity()
    try:
        features, targets = collect_outputs(model, loader, start=start, runtime=runtime)
    finally:
        model.head = head
    return np.asarray(features, dtype=np.float64), np.asarray(targets)


@dataclass(frozen=True)
class LogisticFit:
    """A fitted logistic regression, laid out as scikit-learn's: ``coef_`` has one row per class of ``classes_``,
    or one row (the second class's logit against the first's 0) for two."""

    classes_: np.ndarray
    coef_: np.ndarray
    intercept_: np.ndarray


# scikit-learn's stopping rule for its lbfgs solver (tol=1e-4 on the largest gradient entry); L-BFGS's memory
LOGISTIC_TOLERANCE, LOGISTIC_MEMORY, LOGISTIC_MAX_STEPS = 1e-4, 10, 5000


def fit_logistic(features: np.ndarray, labels: np.ndarray, c: float, sample_weight=None) -> LogisticFit:
    """scikit-learn's ``LogisticRegression(C=c)`` without importing scikit-learn (1.6 s of SciPy on every small
    extract run): the mean of the weighted log-losses plus ``|W|^2 / (2 c sum(weights))``, intercepts not
    penalised, minimised in float64 with torch's L-BFGS on one thread (deterministic; 3-5x faster than
    scikit-learn's on 160-1,000 frozen feature rows, predictions the same on 99.8-100% of 2,062 photos)."""
    classes, y = np.unique(np.asarray(labels), return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"a logistic regression needs examples of at least 2 classes; got only {classes.tolist()}")
    x = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    target = torch.as_tensor(y)
    weights = torch.ones(len(y), dtype=torch.float64)
    if sample_weight is not None:
        weights = torch.as_tensor(np.asarray(sample_weight), dtype=torch.float64)
    rows = 1 if len(classes) == 2 else len(classes)
    coef = torch.zeros(rows, x.shape[1], dtype=torch.float64, requires_grad=True)
    intercept = torch.zeros(rows, dtype=torch.float64, requires_grad=True)
    total = weights.sum()
    optimizer = torch.optim.LBFGS(
        [coef, intercept], lr=1, max_iter=LOGISTIC_MAX_STEPS, tolerance_grad=LOGISTIC_TOLERANCE,
        tolerance_change=64 * float(np.finfo(np.float64).eps), history_size=LOGISTIC_MEMORY,
        line_search_fn="strong_wolfe",
    )  # fmt: skip

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        z = x @ coef.T + intercept
        if rows == 1:
            each = nn.functional.binary_cross_entropy_with_logits(z[:, 0], target.double(), reduction="none")
        else:
            each = nn.functional.cross_entropy(z, target, reduction="none")
        loss = (weights * each).sum() / total + (coef**2).sum() / (2 * c * total)
        loss.backward()
        return loss

    with torch_threads(1), torch.enable_grad():
        optimizer.step(objective)
    return LogisticFit(classes, coef.detach().numpy().copy(), intercept.detach().numpy().copy())


def logits(fitted, features: np.ndarray, classes: int) -> np.ndarray:
    """``fitted``'s logits over all ``classes`` (a class it never saw at ``ABSENT``)."""
    weight, bias = _as_layer(fitted, classes)
    return features @ weight.T + bias


def copy_into_head(model: nn.Module, fitted, classes: int, prior_shift: np.ndarray | None = None) -> None:
    """Put ``fitted``'s coefficients into the last layer of ``model``'s head (``--head linear``: dropout, then one
    layer), ``prior_shift`` (one log-ratio per class) added to its biases; a class with no labelled example is
    never predicted."""
    weight, bias = _as_layer(fitted, classes)
    if prior_shift is not None:
        bias = bias + prior_shift
    linear = model.head[-1]
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(weight, dtype=linear.weight.dtype))
        linear.bias.copy_(torch.as_tensor(bias, dtype=linear.bias.dtype))


def _as_layer(fitted, classes: int) -> tuple[np.ndarray, np.ndarray]:
    weight = np.zeros((classes, fitted.coef_.shape[1]))
    bias = np.full(classes, ABSENT)
    if len(fitted.classes_) == 2:  # one row for the second class: logits (0, z) give the same softmax
        bias[fitted.classes_[0]] = 0.0
        weight[fitted.classes_[1]], bias[fitted.classes_[1]] = fitted.coef_[0], fitted.intercept_[0]
    else:
        weight[fitted.classes_], bias[fitted.classes_] = fitted.coef_, fitted.intercept_
    return weight, bias


REFIT_CS = (0.01, 0.1, 1.0)  # L2 strengths tried, on the head's input as it is
# Training examples: the course notes' "small data". Above it the loop takes hundreds of steps and its head is
# close to converged, while the refit's cost grows (1,200 examples of 10 classes: 5 s on 2 cores, measured)
REFIT_UP_TO = 1000


def converge_head(
    model: nn.Module,
    inputs: Any,
    classes: int,
    runtime: Runtime,
    *,
    weighted: bool,
    include_valid: bool,
    prior_shift: np.ndarray | None = None,
) -> dict[str, Any] | None:
    """After the loop, on small data (at most :data:`REFIT_UP_TO` training examples): the linear head refit as a
    logistic regression for each strength of :data:`REFIT_CS`, and the candidate with the lowest validation
    log-loss kept, the loop's own head included. Targets are labels or ``[label, weight]`` rows; ``weighted``:
    both the fit and the log-loss use the weights; ``include_valid``: the kept strength is fitted again on train
    and valid together. ``prior_shift`` (one log-ratio per class, world over sample): the head is to predict the
    world's posteriors, so the fit and the log-loss are the sample's (the head's logits less the shift) and the
    kept fit's biases get the shift. Returns what the run records, or None where nothing was refit."""
    if len(inputs.train.dataset) > REFIT_UP_TO or runtime.processes.distributed:
        return None  # several processes: each rank's loader holds only its share of the examples
    began = time.perf_counter()
    (train, train_targets), (valid, valid_targets) = (
        head_inputs(model, loader, inputs.start, runtime) for loader in (inputs.train, inputs.evaluation["valid"])
    )
    labels, weights = _labels_and_weights(train_targets, weighted)
    valid_labels, valid_weights = _labels_and_weights(valid_targets, weighted)

    def log_loss(logits_: np.ndarray) -> float:
        chances = probabilities(logits_)[np.arange(len(valid_labels)), valid_labels]
        return float((valid_weights * -np.log(np.clip(chances, 1e-12, None))).sum() / valid_weights.sum())

    fits = {c: fit_logistic(train, labels, c, sample_weight=weights) for c in REFIT_CS}
    scores = {str(c): log_loss(logits(fitted, valid, classes)) for c, fitted in fits.items()}
    loop_outputs, _ = collect_outputs(model, inputs.evaluation["valid"], start=inputs.start, runtime=runtime)
    shift = np.zeros(classes) if prior_shift is None else np.asarray(prior_shift, dtype=np.float64)
    scores["loop"] = log_loss(np.asarray(loop_outputs, dtype=np.float64) - shift)
    kept = min(scores, key=scores.get)
    record = {"kept": kept, "valid_log_loss": scores, "examples": len(labels)}
    if kept == "loop":
        record["seconds"] = time.perf_counter() - began
        return {**record, "on": "train", "note": "the loop's head had the lowest validation log-loss and was kept"}
    fitted = fits[float(kept)]
    if include_valid:
        fitted = fit_logistic(
            np.concatenate([train, valid]), np.concatenate([labels, valid_labels]), float(kept),
            sample_weight=np.concatenate([weights, valid_weights]),
        )  # fmt: skip
        record["examples"] += len(valid_labels)
    copy_into_head(model, fitted, classes, prior_shift)
    record["seconds"] = time.perf_counter() - began
    how = (
        " with the importance weights"
        if weighted
        else " with the classes' priors shifted"
        if prior_shift is not None
        else ""
    )
    what = f"(C={kept}; validation log-loss {scores[kept]:.3f}, the loop's head {scores['loop']:.3f})"
    if include_valid:
        note = f"the head was refit{how} at the strength with the lowest validation log-loss {what}, then on the "
        note += "validation examples too: valid scores are not held out"
    else:
        note = (
            f"the head was refit{how} on train {what}; validation chose its strength (and the loop's epoch before it)"
        )
    return {**record, "on": "train+valid" if include_valid else "train", "regularisation_c": float(kept), "note": note}


def _labels_and_weights(targets: np.ndarray, weighted: bool) -> tuple[np.ndarray, np.ndarray]:
    labels = (targets[:, 0] if targets.ndim == 2 else targets).astype(np.int64)
    return labels, targets[:, 1].astype(np.float64) if weighted else np.ones(len(targets))
