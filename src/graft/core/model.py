"""The transfer model: pretrained stages, global pooling, and a new head.

``forward_features(x, start=k)`` runs the stages from ``k`` on, so a cached activation at a freeze
boundary can be fed straight into the trainable tail.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch
from torch import nn


class TransferModel(nn.Module):
    def __init__(self, stages: "OrderedDict[str, nn.Module]", head: nn.Module, num_features: int):
        super().__init__()
        self.stages = nn.ModuleDict(stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.head = head
        self.num_features = num_features

    @property
    def stage_names(self) -> list[str]:
        return list(self.stages.keys())

    def trunks(self) -> dict[str, "TransferModel"]:
        """The parts a freeze plan applies to (the training loop's view of a model): this one."""
        return {"": self}

    def forward_stages(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Run stages ``start`` to ``stop`` (exclusive; default all), input to feature map."""
        return _run_stages(list(self.stages.values())[start:stop], x)

    def forward_features(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Pooled feature vector, ``(batch, num_features)``."""
        return _pooled(self.pool, self.forward_stages(x, start))

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        return self.head(self.forward_features(x, start))

    def prefix(self, stop: int) -> nn.Module:
        """Stages ``[0, stop)`` as one module sharing this model's layers (pooled features when ``stop``
        covers every stage): the part a frozen pass computes."""
        return _Prefix(list(self.stages.values())[:stop], self.pool if stop >= len(self.stages) else None)


class _Prefix(nn.Module):
    def __init__(self, stages: list[nn.Module], pool: nn.Module | None):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _run_stages(self.stages, x)
        return x if self.pool is None else _pooled(self.pool, x)


def _run_stages(stages, x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 4:  # oneDNN's convolutions are much faster on channels-last tensors on a CPU (see BENCHMARKS.md)
        x = x.contiguous(memory_format=torch.channels_last)
    for stage in stages:
        x = stage(x)
    return x


def _pooled(pool: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Feature maps pooled to vectors (a stage may already end in pooled features)."""
    return pool(x) if x.dim() == 4 else x


def build_transfer_model(backbone: nn.Module, head: str, num_classes: int, dropout: float = 0.2, input_size: int | None = None) -> TransferModel:
    """Wrap a timm model's feature stages with a new head for ``num_classes`` (the ImageNet classifier is dropped)."""
    from graft.core.heads import make_head

    return wrap_backbone(backbone, lambda features: make_head(head, features, num_classes, dropout=dropout), input_size)


def wrap_backbone(backbone: nn.Module, make_head_for: Callable[[int], nn.Module], input_size: int | None = None) -> TransferModel:
    """A timm model's feature stages with the head ``make_head_for(num_features)``, channels-last.

    With ``input_size`` (the size preprocessing produces), TensorFlow-style dynamic padding is made
    static for that size (the same windows, no padded copy; see ``graft.image.backbones.static_padding``).
    """
    from graft.image.backbones.stages import split_into_stages
    from graft.image.backbones.static_padding import make_padding_static

    if input_size is not None:
        make_padding_static(backbone, input_size)
    num_features = int(backbone.num_features)
    model = TransferModel(split_into_stages(backbone), make_head_for(num_features), num_features)
    return model.to(memory_format=torch.channels_last)
