"""What the adapted model trains on: cached rows of source *and* target examples, in mixed batches.

The frozen prefix runs once per example (:func:`graft.core.inputs.frozen_rows`, the activation cache):
source rows through the prefix with the source's BatchNorm statistics, target rows with the target's
when the method re-estimates them (AdaBN), both with the pretrained ones otherwise. A training batch
is ``batch_size`` source rows (with labels) and as many target rows (label -1), as in TLlib's and the
papers' loops; an epoch is one pass over the source;
the validation loader holds the source's validation rows and every target row, labels hidden. Over several
processes (:mod:`graft.core.distributed`) each rank trains on its share of each domain's rows of every batch
and computes the frozen rows its share of the cache lacks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from graft.adaptation.objective import UNLABELLED
from graft.core.cache import ActivationKey, CachedRows
from graft.core.dataset import Dataset
from graft.core.distributed import SINGLE, Processes
from graft.core.inputs import frozen_key, frozen_rows, make_loader, whole_batches
from graft.core.model import TransferModel
from graft.errors import ConfigError

SOURCE, TARGET = 0, 1


class DomainRows(torch.utils.data.Dataset):
    """Whole batches of ``(domain, index)`` keys read from the source's and the target's cached rows."""

    def __init__(self, source: CachedRows, labels: Sequence[int], target: CachedRows):
        self.parts = {SOURCE: source, TARGET: target}
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.parts[SOURCE]) + len(self.parts[TARGET])

    def __getitem__(self, keys: Sequence[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        domains = np.array([domain for domain, _ in keys])
        indices = np.array([index for _, index in keys])
        batch, labels = None, torch.full((len(keys),), UNLABELLED, dtype=torch.long)
        for domain in (SOURCE, TARGET):
            positions = np.flatnonzero(domains == domain)
            if not len(positions):
                continue
            rows = self.parts[domain].rows(indices[positions].tolist())
            if batch is None:
                batch = rows.new_empty((len(keys), *rows.shape[1:]))
            batch[positions] = rows
            if domain == SOURCE:
                labels[positions] = self.labels[indices[positions]]
        return batch, labels


class MixedBatches(torch.utils.data.Sampler):
    """An epoch of batches: each ``batch_size`` source rows (a seeded permutation per epoch) and as many
    target rows (drawn the same way, cycling), or source rows alone when ``with_target`` is off. With
    ``processes``, this rank's share of each domain's rows of every batch (every rank draws the same batches)."""

    def __init__(
        self, sources: int, targets: int, batch_size: int, seed: int, with_target: bool, processes: Processes = SINGLE
    ):
        self.sources, self.targets, self.seed, self.with_target = sources, targets, seed, with_target
        self.processes = processes
        self.per_domain = batch_size
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.sources // self.per_domain)

    def __iter__(self):
        rng = np.random.default_rng([self.seed % 2**32, self.epoch, 17])
        order = rng.permutation(self.sources)
        if self.with_target:
            needed = len(self) * self.per_domain
            target = np.concatenate([rng.permutation(self.targets) for _ in range(-(-needed // self.targets))])
        for batch in range(len(self)):
            rows = slice(batch * self.per_domain, (batch + 1) * self.per_domain)
            keys = self.processes.part([(SOURCE, int(i)) for i in order[rows]])
            if self.with_target:
                keys += self.processes.part([(TARGET, int(i)) for i in target[rows]])
            yield keys


class FixedBatches(torch.utils.data.Sampler):
    """``keys`` in order, ``batch_size`` at a time."""

    def __init__(self, keys: list[tuple[int, int]], batch_size: int):
        self.keys, self.batch_size = keys, batch_size

    def __len__(self) -> int:
        return -(-len(self.keys) // self.batch_size)

    def __iter__(self):
        for start in range(0, len(self.keys), self.batch_size):
            yield self.keys[start : start + self.batch_size]


@dataclass
class DomainLoaders:
    """The loaders of one normalisation (pretrained statistics, or AdaBN's per-domain ones)."""

    train: torch.utils.data.DataLoader
    evaluation: dict[str, torch.utils.data.DataLoader]  # valid (source valid + target, unlabelled), test, target


def domain_loaders(
    rows: dict[str, CachedRows],
    labels: dict[str, list[int]],
    *,
    batch_size: int,
    seed: int,
    with_target: bool,
    processes: Processes = SINGLE,
) -> DomainLoaders:
    """Loaders over the cached ``rows`` of the source splits (train, valid[, test]) and of the ``target``
    (whose ``labels``, when known, are only in the ``target`` loader: it is for reporting). ``processes``:
    the training batches are split between them; every rank evaluates on whole splits."""

    def loader(source: str, sampler) -> torch.utils.data.DataLoader:
        return make_loader(
            DomainRows(rows[source], labels[source], rows["target"]), None, sampler=sampler, collate_fn=whole_batches
        )

    targets = len(rows["target"])
    train = loader("train", MixedBatches(len(rows["train"]), targets, batch_size, seed, with_target, processes))
    valid_keys = [(SOURCE, i) for i in range(len(rows["valid"]))] + [(TARGET, i) for i in range(targets)]
    evaluation = {"valid": loader("valid", FixedBatches(valid_keys, batch_size))}
    if "test" in rows:
        evaluation["test"] = loader("test", FixedBatches([(SOURCE, i) for i in range(len(rows["test"]))], batch_size))
    # the target as a "source" part, so its labels (when the folder has them) come back for the report
    evaluation["target"] = loader("target", FixedBatches([(SOURCE, i) for i in range(targets)], batch_size))
    return DomainLoaders(train, evaluation)


def require_cached_prefix(stop: int, cache: bool, what: str) -> None:
    """Both kinds here train on cached rows of a frozen prefix: refuse a plan or config without one."""
    if stop == 0 or not cache:
        raise ConfigError(
            f"{what} trains on cached rows of the frozen stages: it needs the cache and at least one frozen stage",
            hint="drop --no-cache, or --unfreeze fewer stages",
        )


@dataclass
class CleanRows:
    """The clean (unaugmented) cached rows of a dataset's examples at a stage boundary, through the
    activation cache; remembers the namespaces it used, which pruning the cache afterwards must keep."""

    modality: Any
    dataset: Dataset
    preprocessing: Any
    architecture: str
    root: Path
    workers: int | None
    progress: Any
    device: torch.device | None
    processes: Processes = SINGLE  # a run over several: the rows the cache lacks are shared between them
    used: set[str] = field(default_factory=set)

    def __call__(
        self, trunk: TransferModel, stop: int, parts: dict[str, list], label: str = ""
    ) -> dict[str, CachedRows]:
        """Rows of stages ``[0, stop)`` of ``trunk`` for each named list of ``(path, label)`` items."""
        base = frozen_key(self.modality, trunk, stop, self.architecture, self.preprocessing)
        self.used.add(ActivationKey(**base, view="clean").namespace())
        return {
            name: frozen_rows(
                self.modality,
                trunk,
                items,
                [self.dataset.digest(path) for path, _ in items],
                self.preprocessing,
                base=base,
                root=self.root,
                workers=self.workers,
                progress=self.progress,
                description=f"frozen stages{f' ({label})' if label else ''}, {name}",
                device=self.device,
                source=str(self.dataset.root),
                processes=self.processes,
            )
            for name, items in parts.items()
        }

    def description(self, model: TransferModel, stop: int, shape, **extra: Any) -> dict[str, Any]:
        """What ``Inputs.description`` says of rows from this cache at ``stop``."""
        return {
            "cached": True,
            "cache_dir": str(self.root),
            "augment": False,
            "views": 0,
            "activation_shape": list(shape),
            "start_stage": model.stage_names[stop] if stop < len(model.stages) else "pooled features",
            **extra,
        }
