"""Deep CORAL (Sun & Saenko 2016): make the covariance of source and target features alike."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from graft.adaptation.methods.base import Method, ramp


def coral_distance(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared Frobenius distance between the two feature covariances, over 4 d^2 as in the paper."""
    width = source.shape[1]
    return (torch.cov(source.T) - torch.cov(target.T)).pow(2).sum() / (4 * width * width)


@dataclass(frozen=True)
class Coral(Method):
    def alignment(self, source_features, target_features, target_logits, modules, progress):
        if len(source_features) < 2 or len(target_features) < 2:
            return source_features.new_zeros(())
        # the paper's 4 d^2 makes the term tiny next to cross-entropy: scaled so strength 1 matters
        return ramp(progress) * 10.0 * coral_distance(source_features, target_features)


CORAL = Coral("coral", "source and target feature covariances matched", uses_target=True, default_strength=1.0)
