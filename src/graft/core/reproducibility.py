"""Seeds, deterministic mode, and random state that can be saved and restored.

Randomness that touches data is a function of ``(seed, round, image)``, not of process state:
:class:`EpochSampler` shuffles each epoch from ``(seed, epoch)`` and :func:`item_seed` seeds each
image's augmentation from ``(seed, epoch or view, image)``. So the order and the augmented pixels
do not depend on the number of worker processes, and a run resumed after a crash replays exactly
what an uninterrupted run would have seen. The rest (dropout in the main process) is captured by
:func:`rng_state` into a checkpoint and put back by :func:`restore_rng_state`.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = False) -> torch.Generator:
    """Seed Python, NumPy and torch; return a seeded generator (for loaders that shuffle with one).
    ``deterministic`` also asks torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def item_seed(seed: int, round_: int, item: int) -> int:
    """A well-mixed 63-bit seed for one image in one epoch (or one cached view)."""
    return int(np.random.SeedSequence([seed % 2**63, round_ % 2**63, item % 2**64]).generate_state(1, np.uint64)[0]) & (
        2**63 - 1
    )


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with torch's and Python's global RNGs seeded, then put their old state back.

    timm's and torchvision's random transforms draw from the global generators; this makes one
    image's augmentation depend on ``seed`` alone without disturbing anyone else's stream.
    """
    python_state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)


@contextlib.contextmanager
def preserved_random_state() -> Iterator[None]:
    """Run a block that may reseed Python, NumPy and torch, then put all three states back (what follows
    draws exactly as if the block had not run)."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class EpochSampler(torch.utils.data.Sampler):
    """Yields ``(epoch, index)`` keys: a seeded permutation per epoch (or the plain order).

    The dataset receives the epoch with each index, so per-epoch augmentation needs no shared state
    between worker processes. The training loop calls :meth:`set_epoch` before each epoch. With
    ``processes`` (a run over several, :mod:`graft.core.distributed`) every process draws the same
    permutation and yields its share of each batch.
    """

    def __init__(
        self, size: int, seed: int, shuffle: bool = True, batch_size: int | None = None, processes: Any = None
    ):
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.batch_size = batch_size
        self.processes = processes if processes is not None and processes.distributed else None
        if self.processes is not None and batch_size is None:
            raise ValueError("a sampler shared between processes yields whole batches: give it a batch_size")
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return (
            self.size
            if self.batch_size is None
            else len(torch.utils.data.BatchSampler(range(self.size), self.batch_size, drop_last=False))
        )

    def __iter__(self):
        """Keys one by one, or with ``batch_size`` lists of them (the last one shorter): the batches a
        DataLoader of that batch size would form, for datasets that read a whole batch at once."""
        order = (
            np.random.default_rng([self.seed % 2**32, self.epoch]).permutation(self.size)
            if self.shuffle
            else range(self.size)
        )
        keys = [(self.epoch, int(index)) for index in order]
        if self.batch_size is None:
            return iter(keys)
        batches = torch.utils.data.BatchSampler(keys, self.batch_size, drop_last=False)
        return iter(batches) if self.processes is None else (self.processes.part(batch) for batch in batches)


def rng_state() -> dict[str, Any]:
    """The main process's random state as JSON-able data plus one tensor (torch's), for checkpoints."""
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(position), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])


def worker_init(worker_id: int) -> None:
    """Seed each DataLoader worker from torch's per-worker seed (only un-keyed randomness depends on it)."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
