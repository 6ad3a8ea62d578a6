"""Minimum Class Confusion (Jin et al., ECCV 2020): on target batches, penalise how often the classifier
spreads probability over two classes at once (weighted towards confident examples). Needs no
discriminator and held up across the Office, VisDA and DomainNet benchmarks."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from graft.adaptation.methods.base import Method

TEMPERATURE = 2.5  # the paper's


def class_confusion(logits: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """The MCC loss of a batch of target logits."""
    probs = torch.softmax(logits / temperature, dim=1)
    rows, classes = probs.shape
    entropy = -(probs * torch.log(probs + 1e-5)).sum(1)
    weights = 1 + torch.exp(-entropy)
    weights = rows * weights / weights.sum()
    confusion = (probs * weights[:, None]).T @ probs
    confusion = confusion / confusion.sum(1, keepdim=True)
    return (confusion.sum() - confusion.trace()) / classes


@dataclass(frozen=True)
class Mcc(Method):
    def alignment(self, source_features, target_features, target_logits, modules, progress):
        return class_confusion(target_logits)


MCC = Mcc("mcc", "minimum class confusion on the target (Jin et al. 2020)", uses_target=True, default_strength=0.3)
