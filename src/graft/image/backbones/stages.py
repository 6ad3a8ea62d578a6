"""Cut a timm model into an ordered list of stages, the units a freeze plan works on.

The textbook freezes "the first N layers"; for modern CNNs the natural unit is a stage (a group of
blocks at one resolution). Running the stages in order gives the pooled-ready feature map, so the
frozen prefix can be computed once and cached (see ``graft.core.cache``).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


class _Features(nn.Module):
    """Fallback: a model's whole feature extractor as one stage, ending in pooled features."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


def split_into_stages(model: nn.Module) -> OrderedDict[str, nn.Module]:
    """Return the model's feature extractor as named stages, input to final feature map.

    Known families (timm's EfficientNet class, which also builds MobileNetV2/V3, and ResNet) are cut
    at every stage; any other model becomes one stage.
    """
    names = dict(model.named_children())
    if {"conv_stem", "bn1", "blocks", "conv_head", "bn2"} <= set(names):
        stages = OrderedDict(stem=nn.Sequential(model.conv_stem, model.bn1))
        for index, stage in enumerate(model.blocks):
            stages[f"stage{index}"] = stage
        stages["head_conv"] = nn.Sequential(model.conv_head, model.bn2)
        return stages
    if {"conv1", "bn1", "layer1", "layer4"} <= set(names):
        stages = OrderedDict(stem=nn.Sequential(model.conv1, model.bn1, model.act1, model.maxpool))
        for index in range(1, 5):
            stages[f"layer{index}"] = getattr(model, f"layer{index}")
        return stages
    return OrderedDict(features=_Features(model))
