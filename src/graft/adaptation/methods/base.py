"""What every adaptation method supplies (see :mod:`graft.adaptation.methods`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


def ramp(progress: float) -> float:
    """Ganin & Lempitsky's schedule for an alignment weight: 0 at the start of training, close to 1 by
    a third of the way, so the first steps learn the classes before the domains are pulled together."""
    return 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0


@dataclass(frozen=True)
class Method:
    """A method with no alignment term: train on the source alone."""

    name: str
    summary: str
    target_bn: bool = False  # BatchNorm statistics re-estimated on each domain (AdaBN)
    uses_target: bool = False  # target rows are part of each training batch
    default_strength: float = 0.0

    def modules(self, features: int) -> nn.Module | None:
        """The method's own trainable modules (saved with the objective), for ``features``-wide features."""
        return None

    def alignment(
        self,
        source_features: torch.Tensor,
        target_features: torch.Tensor,
        target_logits: torch.Tensor,
        modules: nn.Module | None,
        progress: float,
    ) -> torch.Tensor:
        """The unscaled alignment loss of one batch (``progress``: the fraction of training done)."""
        return source_features.new_zeros(())
