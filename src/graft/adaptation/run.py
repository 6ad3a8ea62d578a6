"""The "adaptation" kind of run (``graft adapt SOURCE TARGET``): one classifier trained on labelled source
examples and unlabelled target ones, for the target.

It is the classifier kind with three differences: the data has a ``target`` split (labels hidden from
training), the inputs are the source's and the target's cached rows in mixed batches
(:mod:`graft.adaptation.inputs`), and the objective adds the method's alignment term
(:mod:`graft.adaptation.objective`). ``--method auto`` trains each candidate on the same rows first
and keeps the one the unsupervised validator prefers (:mod:`graft.adaptation.auto`, saved as
``adaptation_auto.json``). The finished run is an ordinary classifier adapted to the target: with
AdaBN its saved BatchNorm statistics are the target's.

It trains over several processes like the classifier (``--nproc`` or torchrun): the frozen rows are shared
between the ranks, each batch's source and target rows split, the alignment term computed on the whole
batch; rank 0 estimates AdaBN's statistics and makes ``--method auto``'s choice, and the others take them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from graft.adaptation.auto import choose_method
from graft.adaptation.batchnorm import domain_statistics, load_statistics, with_statistics
from graft.adaptation.data import TARGET, target_labelled, with_target
from graft.adaptation.head import BOTTLENECK, AdaptationHead
from graft.adaptation.inputs import CleanRows, DomainLoaders, domain_loaders, require_cached_prefix
from graft.adaptation.methods import method_named
from graft.adaptation.objective import UNLABELLED, AdaptationObjective
from graft.adaptation.picture import domain_picture
from graft.adaptation.validators import proxy_a_distance, unsupervised_scores
from graft.core import plots
from graft.core.cache import cache_limit, prune_cache, resolve_cache_dir
from graft.core.callbacks import ProgressBars
from graft.core.classifier import KIND as CLASSIFIER
from graft.core.classifier import TrainedClassifier, load_trained, worst_mistakes
from graft.core.config import RunConfig
from graft.core.dataset import Dataset
from graft.core.evaluation import classification_metrics, probabilities
from graft.core.fit import apply_plan, fit
from graft.core.inputs import Inputs
from graft.core.modality import Modality
from graft.core.model import TransferModel
from graft.core.reproducibility import seed_everything
from graft.core.run_files import CONFUSION, LEARNING_CURVE
from graft.core.runs import RunFolder
from graft.fileio import atomic_save_tensors, load_tensors, read_json

AUTO_CHOICE = "adaptation_auto.json"
STATISTICS = "domain_statistics.safetensors"  # AdaBN's source and target BatchNorm statistics
PICTURE = "domains.png"
PICTURE_ROWS = 400  # examples of each domain in the picture and the proxy A-distance


@dataclass
class AdaptationInputs(Inputs):
    """The chosen loaders, plus a sample of each domain for the before/after picture."""

    sample: dict[str, Any] = field(default_factory=dict)


def _model(source: Modality, backbone: torch.nn.Module, classes: int, input_size: int | None) -> TransferModel:
    return source.transfer_model(backbone, lambda features: AdaptationHead(features, classes), input_size)


def read_statistics(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """The per-domain statistics a run saved (keys ``source/...`` and ``target/...``), by domain."""
    saved = load_tensors(path)
    return {
        domain: {key.split("/", 1)[1]: value for key, value in saved.items() if key.startswith(domain + "/")}
        for domain in ("source", "target")
    }


class AdaptationKind:
    """A classifier for an unlabelled target domain (see :class:`graft.core.trainer.RunKind`)."""

    name = "adaptation"
    modalities = ("image",)
    several_processes = True  # torchrun / --nproc (graft.core.distributed; the module docstring says how)

    def scan(self, config: RunConfig, source: Modality) -> Dataset:
        return with_target(CLASSIFIER.scan(config, source), config.target, source)

    def reload(self, run: RunFolder, saved: dict[str, Any], config: RunConfig, source: Modality) -> Dataset:
        return CLASSIFIER.reload(run, saved, config, source)

    def advice_view(self, dataset: Dataset) -> Dataset:
        return dataset

    def build_model(self, config, source: Modality, make_backbone, dataset: Dataset, input_size) -> TransferModel:
        return _model(source, make_backbone(), len(dataset.classes), input_size)

    def frozen_trunk(self, model: TransferModel) -> TransferModel:
        return model

    def objective(self, config: RunConfig, dataset: Dataset) -> AdaptationObjective:
        method = None if config.method == "auto" else method_named(config.method)
        return AdaptationObjective(method, config.strength, BOTTLENECK)

    def config_section(self, config: RunConfig, dataset: Dataset, objective, model) -> dict[str, Any]:
        return {
            "classes": dataset.classes,
            "adaptation": {
                "target": config.target,
                "method": config.method,
                "strength": config.strength,
                "target_examples": len(dataset.split(TARGET)),
                "target_labelled": target_labelled(dataset),
            },
        }

    def headline(self, dataset: Dataset) -> str:
        return f"{dataset.layout}; {len(dataset.classes)} classes; adapting to the target's unlabelled examples"

    def build_inputs(self, session, saved, preprocessing, dataset: Dataset, model, plan, objective, progress):
        """The cached rows of both domains and their loaders; ``--method auto`` decides here."""
        config, run, modality, runtime = session.config, session.run, session.source, session.runtime
        stop = plan.trainable_from
        require_cached_prefix(stop, config.cache, "graft adapt")
        root = resolve_cache_dir(config.cache_dir)
        splits = {name: dataset.split(name) for name in ("train", "valid", "test", TARGET) if dataset.split(name)}
        labels = {name: [label for _, label in items] for name, items in splits.items()}
        source_splits = {name: items for name, items in splits.items() if name != TARGET}
        clean = CleanRows(
            modality, dataset, preprocessing, saved["backbone"]["architecture"], root, session.num_workers, progress,
            runtime.device, runtime.processes,
        )  # fmt: skip

        def rows(trunk: TransferModel, parts: dict[str, list], statistics: str) -> dict[str, Any]:
            return clean(trunk, stop, parts, statistics)

        choice = read_json(run / AUTO_CHOICE) if (run / AUTO_CHOICE).is_file() else None
        method = objective.method or (method_named(choice["chosen"]) if choice else None)
        cached: dict[str, dict[str, Any]] = {}
        if method is None or not method.target_bn:
            cached["pretrained"] = rows(model, splits, "pretrained statistics")
        if method is None or method.target_bn:
            statistics = runtime.processes.on_main(
                lambda: self._statistics(
                    run, model, modality, dataset, splits, preprocessing, stop, config.seed, root, progress
                )
            )
            cached["adabn"] = {
                **rows(with_statistics(model, statistics["source"]), source_splits, "source statistics"),
                **rows(with_statistics(model, statistics["target"]), {TARGET: splits[TARGET]}, "target statistics"),
            }

        def loaders(normalisation: str, with_target: bool) -> DomainLoaders:
            return domain_loaders(
                cached[normalisation],
                labels,
                batch_size=config.batch_size,
                seed=config.seed,
                with_target=with_target,
                processes=runtime.processes,
            )

        if method is None:
            # every rank trained the same candidates; rank 0's choice binds them all (a tie cannot split them)
            choice = runtime.processes.from_main(self._choose(session, model, plan, loaders, stop, progress, dataset))
            run.write_json(AUTO_CHOICE, choice)
            method = method_named(choice["chosen"])
            seed_everything(config.seed, config.deterministic)  # the run trains as the chosen candidate did
        if objective.method is None:
            objective.use(method)
        normalisation = "adabn" if method.target_bn else "pretrained"
        chosen = loaders(normalisation, method.uses_target)
        objective.total_steps = config.epochs * len(chosen.train)
        sample = self._sample(model, rows, cached, normalisation, splits, stop, config.seed)
        prune_cache(root, max_bytes=cache_limit(), keep=clean.used)
        shape = next(iter(cached[normalisation].values())).row_shape
        return AdaptationInputs(
            chosen.train,
            chosen.evaluation,
            stop,
            clean.description(model, stop, shape, normalisation=normalisation),
            sample=sample,
        )

    def _statistics(
        self, run, model, modality, dataset, splits, preprocessing, stop, seed, root, progress
    ) -> dict[str, dict]:
        """AdaBN's per-domain statistics: from the run folder when a killed run left them there."""
        path = run / STATISTICS
        if path.is_file():
            return read_statistics(path)
        statistics = {
            domain: domain_statistics(
                model,
                modality,
                splits[name],
                [dataset.digest(path) for path, _ in splits[name]],
                preprocessing,
                stop=stop,
                seed=seed,
                cache_root=root,
                progress=progress,
                description=f"BatchNorm statistics, {domain}",
            )
            for domain, name in (("source", "train"), ("target", TARGET))
        }
        atomic_save_tensors(
            path, {f"{domain}/{key}": value for domain, values in statistics.items() for key, value in values.items()}
        )
        return statistics

    def _choose(self, session, model, plan, loaders, stop, progress, dataset) -> dict[str, Any]:
        config, runtime = session.config, session.runtime

        def train(candidate, objective: AdaptationObjective, chosen: DomainLoaders) -> dict[str, Any]:
            seed_everything(config.seed, config.deterministic)
            objective.total_steps = config.epochs * len(chosen.train)
            candidate.to(runtime.device)
            objective.to(runtime.device)
            apply_plan(plan, candidate)
            state = fit(
                candidate,
                objective,
                plan,
                chosen.train,
                chosen.evaluation["valid"],
                epochs=config.epochs,
                patience=config.patience,
                start=stop,
                runtime=runtime,
                callbacks=[ProgressBars(progress)],
            )
            return state.history[-1]

        return choose_method(
            loaders,
            train,
            model,
            BOTTLENECK,
            start=stop,
            runtime=runtime,
            classes=dataset.classes,
            labelled_target=target_labelled(dataset),
        )

    @torch.inference_mode()
    def _sample(self, model, rows, cached, normalisation: str, splits, stop, seed) -> dict[str, Any]:
        """A seeded sample of each domain for the picture: its rows as trained on, and the pretrained
        network's pooled features of the same examples ("before", whatever the method)."""
        rng = np.random.default_rng(seed)
        picks = {
            name: np.sort(rng.permutation(len(splits[name]))[:PICTURE_ROWS]).tolist() for name in ("train", TARGET)
        }
        if "pretrained" in cached:
            plain = {name: cached["pretrained"][name].rows(picks[name]) for name in picks}
        else:
            picked = rows(
                model, {name: [splits[name][i] for i in picks[name]] for name in picks}, "pretrained statistics"
            )
            plain = {name: picked[name].materialize() for name in picks}
        model.eval()
        return {
            "domains": np.array([0] * len(picks["train"]) + [1] * len(picks[TARGET])),
            "labels": np.array(
                [splits["train"][i][1] for i in picks["train"]] + [splits[TARGET][i][1] for i in picks[TARGET]]
            ),
            "rows": torch.cat([cached[normalisation][name].rows(picks[name]) for name in ("train", TARGET)]),
            "before": model.forward_features(torch.cat([plain["train"], plain[TARGET]]), start=stop)
            .float()
            .cpu()
            .numpy(),
        }

    def metrics(self, outputs, targets, dataset: Dataset, objective, split: str) -> dict[str, Any]:
        probs = probabilities(outputs)
        if split == TARGET:
            scores = unsupervised_scores(probs)
            if target_labelled(dataset):
                return {**classification_metrics(probs, targets, dataset.classes), "unsupervised": scores}
            return {"n": len(probs), "unsupervised": scores}
        source = targets != UNLABELLED
        probs, labels = probs[source], targets[source]
        files = [path for path, _ in dataset.split(split)]
        return {
            **classification_metrics(probs, labels, dataset.classes),
            "worst": worst_mistakes(probs, labels, files, dataset.classes),
        }

    def plot_history(self, history: list[dict], path, title: str) -> None:
        plots.learning_curve(history, path, title=title)

    @torch.inference_mode()
    def finish(self, run: RunFolder, history, metrics, dataset: Dataset, model, objective, title: str, inputs=None):
        self.plot_history(history, run / LEARNING_CURVE, title)
        if "accuracy" in metrics.get(TARGET, {}):
            plots.confusion_matrix(
                metrics[TARGET]["confusion_matrix"], dataset.classes, run / CONFUSION, title="confusion matrix (target)"
            )
        sample = inputs.sample
        model.eval()
        after = model.head.embed(model.forward_features(sample["rows"], start=inputs.start)).float().cpu().numpy()
        domains, seed = sample["domains"], 0
        distance = {
            "before": proxy_a_distance(sample["before"][domains == 0], sample["before"][domains == 1], seed),
            "after": proxy_a_distance(after[domains == 0], after[domains == 1], seed),
        }
        method = objective.method
        domain_picture(
            sample["before"],
            after,
            domains,
            sample["labels"],
            dataset.classes,
            run / PICTURE,
            seed=seed,
            title=f"{method.name}: source and target features before (pretrained) and after",
        )
        if method.target_bn:  # the saved model is for the target: its frozen stages get the target's statistics
            load_statistics(model, read_statistics(run / STATISTICS)["target"])
            run.write_weights(model.state_dict(), {"epoch": str(len(history)), "batchnorm": "target"})
        auto = read_json(run / AUTO_CHOICE) if (run / AUTO_CHOICE).is_file() else None
        metrics["adaptation"] = {
            "method": method.name,
            "summary": method.summary,
            "strength": objective.strength,
            "normalisation": inputs.description["normalisation"],
            "proxy_a_distance": distance,
            "picture": PICTURE,
            **({"auto": auto} if auto else {}),
        }
        target = metrics.get(TARGET, {})
        return {
            "method": method.name,
            "valid_accuracy": metrics["valid"]["accuracy"],
            "target_accuracy": target.get("accuracy"),
            "target_im": target["unsupervised"]["im"],
            "proxy_a_distance": distance,
        }

    def results(self, metrics: dict[str, Any]) -> str:
        target = metrics.get(TARGET, {})
        reported = f", target accuracy {target['accuracy']:.4f}" if "accuracy" in target else ""
        return (
            f"method {metrics['adaptation']['method']}: source valid accuracy {metrics['valid']['accuracy']:.4f}"
            f"{reported}, target IM {target['unsupervised']['im']:.3f}; proxy A-distance "
            f"{metrics['adaptation']['proxy_a_distance']['before']:.2f} -> "
            f"{metrics['adaptation']['proxy_a_distance']['after']:.2f}"
        )

    def load_trained(self, folder: Path, config: dict[str, Any]) -> TrainedClassifier:
        return load_trained(folder, config, AdaptationHead)


KIND = AdaptationKind()
