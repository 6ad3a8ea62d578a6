"""``graft advise``: measure data size and domain similarity, pick a scenario (1-4) and a plan.

The textbook's table (docs: what-graft-covers.md) decides how much to transfer from two things:

=================  ==========================================  ==========================================
                   target similar to the source                target very different
small target data  1: feature extractor                        3: fine-tune the back part (freeze the
                                                               first half to two-thirds)
large target data  2: fine-tune the top (freeze ~60-80%)       4: fine-tune the whole network
=================  ==========================================  ==========================================

graft measures both instead of asking. *Size* is counted (labelled images, classes, smallest class;
"small" is under 1000 images). *Similarity* comes from one pass of a seeded subsample through the
pretrained backbone (:mod:`graft.image.probing`), without any source images: how far the target's
activation statistics drift from the source statistics stored in the BatchNorm layers (the
similarity, in [0, 1]); the ImageNet head's confidence (a second opinion, shown as evidence); and
LogME of frozen features at every depth (:mod:`graft.core.transferability`). The drift profile over depth
says where adaptation should start in scenarios 2 and 3.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch

from graft.core.dataset import Dataset
from graft.core.modality import Modality, modality_for
from graft.core.source_runs import resolve_source
from graft.core.strategies import default_unfreeze
from graft.core.transferability import logme
from graft.errors import ConfigError

__all__ = ["Advice", "AdvisedPlan", "advise", "advise_scanned", "rank_backbones", "scenario_for"]

SMALL_DATA_IMAGES = 1000  # the textbook's "small" (what-graft-covers.md)
SIMILARITY_THRESHOLD = 0.5
# Mean BatchNorm KL drift at which similarity is 0.5: exp(-drift / scale) with scale = 0.12 / ln 2.
# Measured with tf_efficientnet_lite0: dogs-vs-cats ~0.06 (close), hand signs and faces ~0.25 (far).
DRIFT_AT_HALF = 0.12
STAGE_DRIFT_ADAPT = 0.12  # a stage whose own drift is above this wants adapting
HEAD_CONFIDENCE_AT_ONE = 0.7  # ImageNet-like images: the head's mean top-1 probability is about this
# Networks without BatchNorm statistics or a source classifier (LayerNorm transformers: text encoders):
# below this many labelled examples a class on average, contrastive few-shot tuning; above, fine-tune the
# top. Measured with all-MiniLM-L6-v2 (BENCHMARKS.md section 7): at 8 and 64 texts a class fewshot beat
# finetune (SMS 90.4 vs 82.1, 98.0 vs 97.0; TREC-6 at 8: 78.8 vs extract 36.6), on full sets finetune wins
# in a fraction of fewshot's time; extraction never won.
FEW_SHOT_PER_CLASS = 100


@dataclass
class Probe:
    """The evidence a modality's probe collects in one pass over a sample of the target data: pooled
    features after every stage (for LogME), each stage's drift from the source's activation statistics
    (for images, the Gaussian KL of BatchNorm inputs against the stored running statistics), and the
    source classifier's confidence and entropy when the backbone still has one."""

    stage_names: list[str]
    labels: np.ndarray
    features: dict[str, np.ndarray] = field(default_factory=dict)
    bn_shift: dict[str, float] = field(default_factory=dict)
    head_max_prob: np.ndarray | None = None
    head_entropy: np.ndarray | None = None  # normalised by log(number of source classes), in [0, 1]


@dataclass(frozen=True)
class AdvisedPlan:
    """What to train: ``mode`` and ``unfreeze`` (last stages), rates, epochs, head-first warm-up epochs."""

    mode: str
    unfreeze: int
    lr: float
    backbone_lr_mult: float
    epochs: int
    head_epochs: int
    bn: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdvisedPlan:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"advised plan has unknown keys {sorted(unknown)}")
        return cls(**data)


@dataclass(frozen=True)
class Advice:
    backbone: str
    scenario: int
    similarity: float
    size: dict[str, int]
    plan: AdvisedPlan
    evidence: dict[str, Any]
    reasons: tuple[str, ...]
    seconds: float
    race: dict[str, Any] | None = None  # --mode auto's race of plans on small data (graft.core.race)

    def to_dict(self) -> dict[str, Any]:
        return {
            "backbone": self.backbone,
            "scenario": self.scenario,
            "similarity": self.similarity,
            "size": dict(self.size),
            "plan": self.plan.to_dict(),
            "evidence": self.evidence,
            "reasons": list(self.reasons),
            "seconds": self.seconds,
            "race": self.race,
        }


