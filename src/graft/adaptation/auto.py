"""``--method auto``: pick the adaptation from evidence that needs no target label.

Every candidate (source-only, AdaBN, and CORAL, DANN and MCC on the pretrained and on AdaBN's
per-domain BatchNorm statistics: eight in all) is trained with the same loop on the same cached rows,
then judged by information maximisation (IM) on its target predictions: the entropy of the mean
prediction minus the mean entropy, high when predictions are confident *and* spread over the classes
(Musgrave et al. 2022 rank it among the best of eight validators over a million checkpoints). A
candidate whose source validation accuracy falls more than :data:`SOURCE_SLACK` below the better of
source-only and AdaBN has forgotten the task and is out; the highest IM wins.

IM rewards confident predictions, so it leans towards methods that minimise entropy (MCC): measured on
PACS (BENCHMARKS.md) that lean was right, but where MCC is wrong for the data, auto is wrong with it.
Target labels, when the folder has them, are recorded next to each candidate for the report and
never read by the choice (a test permutes them and checks nothing about training moves).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from graft.adaptation.inputs import DomainLoaders
from graft.adaptation.methods import method_named
from graft.adaptation.objective import AdaptationObjective
from graft.adaptation.validators import unsupervised_scores
from graft.core.evaluation import classification_metrics, collect_outputs, probabilities

SOURCE_SLACK = 0.05
ALIGNING = ("coral", "dann", "mcc")
VALIDATOR = "im"


def choose_method(
    loaders_for: Callable[[str, bool], DomainLoaders],
    train: Callable[[Any, AdaptationObjective, DomainLoaders], dict[str, Any]],
    model,
    features: int,
    *,
    start: int,
    runtime,
    classes: list[str],
    labelled_target: bool,
) -> dict[str, Any]:
    """``loaders_for(normalisation, with_target)``: the loaders on the "pretrained" or "adabn" rows, with
    or without target rows in the training batches; ``train(model, objective, loaders)`` fits ``model``
    and returns its last epoch's record. Returns the decision and every candidate's scores."""
    candidates: list[dict[str, Any]] = []

    def judge(name: str, normalisation: str) -> dict[str, Any]:
        method = method_named(name)
        loaders = loaders_for(normalisation, method.uses_target)
        trained = copy.deepcopy(model)
        record = train(trained, AdaptationObjective(method, None, features), loaders)
        outputs, labels = collect_outputs(trained, loaders.evaluation["target"], start=start, runtime=runtime)
        probs = probabilities(outputs)
        entry = {
            "method": name,
            "normalisation": normalisation,
            "source_valid_accuracy": record["valid_accuracy"],
            **{f"target_{key}": value for key, value in unsupervised_scores(probs).items()},
        }
        if labelled_target:  # for the report only: read by nothing below
            entry["target_accuracy_reported"] = classification_metrics(probs, labels, classes)["accuracy"]
        candidates.append(entry)
        return entry

    baselines = [judge("source-only", "pretrained"), judge("adabn", "adabn")]
    pool = baselines + [
        judge(prefix + name, normalisation)
        for prefix, normalisation in (("", "pretrained"), ("adabn+", "adabn"))
        for name in ALIGNING
    ]
    floor = max(entry["source_valid_accuracy"] for entry in baselines) - SOURCE_SLACK
    eligible = [entry for entry in pool if entry["source_valid_accuracy"] >= floor]
    chosen = max(eligible, key=lambda entry: entry[f"target_{VALIDATOR}"])
    return {
        "chosen": chosen["method"],
        "validator": VALIDATOR,
        "normalisation": chosen["normalisation"],
        "rule": f"the highest target {VALIDATOR.upper()} among the candidates whose source validation accuracy is "
        f"within {SOURCE_SLACK:.2f} of the better of source-only and AdaBN",
        "candidates": candidates,
    }
