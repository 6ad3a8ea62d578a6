"""Image backbones as transfer models: a timm network's stages, global average pooling, channels-last
layout and static "same" padding for the input size graft feeds; and timm's BatchNorm-with-activation
layer taught to normalise over every process of a run (:mod:`graft.core.whole_batch_norm`)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from timm.layers.norm_act import BatchNormAct2d
from torch import nn

from graft.core.heads import make_head
from graft.core.model import TransferModel
from graft.core.whole_batch_norm import WholeBatchStatistics, register_whole_batch_norm
from graft.image.backbones.stages import split_into_stages
from graft.image.backbones.static_padding import make_padding_static


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """oneDNN's convolutions are much faster on channels-last tensors on a CPU (see BENCHMARKS.md)."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def wrap_backbone(
    backbone: nn.Module, make_head_for: Callable[[int], nn.Module], input_size: int | None = None
) -> TransferModel:
    """A timm model's feature stages with the head ``make_head_for(num_features)``, channels-last (the
    ImageNet classifier is dropped). With ``input_size`` (the size preprocessing produces),
    TensorFlow-style dynamic padding is made static for that size (the same windows, no padded copy;
    see :mod:`graft.image.backbones.static_padding`)."""
    if input_size is not None:
        make_padding_static(backbone, input_size)
    num_features = int(backbone.num_features)
    pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    model = TransferModel(
        split_into_stages(backbone), make_head_for(num_features), num_features, pool=pool, layout=channels_last
    )
    return model.to(memory_format=torch.channels_last)


def build_transfer_model(
    backbone: nn.Module, head: str, num_classes: int, dropout: float = 0.2, input_size: int | None = None
) -> TransferModel:
    """:func:`wrap_backbone` with a new ``head`` ("linear" or "mlp") for ``num_classes``."""
    return wrap_backbone(backbone, lambda features: make_head(head, features, num_classes, dropout=dropout), input_size)


class WholeBatchNormAct2d(WholeBatchStatistics, BatchNormAct2d):
    """timm's BatchNorm + dropout + activation, normalising with the whole batch over several processes."""

    def after_normalising(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(x))


register_whole_batch_norm(BatchNormAct2d, WholeBatchNormAct2d)
