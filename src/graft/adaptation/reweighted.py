"""The "reweighted" kind of run (``graft train DATA --reweight POOL``): a classifier trained against
sample-selection bias. DATA's examples were drawn with a bias; POOL (unlabelled) is drawn like the
world. Importance weights from frozen features (:mod:`graft.adaptation.importance`) scale each training
example's loss, and the validation split is judged by importance-weighted accuracy (Sugiyama's
importance-weighted validation), so the kept epoch is the one best for the world, not for the sample.

A selection by class (``--weight-estimator labelshift``: one weight w_y per class) enters the loss another
way: as a shift of the priors in the logits. The sample's posteriors are the world's times 1/w_y, renormalised,
so the head is trained on ``logits - log w`` and its own logits are then the world's: the logit-adjusted loss
(Menon et al. 2021, "Long-tail learning via logit adjustment", there for the uniform world; Saerens et al.
2002's prior correction, learnt instead of applied afterwards). Every example keeps its weight of one in the
fit, so rare classes are not a few examples with huge weights. Measured on sign-language digits drawn 0.9 /
0.2 by class (BENCHMARKS.md section 8, 3 seeds): the same estimated w as example weights won back 37% of the
accuracy the bias cost, as a shift 51% (57% drawn 0.95 / 0.1).

The loop is the core one over cached rows; the targets it carries are ``[label, weight]`` pairs. In extract
mode with a linear head, the head is then refit to convergence with the weights (:mod:`graft.core.head_refit`),
its L2 strength chosen by importance-weighted validation log-loss: a head stopped after a few epochs on a few
hundred examples is far from the optimum the weights move, and weighting it changed nothing measurable
(BENCHMARKS.md section 8). Log-loss, not accuracy: on ~70 validation examples weighted accuracy is noisy and
picked an underfitting strength (measured: 4 points of test accuracy lost)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from graft.adaptation.data import with_target
from graft.adaptation.importance import estimate
from graft.adaptation.inputs import CleanRows, require_cached_prefix
from graft.core.cache import cache_limit, prune_cache, resolve_cache_dir
from graft.core.classifier import KIND as CLASSIFIER
from graft.core.classifier import TrainedClassifier
from graft.core.config import RunConfig
from graft.core.dataset import Dataset
from graft.core.distributed import SINGLE
from graft.core.evaluation import probabilities
from graft.core.head_refit import converge_head
from graft.core.inputs import Inputs, cached_loader, content_key
from graft.core.modality import Modality
from graft.core.objectives import Classification
from graft.fileio import read_json

POOL = "pool"
WEIGHTS_FILE = "importance_weights.json"


class WeightedClassification(Classification):
    """Cross-entropy with a weight per example, or (after :meth:`shift_priors`) of the logits less each class's
    log-weight; epochs ranked by importance-weighted validation accuracy."""

    prior_shift: torch.Tensor | None = None

    def shift_priors(self, per_class: list[float]) -> None:
        self.prior_shift = torch.log(torch.as_tensor(per_class, dtype=torch.float32))

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, model: nn.Module) -> torch.Tensor:
        labels, weights = targets[:, 0].long(), targets[:, 1]
        smoothing = self.label_smoothing
        if self.prior_shift is not None:
            shifted = outputs - self.prior_shift.to(outputs.device, outputs.dtype)
            summed = nn.functional.cross_entropy(shifted, labels, label_smoothing=smoothing, reduction="sum")
            return self.processes.batch_mean(summed, len(labels))
        losses = nn.functional.cross_entropy(outputs, labels, label_smoothing=smoothing, reduction="none")
        # the weighted mean of the whole batch: over several processes, every rank's weights summed
        return self.processes.batch_mean((weights * losses).sum(), weights.sum())

    def train_sums(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        return {"train_accuracy": float((outputs.argmax(1) == targets[:, 0].long()).sum())}

    def validate(self, outputs: np.ndarray, targets: np.ndarray, model: nn.Module) -> dict[str, Any]:
        labels, weights = targets[:, 0].astype(np.int64), targets[:, 1]
        record = super().validate(outputs, labels.astype(np.float64), model)
        correct = probabilities(outputs).argmax(1) == labels
        weighted = float((weights * correct).sum() / weights.sum())
        return {**record, "valid_weighted_accuracy": weighted, "valid_score": weighted}

    def rank(self, record: dict[str, Any]) -> tuple:
        return (record["valid_weighted_accuracy"], -record["valid_loss"])

    def status(self, record: dict[str, Any]) -> str:
        return f"valid acc {record['valid_accuracy']:.3f}, weighted {record['valid_weighted_accuracy']:.3f}"


class ReweightedKind:
    """A classifier whose training examples are weighted towards the world (see :class:`graft.core.trainer.RunKind`)."""

    name = "reweighted"
    modalities = ("image",)
    several_processes = True  # torchrun / --nproc: rank 0 estimates the weights, each batch is split (fit)

    def scan(self, config: RunConfig, source: Modality) -> Dataset:
        return with_target(CLASSIFIER.scan(config, source), config.reweight, source, split=POOL)

    def reload(self, run, saved, config, source: Modality) -> Dataset:
        return CLASSIFIER.reload(run, saved, config, source)

    def advice_view(self, dataset: Dataset) -> Dataset:
        return dataset

    def build_model(self, config, source, make_backbone, dataset, input_size):
        return CLASSIFIER.build_model(config, source, make_backbone, dataset, input_size)

    def frozen_trunk(self, model):
        return model

    def objective(self, config: RunConfig, dataset: Dataset) -> WeightedClassification:
        return WeightedClassification()

    def config_section(self, config, dataset: Dataset, objective, model) -> dict[str, Any]:
        return {
            "classes": dataset.classes,
            "reweight": {
                "pool": config.reweight,
                "estimator": config.weight_estimator,
                "pool_examples": len(dataset.split(POOL)),
            },
        }

    def headline(self, dataset: Dataset) -> str:
        return f"{dataset.layout}; {len(dataset.classes)} classes; weighted towards the pool's distribution"

    def build_inputs(self, session, saved, preprocessing, dataset: Dataset, model, plan, objective, progress) -> Inputs:
        config, run, runtime = session.config, session.run, session.runtime
        stop = plan.trainable_from
        require_cached_prefix(stop, config.cache, "--reweight")
        root = resolve_cache_dir(config.cache_dir)
        splits = {name: dataset.split(name) for name in ("train", "valid", "test", POOL) if dataset.split(name)}
        clean = CleanRows(
            session.source, dataset, preprocessing, saved["backbone"]["architecture"], root, session.num_workers,
            progress, runtime.device, runtime.processes,
        )  # fmt: skip
        at_stop = clean(model, stop, {name: items for name, items in splits.items() if name != POOL})

        def pooled() -> dict[str, np.ndarray]:  # the weights' features; the rows themselves when nothing trains
            names = ("train", "valid", POOL)
            parts = at_stop if stop == len(model.stages) else {}
            parts = {**parts, **clean(model, len(model.stages), {n: splits[n] for n in names if n not in parts})}
            return {name: parts[name].materialize().numpy() for name in names}

        processes, features = runtime.processes, pooled
        if processes.distributed:  # every rank takes part in the pooled features' (shared) pass before rank 0 estimates
            estimating = processes.from_main(not (run / WEIGHTS_FILE).is_file()) and config.weight_estimator != "none"
            computed = pooled() if estimating else None
            features = lambda: computed  # noqa: E731
        weights = processes.on_main(lambda: self._weights(run, features, config, splits))
        if "per_class" in weights["summary"]:
            objective.shift_priors(weights["summary"]["per_class"])
        keys = {name: [content_key(dataset.digest(path)) for path, _ in items] for name, items in splits.items()}

        def loader(name: str, shuffle: bool, per_example: list[float] | None):
            per_example = per_example or [1.0] * len(splits[name])
            items = [(path, [label, weight]) for (path, label), weight in zip(splits[name], per_example)]
            return cached_loader(
                [at_stop[name]], items, config.seed, keys[name], config.batch_size, shuffle,
                processes=runtime.processes if name == "train" else SINGLE,
            )  # fmt: skip

        train = loader("train", True, weights["train"])
        evaluation = {"valid": loader("valid", False, weights["valid"])}
        if "test" in splits:
            evaluation["test"] = loader("test", False, None)
        prune_cache(root, max_bytes=cache_limit(), keep=clean.used)
        description = clean.description(model, stop, at_stop["train"].row_shape, importance=weights["summary"])
        return Inputs(train, evaluation, stop, description)

    def _weights(self, run, pooled, config, splits) -> dict[str, Any]:
        """The importance weights: from the run folder when a killed run left them, else estimated from
        ``pooled()`` features (and, for ``labelshift``, the labels of ``splits``)."""
        path = run / WEIGHTS_FILE
        if path.is_file():
            return read_json(path)
        if config.weight_estimator == "none":  # every weight 1: no features to compute
            features = {name: np.zeros((len(splits[name]), 0)) for name in ("train", "valid", POOL)}
        else:
            features = pooled()
        labels = {name: np.array([label for _, label in splits[name]]) for name in ("train", "valid")}
        estimated = estimate(
            features["train"], features[POOL], features["valid"], config.weight_estimator, config.seed,
            labels["train"], labels["valid"],
        )  # fmt: skip
        weights = {"train": estimated.train.tolist(), "valid": estimated.valid.tolist(), "summary": estimated.summary()}
        run.write_json(path, weights)
        return weights

    def refit_head(self, session, model: nn.Module, inputs: Inputs, dataset: Dataset) -> dict[str, Any] | None:
        """The extract run's linear head refit with the importance weights (see the module's docstring)."""
        per_class = inputs.description["importance"].get("per_class")
        return converge_head(
            model, inputs, len(dataset.classes), session.runtime, weighted=per_class is None,
            include_valid=True, prior_shift=None if per_class is None else np.log(per_class),
        )  # fmt: skip

    def metrics(self, outputs, targets, dataset: Dataset, objective, split: str) -> dict[str, Any]:
        labels = np.asarray(targets)[:, 0].astype(np.int64)
        return CLASSIFIER.metrics(outputs, labels, dataset, objective, split)

    def plot_history(self, history, path, title: str) -> None:
        CLASSIFIER.plot_history(history, path, title)

    def finish(self, run, history, metrics, dataset, model, objective, title: str, inputs=None) -> dict[str, Any]:
        own = CLASSIFIER.finish(run, history, metrics, dataset, model, objective, title)
        metrics["importance"] = inputs.description["importance"]
        return {**own, "importance": metrics["importance"]}

    def results(self, metrics: dict[str, Any]) -> str:
        summary = metrics["importance"]
        how = ", as a shift of the class priors" if "per_class" in summary else ""
        return (
            CLASSIFIER.results(metrics) + f"; importance weights ({summary['estimator']}{how}): "
            f"effective sample size {summary['effective_sample_size']:.0f} of {summary['examples']}"
        )

    def load_trained(self, folder: Path, config: dict[str, Any]) -> TrainedClassifier:
        return CLASSIFIER.load_trained(folder, config)


KIND = ReweightedKind()
