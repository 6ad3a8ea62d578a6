"""Seeds and deterministic mode: the same command twice gives the same numbers on a CPU."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = False) -> torch.Generator:
    """Seed Python, NumPy and torch; return a generator for data shuffling.

    ``deterministic`` also asks torch for deterministic kernels and a single intra-op thread
    ordering where it matters, at some speed cost.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def worker_init(worker_id: int) -> None:
    """Seed each DataLoader worker from torch's per-worker seed (so augmentation is reproducible)."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
