"""The "classifier" kind of run: one classification task learned from a folder of class folders.

:data:`KIND` tells the one pipeline (:mod:`graft.core.trainer`) how to scan the data, build the model (one
head), which objective to train (cross-entropy), and which metrics and plots to write;
:class:`TrainedClassifier` is such a run loaded back: predict images, evaluate on labelled data (by
default the run's own held-out split)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from graft.core import plots
from graft.core.config import RunConfig
from graft.core.dataset import Dataset
from graft.core.evaluation import answer, classification_metrics, predict_probabilities, probabilities
from graft.core.head_refit import converge_head
from graft.core.heads import make_head
from graft.core.inputs import default_workers, make_loader
from graft.core.modality import Modality, modality_of
from graft.core.model import TransferModel
from graft.core.objectives import Classification
from graft.core.run_files import CONFIG, CONFUSION, LEARNING_CURVE, MANIFEST, first_split
from graft.core.runs import RunFolder, load_weights
from graft.errors import ConfigError, DataError, RunFolderError
from graft.fileio import read_json


@dataclass
class TrainedClassifier:
    """A trained classifier loaded from a run folder: ``predict`` images, ``evaluate`` on data."""

    model: TransferModel
    classes: list[str]
    preprocessing: Any
    config: dict[str, Any]
    path: Path
    modality: Modality

    def predict(self, inputs: Sequence[str | os.PathLike], batch_size: int = 32, tta: int = 0) -> list[dict[str, Any]]:
        """Label and class probabilities for each input (files or folders), under the modality's name
        (``{"image": path, "label", "prob", "probs"}``); ``tta``: see :meth:`probabilities`. A file that
        cannot be read gets ``{"image": path, "error": reason}`` and the others are still predicted."""
        paths = self.modality.expand(inputs)
        failed = self.modality.unreadable(paths)
        readable = [path for path in paths if path not in failed]
        rows = (
            dict(zip(readable, self.probabilities([(path, -1) for path in readable], batch_size, tta)[0]))
            if readable
            else {}
        )
        return [
            {self.modality.name: path, "error": failed[path]}
            if path in failed
            else {self.modality.name: path, **answer(rows[path], self.classes)}
            for path in paths
        ]

    def evaluate(
        self,
        data: str | os.PathLike | None = None,
        batch_size: int = 32,
        out_png: str | os.PathLike | None = None,
        tta: int = 0,
    ) -> dict[str, Any]:
        """Loss, accuracy, per-class precision/recall/F1 and a confusion-matrix PNG. ``data=None`` (or the
        training folder): the run's held-out test split (valid if it has none), from its manifest;
        another folder: its test/ (or valid/) split, or all its class folders."""
        skipped: list[dict[str, str]] = []
        root = self.config.get("data", {}).get("root")
        if data is None or (root and Path(data).resolve() == Path(root).resolve()):
            manifest = read_json(self.path / MANIFEST)
            split = first_split(manifest, "test", "valid")
            items = [(path, int(label)) for path, label in manifest["splits"][split]]
            missing = self.modality.missing([path for path, _ in items])
            if missing:
                raise DataError(
                    f"{len(missing)} example(s) of the run's {split} split are gone, e.g. '{missing[0]}'",
                    hint=f"graft evaluate {self.path} DATA evaluates on another folder",
                )
            evaluated_on, name = f"{split} split of the run's manifest", split
        else:
            items, skipped, folder = self.modality.scan_for_evaluation(str(data), self.classes)
            evaluated_on, name = folder, Path(folder).name
        probabilities, labels = self.probabilities(items, batch_size, tta)
        metrics = {
            "kind": "classifier",
            "evaluated_on": evaluated_on,
            "tta": tta,
            **classification_metrics(probabilities, labels, self.classes),
            "skipped": skipped,
        }
        target = Path(out_png) if out_png else self.path / "evaluate_confusion_matrix.png"
        plots.confusion_matrix(metrics["confusion_matrix"], self.classes, target, title=f"confusion matrix ({name})")
        metrics["confusion_matrix_png"] = str(target)
        return metrics

    def example_input(self) -> Any:
        """One batch shaped as the model takes it."""
        return self.modality.example_input(self.preprocessing)

    def probabilities(self, items: list[tuple[str, int]], batch_size: int = 32, tta: int = 0):
        """Class probabilities and labels of ``items``. ``tta`` > 0 (test-time augmentation, as fastai's
        ``tta``): the mean over the clean view and ``tta`` augmented views, each seeded by its number, so
        the same call gives the same numbers."""
        if not isinstance(tta, int) or isinstance(tta, bool) or not 0 <= tta <= 32:
            raise ConfigError(f"--tta must be a whole number of augmented views from 0 to 32; got {tta!r}")
        probabilities, labels = predict_probabilities(self.model, self._loader(items, batch_size))
        for view in range(1, tta + 1):
            views = self.modality.examples(items, self.preprocessing, augment=True, seed=view, keys=range(len(items)))
            augmented, _ = predict_probabilities(self.model, make_loader(views, batch_size, default_workers()))
            probabilities = probabilities + augmented
        return probabilities / (tta + 1), labels

    def _loader(self, items, batch_size: int):
        return make_loader(
            self.modality.examples(items, self.preprocessing, augment=False), batch_size, default_workers()
        )


def worst_mistakes(probs, labels, files: list[str], classes: list[str], count: int = 8) -> list[dict[str, Any]]:
    """The ``count`` misclassified examples with the lowest probability on their true class (fastai's
    top losses): file, true and predicted class, and both probabilities."""
    import numpy as np

    labels = np.asarray(labels, dtype=np.int64)
    predicted = probs.argmax(1)
    true_prob = probs[np.arange(len(labels)), labels]
    wrong = np.flatnonzero(predicted != labels)
    chosen = wrong[np.argsort(true_prob[wrong], kind="stable")][:count]
    return [
        {
            "file": files[i],
            "true": classes[labels[i]],
            "predicted": classes[predicted[i]],
            "prob_true": float(true_prob[i]),
            "prob_predicted": float(probs[i, predicted[i]]),
        }
        for i in chosen
    ]


def load_trained(
    folder: Path, config: dict[str, Any], head: Callable[[int, int], torch.nn.Module] | None = None
) -> TrainedClassifier:
    """The "classifier" run kind's loader (see :func:`graft.core.runs.load_run`); ``head(features, classes)``
    builds the run's head when it is not one of :func:`graft.core.heads.make_head`'s (domain adaptation's)."""
    source = modality_of(config)
    try:
        classes = list(config["classes"])
        preprocessing = source.preprocessing(config["preprocessing"])
        backbone = source.load_backbone(config["backbone"]["name"], pretrained=False)
        input_size = getattr(preprocessing, "input_size", None)
        model = (
            _model(source, backbone.model, config["head"], len(classes), input_size)
            if head is None
            else source.transfer_model(backbone.model, lambda features: head(features, len(classes)), input_size)
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise RunFolderError(
            f"'{folder / CONFIG}' is damaged or not a graft run config ({type(error).__name__}: {error})"
        ) from None
    load_weights(model, folder)
    return TrainedClassifier(
        model=model.eval(), classes=classes, preprocessing=preprocessing, config=config, path=folder, modality=source
    )


def _model(
    source: Modality, backbone: torch.nn.Module, head: str, classes: int, input_size: int | None
) -> TransferModel:
    return source.transfer_model(backbone, lambda features: make_head(head, features, classes), input_size)


class ClassifierKind:
    """One classification task from class folders (see :class:`graft.core.trainer.RunKind`)."""

    name = "classifier"
    modalities = None  # any: a modality's data source gives class-labelled examples
    races = True  # --mode auto may race plans on folds of the data (graft.core.race)
    several_processes = True  # torchrun / --nproc: each batch split between the ranks (graft.core.distributed)

    def scan(self, config: RunConfig, source: Modality) -> Dataset:
        columns = (config.text_column, config.label_column)  # only for tables, which the config checks
        given = {"columns": columns} if any(columns) else {}
        return source.scan(config.data, valid_fraction=config.valid_fraction, seed=config.seed, **given)

    def reload(self, run: RunFolder, saved: dict[str, Any], config: RunConfig, source: Modality) -> Dataset:
        try:
            manifest = read_json(run / MANIFEST)
            return source.dataset_from_manifest(manifest)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            if isinstance(error, DataError):
                raise
            raise RunFolderError(
                f"'{run / MANIFEST}' is damaged ({type(error).__name__}: {error})",
                hint="train the run again with another --out",
            ) from None

    def advice_view(self, dataset: Dataset) -> Dataset:
        return dataset

    def build_model(
        self, config: RunConfig, source: Modality, make_backbone, dataset: Dataset, input_size: int | None
    ) -> TransferModel:
        return _model(source, make_backbone(), config.head, len(dataset.classes), input_size)

    def frozen_trunk(self, model: TransferModel) -> TransferModel:
        return model

    def objective(self, config: RunConfig, dataset: Dataset) -> Classification:
        return Classification()

    def config_section(self, config: RunConfig, dataset: Dataset, objective, model) -> dict[str, Any]:
        return {"classes": dataset.classes}

    def headline(self, dataset: Dataset) -> str:
        return f"{dataset.layout}; {len(dataset.classes)} classes"

    def metrics(self, outputs, targets, dataset: Dataset, objective, split: str) -> dict[str, Any]:
        probs = probabilities(outputs)
        return {
            **classification_metrics(probs, targets, dataset.classes),
            "worst": worst_mistakes(probs, targets, [path for path, _ in dataset.split(split)], dataset.classes),
        }

    def plot_history(self, history: list[dict], path, title: str) -> None:
        plots.learning_curve(history, path, title=title)

    def finish(
        self, run: RunFolder, history, metrics, dataset: Dataset, model, objective, title: str, inputs=None
    ) -> dict[str, Any]:
        self.plot_history(history, run / LEARNING_CURVE, title)
        final = "test" if "test" in metrics else "valid"
        plots.confusion_matrix(
            metrics[final]["confusion_matrix"], dataset.classes, run / CONFUSION, title=f"confusion matrix ({final})"
        )
        return {
            "valid_accuracy": metrics["valid"]["accuracy"],
            "test_accuracy": metrics["test"]["accuracy"] if "test" in metrics else None,
        }

    def refit_head(self, session, model: TransferModel, inputs, dataset: Dataset) -> dict[str, Any] | None:
        """The extract run's linear head refit to convergence on small data
        (:func:`graft.core.head_refit.converge_head`); valid scores stay those of a model not fitted on them."""
        return converge_head(model, inputs, len(dataset.classes), session.runtime, weighted=False, include_valid=False)

    def results(self, metrics: dict[str, Any]) -> str:
        return f"valid accuracy {metrics['valid']['accuracy']:.4f}" + (
            f", test accuracy {metrics['test']['accuracy']:.4f}" if "test" in metrics else ""
        )

    def load_trained(self, folder: Path, config: dict[str, Any]) -> TrainedClassifier:
        return load_trained(folder, config)


KIND = ClassifierKind()
