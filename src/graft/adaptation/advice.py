"""``graft advise SOURCE --target TARGET``: how far apart two domains are, and whether adapting is likely
to be worth it, before any training.

One pass of a seeded sample of each domain through the pretrained backbone (the advisor's probe) gives
pooled features after every stage. Three measurements follow, none of which needs a target label:

- the proxy A-distance (:func:`graft.adaptation.validators.proxy_a_distance`) at every stage: how well a
  linear classifier tells source from target (0: not at all, 2: always). Where it rises says whether the
  domains differ in low-level style (early stages) or only in content (late ones);
- a source-only classifier (logistic regression on the last stage's features): its cross-validated
  accuracy on the source, and its confidence on held-out source images against its confidence on the
  target. A classifier that is much less sure on the target is the symptom adaptation treats;
- each domain's similarity to the pretraining data (BatchNorm drift, as ``graft advise`` measures it).

The verdict reads the last stage's distance against lines set from measured pairs (BENCHMARKS.md section 8):
the same domain split in two sits near 0, the PACS photo -> art, cartoon and sketch pairs at 1.7-2.0, where
``graft adapt`` gained 19-37 points over source-only. Target class folders, when present, only add the
source-only classifier's target accuracy to the report, as in ``graft adapt``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from graft.adaptation.data import TARGET, target_labelled, with_target
from graft.adaptation.validators import proxy_a_distance
from graft.perf import one_blas_thread

# Proxy A-distance lines at the last stage (BENCHMARKS.md section 8): under CLOSE the domains are hard to
# tell apart; from FAR on, every pair measured gained from adaptation by far more than its noise.
CLOSE = 0.5
FAR = 1.5
# A source-only classifier whose mean top probability on the target falls by this much below its held-out
# source confidence is visibly unsure on the target.
CONFIDENCE_DROP = 0.1
SAMPLE = 256  # images of each domain measured by default


def _sample(items: list[tuple[str, int]], count: int, seed: int) -> list[tuple[str, int]]:
    """A seeded sample of ``count`` items, ordered by file name first: which class folder of the target a file
    sits in must not change what is measured (those folders are for the report only)."""
    items = sorted(items, key=lambda item: (os.path.basename(item[0]), item[0]))
    order = np.random.default_rng(seed).permutation(len(items))[:count]
    return [items[i] for i in sorted(order)]


def _source_only(source: np.ndarray, labels: np.ndarray, target: np.ndarray, seed: int) -> dict[str, Any]:
    """A logistic regression on the source's features: held-out source accuracy and confidence (3-fold
    cross-validation), and its confidence (and predictions) on the target."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def classifier():
        return make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000, random_state=seed))

    folds = int(min(3, np.bincount(labels).min()))
    held_out = None
    with one_blas_thread():
        if folds >= 2:
            splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
            held_out = cross_val_predict(classifier(), source, labels, cv=splitter, method="predict_proba")
        fitted = classifier().fit(source, labels)
    on_target = fitted.predict_proba(target)
    return {
        "source_accuracy": None if held_out is None else float((fitted.classes_[held_out.argmax(1)] == labels).mean()),
        "source_confidence": None if held_out is None else float(held_out.max(1).mean()),
        "target_confidence": float(on_target.max(1).mean()),
        "target_predictions": fitted.classes_[on_target.argmax(1)],
    }


def verdict(distance: float, confidence_drop: float | None) -> tuple[str, str]:
    """(``close`` / ``apart`` / ``far``, a sentence) from the last stage's proxy A-distance and the source-only
    classifier's confidence drop on the target."""
    unsure = confidence_drop is not None and confidence_drop >= CONFIDENCE_DROP
    drop = (
        ""
        if confidence_drop is None
        else f"; a source-only classifier is {confidence_drop:.2f} less confident on the target"
    )
    if distance < CLOSE and not unsure:
        return "close", (
            f"the domains are close (proxy A-distance {distance:.2f}, under {CLOSE}){drop}: train on the source "
            "(graft train) and expect its accuracy to carry over; adaptation has little to correct"
        )
    if distance >= FAR:
        return "far", (
            f"the domains are far apart (proxy A-distance {distance:.2f}, from {FAR} on){drop}: adaptation is "
            "likely worth it; on PACS pairs this far apart (1.7-2.0) graft adapt gained 19-37 points over "
            "source-only (BENCHMARKS.md section 8). Run graft adapt SOURCE TARGET --method auto"
        )
    return "apart", (
        f"the domains differ (proxy A-distance {distance:.2f}){drop}: adaptation may help; graft adapt "
        "SOURCE TARGET --method auto trains source-only beside the methods, so its report shows whether it did"
    )


def advise_domains(
    data: str | os.PathLike,
    target: str | os.PathLike,
    backbone: str = "tf_efficientnet_lite0",
    weights: str | None = None,
    seed: int = 0,
    per_domain: int = SAMPLE,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Measure how far ``target`` (unlabelled images, class folders optional) is from the labelled ``data``."""
    import torch

    from graft.core.advisor import similarity_from_drift
    from graft.core.modality import modality_for
    from graft.core.source_runs import resolve_source
    from graft.errors import ConfigError

    if per_domain < 8:
        raise ConfigError(f"--per-domain must be at least 8; got {per_domain}")
    began = time.perf_counter()
    resolved = resolve_source(backbone, weights, None)
    modality = modality_for(str(data), resolved.backbone)
    dataset = with_target(modality.scan(str(data), valid_fraction=0.2, seed=seed), str(target), modality)
    loaded = modality.load_backbone(resolved.backbone, weights=resolved.weights)
    source_items = _sample(dataset.split("train") + dataset.split("valid"), per_domain, seed)
    target_items = _sample(dataset.split(TARGET), per_domain, seed)
    with torch.random.fork_rng(devices=[]):
        seen = {
            "source": modality.probe(loaded, source_items, batch_size=batch_size),
            "target": modality.probe(loaded, target_items, batch_size=batch_size),
        }
    stages = seen["source"].stage_names
    distances = {
        name: round(proxy_a_distance(seen["source"].features[name], seen["target"].features[name], seed), 4)
        for name in stages
    }
    last = stages[-1]
    labels = np.array([label for _, label in source_items])
    classifier = _source_only(seen["source"].features[last], labels, seen["target"].features[last], seed)
    drop = (
        None
        if classifier["source_confidence"] is None
        else round(classifier["source_confidence"] - classifier["target_confidence"], 4)
    )
    kind, sentence = verdict(distances[last], drop)
    target_truth = np.array([label for _, label in target_items])
    labelled = target_labelled(dataset)
    similarity = {
        domain: round(similarity_from_drift(float(np.mean(list(probe.bn_shift.values())))), 4)
        if probe.bn_shift
        else None
        for domain, probe in seen.items()
    }
    return {
        "backbone": backbone,
        "source": str(data),
        "target": str(target),
        "images": {"source": len(source_items), "target": len(target_items)},
        "stages": stages,
        "proxy_a_distance": distances,
        "distance": distances[last],
        "similarity_to_pretraining": similarity,
        "source_only": {
            "source_accuracy": _rounded(classifier["source_accuracy"]),
            "source_confidence": _rounded(classifier["source_confidence"]),
            "target_confidence": round(classifier["target_confidence"], 4),
            "confidence_drop": drop,
            "target_accuracy": round(float((classifier["target_predictions"] == target_truth).mean()), 4)
            if labelled
            else None,
        },
        "verdict": kind,
        "reason": sentence,
        "skipped": len(dataset.skipped),
        "seconds": round(time.perf_counter() - began, 3),
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
