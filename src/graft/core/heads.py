"""New classifier heads that sit on pooled backbone features."""

from __future__ import annotations

from torch import nn

from graft.errors import ConfigError

HEAD_KINDS = ("linear", "mlp")


def make_head(kind: str, in_features: int, num_outputs: int, dropout: float = 0.2, hidden: int = 256) -> nn.Module:
    """``linear``: dropout + one layer (a linear probe). ``mlp``: the textbook's Dense-ReLU-BatchNorm-Dropout-Dense."""
    if kind == "linear":
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, num_outputs))
    if kind == "mlp":
        return nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.ReLU(inplace=True),
            nn.BatchNorm1d(hidden),
            nn.Dropout(0.5),
            nn.Linear(hidden, num_outputs),
        )
    raise ConfigError(f"--head must be one of {', '.join(HEAD_KINDS)}; got '{kind}'")
