"""The transfer model: pretrained stages, pooling to a feature vector, and a new head.

``forward_features(x, start=k)`` runs the stages from ``k`` on, so a cached activation at a freeze
boundary can be fed straight into the trainable tail. The modality supplies the stages, the pooling
and how a tensor entering a stage should be laid out (images: channels-last); see
:meth:`graft.core.modality.Modality.transfer_model`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn


class TransferModel(nn.Module):
    """``stages`` (named, in order), ``pool`` (a stage's output to ``(batch, num_features)``), ``head``.
    ``layout``, if given, prepares a tensor before it enters a stage (a plain function, not saved)."""

    def __init__(
        self,
        stages: OrderedDict[str, nn.Module],
        head: nn.Module,
        num_features: int,
        pool: nn.Module | None = None,
        layout: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        super().__init__()
        self.stages = nn.ModuleDict(stages)
        self.pool = pool if pool is not None else nn.Identity()
        self.head = head
        self.num_features = num_features
        self.layout = layout

    @property
    def stage_names(self) -> list[str]:
        return list(self.stages.keys())

    def trunks(self) -> dict[str, TransferModel]:
        """The parts a freeze plan applies to (the training loop's view of a model): this one."""
        return {"": self}

    def forward_stages(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Run stages ``start`` to ``stop`` (exclusive; default all), input to feature map."""
        return _run_stages(list(self.stages.values())[start:stop], x, self.layout)

    def forward_features(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Pooled feature vector, ``(batch, num_features)``."""
        return _pooled(self.pool, self.forward_stages(x, start))

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        return self.head(self.forward_features(x, start))

    def prefix(self, stop: int) -> nn.Module:
        """Stages ``[0, stop)`` as one module sharing this model's layers (pooled features when ``stop``
        covers every stage): the part a frozen pass computes."""
        return _Prefix(list(self.stages.values())[:stop], self.pool if stop >= len(self.stages) else None, self.layout)


class _Prefix(nn.Module):
    def __init__(
        self, stages: list[nn.Module], pool: nn.Module | None, layout: Callable[[torch.Tensor], torch.Tensor] | None
    ):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.pool = pool
        self.layout = layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _run_stages(self.stages, x, self.layout)
        return x if self.pool is None else _pooled(self.pool, x)


def _run_stages(stages, x: torch.Tensor, layout: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
    if layout is not None:
        x = layout(x)
    for stage in stages:
        x = stage(x)
    return x


def _pooled(pool: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Feature maps pooled to vectors (a stage may already end in pooled features)."""
    return pool(x) if x.dim() > 2 else x
