"""The first step of ``--mode fewshot``: contrastive fine-tuning of the last ``unfreeze`` stages.

The model's head is set aside, so the loop trains the pooled embedding itself with
:class:`~graft.fewshot.objective.ContrastivePairs`; the frozen stages run once (the activation cache).
The pairs come from every labelled example, train and valid: with a handful a class, the validation
examples add more pairs than any epoch choice is worth (movie sentences at 8 + 4 a class, 3 seeds: 67.0%
tuning on train alone, 70.0% on both, where SetFit given the same 12 scores 68.9%; BENCHMARKS.md section 7).
The epoch kept is the one whose validation examples sit closest to their class centroids, a score they now
take part in. The run then trains a new head on the tuned encoder's features, as ``--mode extract`` does,
and refits it on every labelled example (:mod:`graft.fewshot.head`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import nn

from graft.core.callbacks import ProgressBars
from graft.core.fit import fit
from graft.core.freeze import FreezePlan
from graft.core.inputs import build_inputs
from graft.core.modality import Modality
from graft.core.model import TransferModel
from graft.core.runtime import Runtime
from graft.fewshot.objective import ContrastivePairs

# Measured on TREC-6 with 8 texts per class (BENCHMARKS.md, test accuracy after the head): SetFit's 2e-5
# for 10 epochs 51.7%, 1e-4 for 10 epochs 61.6%, for 20 epochs 78.8%, for 30 79.4%; 2e-4 for 20 77.8%.
CONTRASTIVE_LR = 1e-4
CONTRASTIVE_EPOCHS = 20


@dataclass
class Tuned:
    """What the contrastive step did: how many stages it tuned, its epoch records, and the kept epoch's."""

    stages: int
    history: list[dict[str, Any]]
    best: dict[str, Any]


def contrastive_tune(
    model: TransferModel,
    source: Modality,
    dataset: Any,
    preprocessing: Any,
    *,
    architecture: str,
    unfreeze: int | None,
    seed: int,
    batch_size: int,
    cache: bool,
    cache_dir: str | None,
    workers: int | None,
    runtime: Runtime,
    progress: Any = None,
    epochs: int = CONTRASTIVE_EPOCHS,
    lr: float = CONTRASTIVE_LR,
) -> Tuned:
    """Tune ``model``'s last ``unfreeze`` stages in place (None: all but the first, the embeddings or stem)."""
    stages = model.stage_names
    count = min(unfreeze or len(stages) - 1, len(stages))
    plan = FreezePlan(tuple(stages), len(stages) - count, lr=lr, backbone_lr_mult=1.0, bn_policy="frozen")
    head, model.head = model.head, nn.Identity()
    try:
        plan.apply(model)
        labelled = dataclasses.replace(
            dataset, splits={**dataset.splits, "train": dataset.split("train") + dataset.split("valid")}
        )
        inputs = build_inputs(
            source,
            model,
            labelled,
            preprocessing,
            architecture=architecture,
            trainable_from=plan.trainable_from,
            augment=False,
            views=0,
            seed=seed,
            batch_size=batch_size,
            workers=workers,
            cache=cache,
            cache_dir=cache_dir,
            progress=progress,
            device=runtime.device,
        )
        for parameter in model.head.parameters():
            parameter.requires_grad_(False)
        state = fit(
            model,
            ContrastivePairs(),
            plan,
            inputs.train,
            inputs.evaluation["valid"],
            epochs=epochs,
            patience=epochs,
            start=inputs.start,
            callbacks=[ProgressBars(progress)] if progress is not None else [],
            runtime=runtime,
        )
    finally:
        model.head = head
    history = [{**record, "phase": "contrastive"} for record in state.history]
    return Tuned(count, history, history[state.best_epoch - 1])
