"""DANN (Ganin & Lempitsky 2015), the course notes' method: a domain discriminator learns to tell source
features from target ones, and a gradient-reversal layer trains the features to make it fail, so what
distinguishes the domains is suppressed."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from graft.adaptation.methods.base import Method, ramp


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.scale * grad, None


def reverse_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity forward; the gradient multiplied by ``-scale`` backward."""
    return _ReverseGradient.apply(x, scale)


def discriminator(features: int, hidden: int = 256) -> nn.Module:
    """The domain discriminator: features to one logit (source = 1)."""
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Dropout(0.5), nn.Linear(hidden, 1))


@dataclass(frozen=True)
class Dann(Method):
    def modules(self, features: int) -> nn.Module:
        return discriminator(features)

    def alignment(self, source_features, target_features, target_logits, modules, progress):
        features = torch.cat([source_features, target_features])
        domains = torch.cat([features.new_ones(len(source_features)), features.new_zeros(len(target_features))])
        logits = modules(reverse_gradient(features, ramp(progress))).squeeze(1)
        return nn.functional.binary_cross_entropy_with_logits(logits, domains)


DANN = Dann(
    "dann", "domain-adversarial: a discriminator made weak by gradient reversal", uses_target=True, default_strength=1.0
)
