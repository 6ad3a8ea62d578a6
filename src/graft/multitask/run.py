"""The "multitask" kind of run: several tasks on one set of images, or several domains in one model.
:data:`KIND` tells the one pipeline (:mod:`graft.core.trainer`) how; ``load_trained`` reads such a run back.

The run folder is the single-task one (config, freeze plan, safetensors weights, history, metrics,
manifest) with ``config["kind"] == "multitask"`` and a ``multitask`` section (tasks, sharing, tie,
weighting, regression scales); ``graft.load`` dispatches on it. Inputs (:mod:`graft.core.inputs`: the
activation cache, with augmented views when augmenting), the loop (:mod:`graft.core.fit`) and the
checkpoint are those of single-task runs; only the model (a head per task, a tower per task under
soft sharing) and the objective (:mod:`graft.multitask.objective`) differ.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from graft.core import plots
from graft.core.config import RunConfig
from graft.core.dataset import Dataset
from graft.core.evaluation import answer, collect_outputs
from graft.core.inputs import as_targets, default_workers, make_loader
from graft.core.modality import Modality, modality_of
from graft.core.model import TransferModel
from graft.core.run_files import CONFIG, LEARNING_CURVE, MANIFEST, first_split
from graft.core.runs import RunFolder, load_weights
from graft.errors import ConfigError, DataError, RunFolderError
from graft.fileio import read_json
from graft.multitask.model import MultiTaskModel, build_multitask_model
from graft.multitask.objective import MultiTaskObjective, TargetScale, decode, target_scales, task_metrics
from graft.multitask.tasks import MultiTaskDataset, Task, read_labels, scan_domains, scan_multitask


class MultiTaskKind:
    """Several tasks on one set of images, or several domains in one model (see :class:`graft.core.trainer.RunKind`)."""

    name = "multitask"
    modalities = ("image", "text")
    several_processes = True  # torchrun / --nproc: each batch split between the ranks (graft.core.distributed)

    def scan(self, config: RunConfig, source: Modality) -> MultiTaskDataset:
        if config.domains is not None:
            if source.name == "text":
                raise ConfigError("--domain applies to image folders; several text domains are not supported yet")
            return scan_domains(config.domains, config.valid_fraction, config.test_fraction, config.seed, config.limit)
        if source.name == "text":
            from graft.text.tasks import scan_text_tasks

            scan = functools.partial(scan_text_tasks, text_column=config.text_column)
        else:
            scan = scan_multitask
        return scan(
            config.data,
            config.labels,
            config.tasks,
            config.valid_fraction,
            config.test_fraction,
            config.seed,
            config.limit,
        )

    def reload(self, run: RunFolder, saved: dict[str, Any], config: RunConfig, source: Modality) -> MultiTaskDataset:
        dataset = self.scan(config, source)
        if json.loads(json.dumps(dataset.manifest())) != read_json(run / MANIFEST):
            raise RunFolderError(
                f"the data of '{run.path}' changed since the run started (its split no longer matches manifest.json)",
                hint="restore the data, or train again with another --out",
            )
        return dataset

    def advice_view(self, dataset: MultiTaskDataset) -> Dataset:
        """The advisor measures one label: the first classification task (a regression task's values in
        quartiles when there is none), on the images that carry it."""
        index = next((i for i, task in enumerate(dataset.tasks) if task.is_classification), 0)
        task = dataset.tasks[index]
        labelled = {
            name: [(path, labels[index]) for path, labels in items if not math.isnan(labels[index])]
            for name, items in dataset.splits.items()
        }
        if task.is_classification:
            classes = list(task.classes)
            splits = {name: [(path, int(value)) for path, value in items] for name, items in labelled.items()}
        else:
            edges = np.quantile([value for _, value in labelled["train"]], [0.25, 0.5, 0.75])
            classes = [f"{task.name} quartile {q}" for q in range(1, 5)]
            splits = {
                name: [(path, int(np.searchsorted(edges, value))) for path, value in items]
                for name, items in labelled.items()
            }
        return Dataset(root=dataset.root, layout="multitask", classes=classes, splits=splits, sha256=dataset.sha256)

    def build_model(
        self, config: RunConfig, source: Modality, make_backbone, dataset: MultiTaskDataset, input_size: int | None
    ) -> MultiTaskModel:
        return build_multitask_model(
            make_backbone, dataset.tasks, config.sharing, config.head, input_size=input_size, modality=source
        )

    def frozen_trunk(self, model: MultiTaskModel) -> TransferModel:
        # the frozen stages are the same in every tower (same pretrained weights, never trained):
        # one tower computes them
        return next(iter(model.towers.values()))

    def objective(self, config: RunConfig, dataset: MultiTaskDataset) -> MultiTaskObjective:
        scales = target_scales(dataset.tasks, as_targets([labels for _, labels in dataset.split("train")]).numpy())
        return MultiTaskObjective(dataset.tasks, scales, config.task_weighting, tie=config.tie or 0.0)

    def config_section(
        self, config: RunConfig, dataset: MultiTaskDataset, objective: MultiTaskObjective, model: MultiTaskModel
    ) -> dict[str, Any]:
        return {
            "classes": [],
            "multitask": {
                "sharing": config.sharing,
                "tie": config.tie or 0.0,
                "weighting": config.task_weighting,
                "labels": dataset.source,
                "tasks": [t.to_dict() for t in dataset.tasks],
                "scales": {k: v.to_dict() for k, v in objective.scales.items()},
                "towers": list(model.towers.keys()),
                "domains": config.domains is not None,
            },
        }

    def headline(self, dataset: MultiTaskDataset) -> str:
        return f"{_kind_label(dataset)}: " + ", ".join(
            f"{t.name} ({t.kind}{', ' + str(len(t.classes)) + ' classes' if t.is_classification else ''})"
            for t in dataset.tasks
        )

    def metrics(
        self, outputs, targets, dataset: MultiTaskDataset, objective: MultiTaskObjective, split: str
    ) -> dict[str, Any]:
        return task_metrics(dataset.tasks, outputs, targets.astype(np.float64), objective.scales, detail=True)

    def plot_history(self, history: list[dict], path, title: str) -> None:
        plots.task_curves(history, path, title=title)

    def finish(
        self,
        run: RunFolder,
        history,
        metrics,
        dataset: MultiTaskDataset,
        model: MultiTaskModel,
        objective: MultiTaskObjective,
        title: str,
        inputs=None,
    ) -> dict[str, Any]:
        metrics.update(
            {
                "tower_distance": float(model.tower_distance().detach()),
                "tied_parameters": model.tied_parameter_count(),
                "task_weights": objective.weights(),
            }
        )
        self.plot_history(history, run / LEARNING_CURVE, title)
        final = "test" if "test" in metrics else "valid"
        for task in dataset.tasks:
            if task.is_classification:
                plots.confusion_matrix(
                    metrics[final]["tasks"][task.name]["confusion_matrix"],
                    task.classes,
                    run / f"confusion_matrix_{task.name}.png",
                    title=f"{task.name} ({final})",
                )
        return {
            "kind": _kind_label(dataset),
            "sharing": model.sharing,
            "tie": objective.tie,
            "weighting": objective.weighting,
            "tasks": [t.name for t in dataset.tasks],
            "valid_score": metrics["valid"]["score"],
            "test_score": metrics["test"]["score"] if "test" in metrics else None,
            "valid": _brief(metrics["valid"]),
            "test": _brief(metrics["test"]) if "test" in metrics else None,
            "tower_distance": metrics["tower_distance"],
        }

    def results(self, metrics: dict[str, Any]) -> str:
        final = "test" if "test" in metrics else "valid"
        return f"{final}: " + "; ".join(
            f"{name} {' '.join(_headline(entry))}" for name, entry in metrics[final]["tasks"].items()
        )

    def load_trained(self, folder: Path, config: dict[str, Any]) -> MultiTaskTrainedModel:
        return load_trained(folder, config)


def _kind_label(dataset: MultiTaskDataset) -> str:
    return "multi-domain" if dataset.source.get("kind") == "domains" else "multi-task"


def _brief(metrics: dict[str, Any]) -> dict[str, Any]:
    keep = ("kind", "n", "accuracy", "macro_f1", "mae", "rmse")
    return {
        "score": metrics["score"],
        "tasks": {name: {k: v for k, v in entry.items() if k in keep} for name, entry in metrics["tasks"].items()},
    }


def _headline(entry: dict[str, Any]) -> list[str]:
    if entry["kind"] == "classification":
        return ["accuracy / macro F1", f"{entry['accuracy']:.4f} / {entry['macro_f1']:.4f}"]
    return ["MAE / RMSE", f"{entry['mae']:.3f} / {entry['rmse']:.3f}"]


@dataclass
class MultiTaskTrainedModel:
    """A multi-task (or multi-domain) model loaded from a run folder: every task on every image."""

    model: MultiTaskModel
    tasks: list[Task]
    scales: dict[str, TargetScale]
    preprocessing: Any
    config: dict[str, Any]
    path: Path
    modality: Modality

    @property
    def classes(self) -> dict[str, list[str]]:
        return {t.name: list(t.classes) for t in self.tasks if t.is_classification}

    def _outputs(self, items, batch_size: int):
        examples = self.modality.examples(items, self.preprocessing, augment=False)
        outputs, targets = collect_outputs(self.model, make_loader(examples, batch_size, default_workers()))
        return outputs, targets.astype(np.float64)

    def predict(self, images: Sequence[str | os.PathLike], batch_size: int = 32, tta: int = 0) -> list[dict[str, Any]]:
        """For each input: ``{"image": path, "tasks": {name: {"label", "prob", "probs"} or {"value"}}}`` (the
        modality's name as the key)."""
        _refuse_tta(tta)
        paths = self.modality.expand(images)
        failed = self.modality.unreadable(paths)
        readable = [path for path in paths if path not in failed]
        results: list[dict[str, Any]] = [
            {self.modality.name: path, "error": failed[path]} for path in paths if path in failed
        ]
        if not readable:
            return results
        outputs, _ = self._outputs([(p, [float("nan")] * len(self.tasks)) for p in readable], batch_size)
        decoded = {t.name: decode(t, outputs[t.name], self.scales) for t in self.tasks}
        for row, path in enumerate(readable):
            entry: dict[str, Any] = {}
            for task in self.tasks:
                value = decoded[task.name][row]
                if task.is_classification:
                    entry[task.name] = answer(value, task.classes)
                else:
                    entry[task.name] = {"value": float(value)}
            results.append({self.modality.name: path, "tasks": entry})
        order = {path: position for position, path in enumerate(paths)}
        return sorted(results, key=lambda result: order[result[self.modality.name]])

    def evaluate(self, data: str | os.PathLike | None = None, batch_size: int = 32, tta: int = 0) -> dict[str, Any]:
        """Every task's metrics. ``data=None`` or the training folder: the run's held-out test split
        (valid if none); another folder: all its images labelled by the run's label source."""
        _refuse_tta(tta)
        manifest_path = self.path / MANIFEST
        labels = self.config["multitask"]["labels"]
        root = self.config["data"]["root"]
        skipped: list = []
        if data is None or (root is not None and Path(data).resolve() == Path(root).resolve()):
            manifest = read_json(manifest_path)
            split = first_split(manifest, "test", "valid")
            items = [(p, [float("nan") if v is None else v for v in values]) for p, values in manifest["splits"][split]]
            evaluated_on = f"{split} split of the run's manifest"
        elif labels.get("kind") == "domains":
            raise DataError(
                f"a multi-domain run is evaluated on its own test splits; got DATA '{data}'",
                hint="run graft evaluate RUN without DATA",
            )
        elif labels.get("kind") == "columns":  # texts: the labels are columns of the table
            from graft.text.tasks import read_text_tasks

            _, items, skipped = read_text_tasks(data, list(self.tasks), labels.get("text_column"))
            evaluated_on = str(data)
        else:
            source = (
                labels["name"]
                if labels["kind"] == "preset"
                else labels["file"]
                if labels["kind"] == "csv"
                else "re:" + labels["pattern"]
            )
            _, items, skipped, _ = read_labels(data, source, list(self.tasks))
            evaluated_on = str(data)
        if not items:
            raise DataError(f"no labelled images to evaluate in '{data or manifest_path}'")
        outputs, targets = self._outputs(items, batch_size)
        metrics = task_metrics(self.tasks, outputs, targets, self.scales, detail=True)
        return {"kind": "multitask", "evaluated_on": evaluated_on, "n": len(items), **metrics, "skipped": skipped}

    def example_input(self) -> Any:
        """One batch shaped as the model takes it."""
        return self.modality.example_input(self.preprocessing)


def _refuse_tta(tta: int) -> None:
    if tta:
        raise ConfigError("--tta applies to single-task classifier runs; a multi-task run predicts from the clean view")


def load_trained(folder: Path, config: dict[str, Any]) -> MultiTaskTrainedModel:
    """The "multitask" run kind's loader (see :func:`graft.core.runs.load_run`)."""
    source = modality_of(config)
    try:
        section = config["multitask"]
        tasks = [Task.from_dict(t) for t in section["tasks"]]
        scales = {name: TargetScale(**values) for name, values in section["scales"].items()}
        preprocessing = source.preprocessing(config["preprocessing"])
        name = config["backbone"]["name"]
        model = build_multitask_model(
            lambda: source.load_backbone(name, pretrained=False).model,
            tasks,
            section["sharing"],
            config["head"],
            input_size=getattr(preprocessing, "input_size", None),
            modality=source,
        )
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise RunFolderError(
            f"'{folder / CONFIG}' is damaged or not a graft multi-task config ({type(error).__name__}: {error})"
        ) from None
    load_weights(model, folder)
    return MultiTaskTrainedModel(
        model=model.eval(),
        tasks=tasks,
        scales=scales,
        preprocessing=preprocessing,
        config=config,
        path=folder,
        modality=source,
    )


KIND = MultiTaskKind()
