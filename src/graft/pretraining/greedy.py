"""Greedy supervised layer-wise pre-training, as the course notes describe it: train a shallow network
(the first stage and a classifier), freeze it, add the next stage with a new classifier and train only
those, and so on to the last stage; the run's ordinary fit then fine-tunes the whole network, which the
notes call essential.

Each step is the core loop on a truncated model (:class:`graft.core.model.TransferModel` over the first
``k`` stages, sharing the network's modules) under a freeze plan that trains stage ``k`` alone: the same
loop, objective and loaders as every run, no second training loop. The frozen prefix is recomputed each
batch (without gradients) rather than cached: for a small network on tens of thousands of images the
early stages' activations would be several gigabytes, and recomputing them is cheap.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from graft.core.callbacks import ProgressBars
from graft.core.fit import fit
from graft.core.freeze import FreezePlan
from graft.core.heads import make_head
from graft.core.inputs import build_inputs
from graft.core.model import TransferModel
from graft.core.objectives import Classification
from graft.errors import ConfigError

GRID = 4  # a stage's classifier reads its feature map pooled to 4 x 4, not to 1 x 1: an early stage's features
# are local edges and blobs, which say little about the class once averaged over the whole image


def greedy_layerwise(
    model: TransferModel,
    source,
    dataset,
    preprocessing,
    *,
    architecture: str,
    epochs: int,
    lr: float,
    head: str,
    seed: int,
    batch_size: int,
    patience: int,
    workers: int | None,
    runtime,
    progress,
) -> list[dict[str, Any]]:
    """Train ``model``'s stages one at a time, each with its own classifier (then dropped); returns one
    record per stage: its name, the best validation accuracy of the network so far, epochs and seconds."""
    names = model.stage_names
    classes = len(dataset.classes)
    example = source.example_input(preprocessing).to(runtime.device)
    records = []
    for depth in range(1, len(names) + 1):
        began = time.perf_counter()
        stages = OrderedDict((name, model.stages[name]) for name in names[:depth])
        pool = nn.Sequential(nn.AdaptiveAvgPool2d(GRID), nn.Flatten(1))
        with torch.no_grad():
            was_training = model.training
            model.eval()
            width = pool(model.forward_stages(example, stop=depth))
            model.train(was_training)
        features = int(width.shape[1])
        shallow = TransferModel(stages, make_head(head, features, classes), features, pool, model.layout)
        shallow.to(runtime.device)
        plan = FreezePlan(stages=tuple(names[:depth]), trainable_from=depth - 1, lr=lr, backbone_lr_mult=1.0)
        inputs = build_inputs(
            source,
            shallow,
            dataset,
            preprocessing,
            architecture=architecture,
            trainable_from=depth - 1,
            augment=False,
            views=0,
            seed=seed,
            batch_size=batch_size,
            workers=workers,
            cache=False,
            cache_dir=None,
            progress=progress,
            device=runtime.device,
        )
        state = fit(
            shallow,
            Classification().to(runtime.device),
            plan,
            inputs.train,
            inputs.evaluation["valid"],
            epochs=epochs,
            patience=patience,
            callbacks=[ProgressBars(progress)] if progress is not None else [],
            runtime=runtime,
        )
        best = state.history[state.best_epoch - 1] if state.history else {}
        records.append(
            {
                "stage": names[depth - 1],
                "depth": depth,
                "features": features,
                "valid_accuracy": best.get("valid_accuracy"),
                "best_epoch": state.best_epoch,
                "epochs": len(state.history),
                "seconds": round(time.perf_counter() - began, 2),
                "history": state.history,
            }
        )
    for parameter in model.parameters():  # the run's own plan decides what trains next
        parameter.requires_grad_(True)
    return records


def require_greedy_plan(trainable_from: int, stages: list[str]) -> None:
    """Greedy pre-training ends with the whole network fine-tuned: the run's plan must train every stage."""
    if trainable_from != 0:
        raise ConfigError(
            f"--greedy-epochs ends by fine-tuning the whole network; --unfreeze must be {len(stages)} "
            f"(every stage: {', '.join(stages)})",
            hint=f"--unfreeze {len(stages)}, or graft pretrain --greedy (which sets it)",
        )
