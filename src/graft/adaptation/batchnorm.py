"""AdaBN's step: BatchNorm statistics of the frozen stages re-estimated on one domain's examples.

The statistics are the exact averages over (a seeded sample of) the domain. They are kept beside the
activation cache, keyed by everything that determines them (the stages' weights, the preprocessing,
the sampled examples' bytes, the versions of the libraries that compute them), so another run on the
same domain skips the pass; and saved in the run folder, so a resumed run uses the very same ones and
finds its cached rows again."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from graft.console import progress_task
from graft.core.cache import library_versions, weights_digest
from graft.core.inputs import default_workers, make_loader
from graft.core.model import TransferModel
from graft.errors import ConfigError
from graft.fileio import atomic_save_tensors, load_tensors

# Examples a domain's statistics are estimated from: means and variances settle long before this
SAMPLE = 1024


def batchnorms(model: TransferModel, stop: int) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of stages ``[0, stop)``, by their name in ``model``."""
    names = model.stage_names[:stop]
    return {
        f"stages.{stage}.{name}": module
        for stage in names
        for name, module in model.stages[stage].named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
    }


def domain_statistics(
    model: TransferModel,
    modality: Any,
    items: Sequence[tuple[str, int]],
    digests: Sequence[str],
    preprocessing: Any,
    *,
    stop: int,
    seed: int,
    cache_root: Path | None = None,
    batch_size: int = 32,
    progress=None,
    description: str = "BatchNorm statistics",
) -> dict[str, torch.Tensor]:
    """Running means and variances of the BatchNorm layers of stages ``[0, stop)`` over ``items``
    (at most :data:`SAMPLE`, drawn with ``seed``; ``digests``: their content hashes), as a state-dict
    fragment of ``model``; read from ``cache_root`` when an earlier run computed them."""
    layers = batchnorms(model, stop)
    if not layers:
        raise ConfigError(
            "AdaBN re-estimates BatchNorm statistics, and the frozen part of this backbone has no BatchNorm layer",
            hint="pick --method coral, dann or mcc",
        )
    chosen = sorted(np.random.default_rng(seed).permutation(len(items))[:SAMPLE])
    key = json.dumps(
        {
            "weights": weights_digest(list(model.stages.values())[:stop]),
            "stop": stop,
            "preprocessing": preprocessing.to_dict(),
            "examples": sorted(digests[i] for i in chosen),
            "computed_by": library_versions(modality.frozen_libraries),
        },
        sort_keys=True,
    )
    kept = (
        Path(cache_root) / f"batchnorm-{hashlib.sha256(key.encode()).hexdigest()[:32]}.safetensors"
        if cache_root
        else None
    )
    if kept is not None and kept.is_file():
        return load_tensors(kept)
    estimator = copy.deepcopy(model).eval()
    copies = batchnorms(estimator, stop)
    for layer in copies.values():
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average: every batch counts the same
        layer.train()
    loader = make_loader(
        modality.examples([items[i] for i in chosen], preprocessing, augment=False), batch_size, default_workers()
    )
    prefix = estimator.prefix(stop)
    with torch.no_grad(), progress_task(progress, description, len(chosen)) as advance:
        for inputs, _ in loader:
            prefix(inputs)
            advance(len(inputs))
    statistics = {
        f"{name}.{buffer}": getattr(layer, buffer).detach().cpu().clone()
        for name, layer in copies.items()
        for buffer in ("running_mean", "running_var", "num_batches_tracked")
    }
    if kept is not None:
        atomic_save_tensors(kept, statistics)
    return statistics


def with_statistics(model: TransferModel, statistics: dict[str, torch.Tensor]) -> TransferModel:
    """A copy of ``model`` whose BatchNorm buffers are ``statistics``."""
    copied = copy.deepcopy(model)
    load_statistics(copied, statistics)
    return copied


def load_statistics(model: nn.Module, statistics: dict[str, torch.Tensor]) -> None:
    """Put ``statistics`` into ``model``'s BatchNorm buffers (in place)."""
    missing = set(statistics) - set(model.state_dict())
    if missing:
        raise ValueError(f"statistics for layers the model lacks: {sorted(missing)[:3]}")
    model.load_state_dict(statistics, strict=False)
