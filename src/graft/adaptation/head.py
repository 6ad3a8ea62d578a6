"""The adapted classifier's head: a bottleneck (where domains are aligned) and a linear classifier.

Alignment acts on the bottleneck's features, as in DANN, CDAN and MCC's reference code; in training
the head returns ``(logits, features)`` so the objective can align them, in evaluation logits alone,
so prediction, evaluation and ONNX export see an ordinary classifier."""

from __future__ import annotations

import torch
from torch import nn

BOTTLENECK = 256


class AdaptationHead(nn.Module):
    def __init__(self, in_features: int, classes: int, width: int = BOTTLENECK, dropout: float = 0.5):
        super().__init__()
        self.bottleneck = nn.Sequential(
            nn.Linear(in_features, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Dropout(dropout)
        )
        self.classifier = nn.Linear(width, classes)
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        features = self.bottleneck(x)
        logits = self.classifier(features)
        return (logits, features) if self.training else logits

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The bottleneck features (the adapted representation) of pooled backbone features."""
        return self.bottleneck(x)