def scenario_for(small: bool, similar: bool) -> int:
    """The textbook's numbering: 1 small+similar, 2 large+similar, 3 small+different, 4 large+different."""
    return {(True, True): 1, (False, True): 2, (True, False): 3, (False, False): 4}[(small, similar)]


def data_size(dataset: Dataset) -> dict[str, int]:
    """Labelled images available for training (train + valid), classes, images in the smallest class."""
    labels = [label for split in ("train", "valid") for _, label in dataset.split(split)]
    counts = np.bincount(labels, minlength=len(dataset.classes))
    return {"images": int(counts.sum()), "classes": len(dataset.classes), "min_per_class": int(counts.min())}


def sample_items(dataset: Dataset, seed: int, per_class: int | None = None) -> list[tuple[str, int]]:
    """A seeded, stratified subsample of train + valid: ``per_class`` images per class (default 8-32)."""
    by_class: dict[int, list[tuple[str, int]]] = {}
    for item in dataset.split("train") + dataset.split("valid"):
        by_class.setdefault(item[1], []).append(item)
    if per_class is None:
        per_class = max(8, min(32, 160 // max(1, len(by_class))))
    rng = random.Random(seed)
    chosen = []
    for label in sorted(by_class):
        items = sorted(by_class[label])
        chosen.extend(rng.sample(items, min(per_class, len(items))))
    return sorted(chosen)


def similarity_from_drift(mean_drift: float) -> float:
    return float(math.exp(-mean_drift * math.log(2) / DRIFT_AT_HALF))


def _evidence(seen: Probe) -> dict[str, Any]:
    drift = [seen.bn_shift.get(name) for name in seen.stage_names]
    measured = [d for d in drift if d is not None]
    evidence: dict[str, Any] = {
        "stages": seen.stage_names,
        "sample_images": int(len(seen.labels)),
        "bn_drift": {name: round(value, 4) for name, value in seen.bn_shift.items()},
        "bn_drift_mean": round(float(np.mean(measured)), 4) if measured else None,
        "logme": {name: round(logme(features, seen.labels), 4) for name, features in seen.features.items()},
        "head_confidence": None,
        "head_entropy": None,
    }
    if seen.head_max_prob is not None:
        evidence["head_confidence"] = round(float(seen.head_max_prob.mean()), 4)
        evidence["head_entropy"] = round(float(seen.head_entropy.mean()), 4)
    return evidence


def _similarity(evidence: dict[str, Any]) -> tuple[float, str]:
    """From BatchNorm drift, else the source head's confidence (a network with neither is planned by size:
    :func:`_without_drift`)."""
    if evidence["bn_drift_mean"] is not None:
        return similarity_from_drift(evidence["bn_drift_mean"]), "bn_drift"
    return min(1.0, evidence["head_confidence"] / HEAD_CONFIDENCE_AT_ONE), "head_confidence"


def _adapt_count(evidence: dict[str, Any], low: int, high: int) -> tuple[int, str | None]:
    """How many of the last stages to train: those from the first stage where drift stays high to the end, clamped."""
    stages = evidence["stages"]
    drift = evidence["bn_drift"]
    count = 0
    for name in reversed(stages):
        if drift.get(name, 0.0) < STAGE_DRIFT_ADAPT:
            break
        count += 1
    chosen = min(max(count, low), high)
    return chosen, (stages[len(stages) - count] if count else None)


def make_plan(scenario: int, evidence: dict[str, Any]) -> tuple[AdvisedPlan, list[str]]:
    """The concrete plan for a scenario, shaped by the drift profile; with the reasons in words."""
    stages = len(evidence["stages"])
    reasons = []
    if scenario == 1:
        reasons.append(
            "small data, similar domain (scenario 1): the pretrained features already fit; training more layers "
            "would overfit, so freeze the whole backbone and train only a new head"
        )
        return AdvisedPlan("extract", 0, 1e-3, 0.1, 10, 0, "frozen"), reasons
    if scenario == 4:
        reasons.append(
            "large data, different domain (scenario 4): fine-tune the whole network from the pretrained weights "
            "(better than from scratch), after one epoch that trains the new head alone"
        )
        return AdvisedPlan("finetune", stages, 1e-3, 0.3, 10, 1, "train"), reasons
    if scenario == 2:
        low, high = max(1, round(0.2 * stages)), max(1, round(0.4 * stages))  # freeze roughly 60-80%
        text = "large data, similar domain (scenario 2): fine-tune the top, freezing roughly 60-80% of the stages"
    else:
        low, high = max(1, math.floor(stages / 3)), max(1, math.ceil(stages / 2))  # freeze the first half to two-thirds
        text = (
            "small data, different domain (scenario 3): fine-tune the back part, "
            "freezing the early, general stages (half to two-thirds)"
        )
    count, first = _adapt_count(evidence, low, high)
    if first is not None:
        text += (
            f"; the BatchNorm drift stays above {STAGE_DRIFT_ADAPT} from {first} to the end, "
            f"so train the last {count} stage(s) (allowed range {low}-{high})"
        )
    else:
        text += f"; no late stage drifts much, so train the fewest allowed: the last {count}"
    reasons.append(text + "; the new head trains alone first, so its random start does not wreck the pretrained stages")
    return AdvisedPlan("finetune", count, 1e-3, 0.1, 10, 1, "train"), reasons


def _without_drift(size: dict[str, int], evidence: dict[str, Any]) -> tuple[AdvisedPlan, list[str]] | None:
    """The plan for a network with nothing to measure drift with (LayerNorm, no source classifier), by size."""
    if evidence["bn_drift_mean"] is not None or evidence["head_confidence"] is not None:
        return None
    stages = len(evidence["stages"])
    per_class = size["images"] / max(1, size["classes"])
    reasons = [
        "no BatchNorm statistics and no source classifier (a LayerNorm network such as a text encoder): the "
        "distance to the source domain cannot be read from stored statistics, so the plan follows the data size "
        "and the gains measured for such networks (BENCHMARKS.md); LogME by depth is reported as evidence"
    ]
    if per_class < FEW_SHOT_PER_CLASS and size["images"] < SMALL_DATA_IMAGES:
        reasons.append(
            f"{per_class:.0f} labelled examples a class (under {FEW_SHOT_PER_CLASS}): few-shot, contrastive tuning of "
            "every layer but the first on in-batch pairs, then a new head on the tuned features"
        )
        return AdvisedPlan("fewshot", stages - 1, 1e-3, 1.0, 20, 0, "frozen"), reasons
    count = default_unfreeze(stages)
    reasons.append(f"enough labelled examples to fine-tune: the top {count} stage(s), the rest frozen and cached")
    return AdvisedPlan("finetune", count, 1e-3, 0.1, 10, 0, "train"), reasons


def decide(backbone: str, size: dict[str, int], evidence: dict[str, Any], seconds: float) -> Advice:
    """Scenario and plan from measured size and evidence (no I/O: the decision on its own, testable)."""
    planned = _without_drift(size, evidence)
    if planned is not None:
        small = size["images"] < SMALL_DATA_IMAGES
        plan, reasons = planned
        reasons = [
            f"{size['images']} labelled examples in {size['classes']} classes (smallest class "
            f"{size['min_per_class']}): " + ("small" if small else "large") + " data",
            *reasons,
        ]
        evidence = {**evidence, "similarity_from": "none (nothing to measure it with)"}
        return Advice(
            backbone, scenario_for(small, False), 0.0, size, plan, evidence, tuple(reasons), round(seconds, 3)
        )
    similarity, source = _similarity(evidence)
    small = size["images"] < SMALL_DATA_IMAGES
    similar = similarity >= SIMILARITY_THRESHOLD
    scenario = scenario_for(small, similar)
    evidence = {**evidence, "similarity_from": source}
    reasons = [
        f"{size['images']} labelled images in {size['classes']} classes (smallest class {size['min_per_class']}): "
        + ("small" if small else "large")
        + f" data (the table's line is {SMALL_DATA_IMAGES} images)",
        f"similarity {similarity:.2f} from {source}"
        + (
            f" (mean KL {evidence['bn_drift_mean']:.3f} between the target's activation statistics and the source's "
            "stored in BatchNorm)"
            if source == "bn_drift"
            else ""
        )
        + (": close to the source domain" if similar else ": far from the source domain")
        + f" (line at {SIMILARITY_THRESHOLD})",
    ]
    if evidence["head_confidence"] is not None:
        agrees = (evidence["head_confidence"] / HEAD_CONFIDENCE_AT_ONE >= SIMILARITY_THRESHOLD) == similar
        reasons.append(
            f"second opinion: the ImageNet head's mean top-1 probability is {evidence['head_confidence']:.2f} "
            + ("(agrees)" if agrees else "(disagrees: the images may show source-like content in an unusual style)")
        )
    plan, plan_reasons = make_plan(scenario, evidence)
    return Advice(
        backbone, scenario, round(similarity, 4), size, plan, evidence, tuple(reasons + plan_reasons), round(seconds, 3)
    )


def advise(
    data: str | os.PathLike,
    backbone: str = "tf_efficientnet_lite0",
    weights: str | None = None,
    seed: int = 0,
    per_class: int | None = None,
    batch_size: int = 16,
    valid_fraction: float = 0.2,
) -> Advice:
    """Measure ``data`` against ``backbone`` and return the advice (scenario, similarity, size, plan, evidence)."""
    began = time.perf_counter()
    _check_per_class(per_class)  # before the scan, which decodes every file
    resolved = resolve_source(backbone, weights, None)  # a run folder: its architecture and weights
    source = modality_for(str(data), resolved.backbone)
    dataset = source.scan(str(data), valid_fraction=valid_fraction, seed=seed)
    loaded = source.load_backbone(resolved.backbone, weights=resolved.weights)
    advice = advise_scanned(dataset, loaded, backbone, source, seed=seed, per_class=per_class, batch_size=batch_size)
    return dataclasses.replace(advice, seconds=round(time.perf_counter() - began, 3))


def advise_scanned(
    dataset: Dataset,
    loaded: Any,
    backbone: str,
    source: Modality,
    seed: int = 0,
    per_class: int | None = None,
    batch_size: int = 16,
) -> Advice:
    """The advice for data already scanned with a backbone already loaded (``--mode auto`` trains with both
    afterwards, so advising costs it only the probe). The process's random state is left as it was."""
    began = time.perf_counter()
    _check_per_class(per_class)
    with torch.random.fork_rng(devices=[]):  # the probe's loader draws a seed; training must not see the difference
        seen = source.probe(loaded, sample_items(dataset, seed, per_class), batch_size=batch_size)
    return decide(backbone, data_size(dataset), _evidence(seen), time.perf_counter() - began)


def _check_per_class(per_class: int | None) -> None:
    if per_class is not None and per_class < 2:
        raise ConfigError(f"--per-class must be at least 2; got {per_class}")


def rank_backbones(
    data: str | os.PathLike,
    backbones: Sequence[str],
    seed: int = 0,
    per_class: int | None = None,
    batch_size: int = 16,
) -> list[dict[str, Any]]:
    """Advise with each backbone on the same sample; rank by LogME of the final frozen features (best first)."""
    if len(backbones) < 1 or len(set(backbones)) != len(backbones):
        raise ConfigError(f"--backbones needs distinct names separated by commas; got {','.join(backbones)}")
    entries = []
    for name in backbones:
        advice = advise(data, backbone=name, seed=seed, per_class=per_class, batch_size=batch_size)
        final = advice.evidence["logme"][advice.evidence["stages"][-1]]
        entries.append({"backbone": name, "logme": final, "advice": advice.to_dict()})
    entries.sort(key=lambda entry: -entry["logme"])
    for rank, entry in enumerate(entries, 1):
        entry["rank"] = rank
    return entries


LOGME_MEANING = (
    "LogME is the log evidence of a Bayesian linear classifier on the backbone's frozen final features "
    "(nats per image and class, higher is better): how well a head trained on these features alone is expected "
    "to fit and generalise on this data, computed before any training. Compare it between backbones on the same "
    "data, never between datasets."
)
