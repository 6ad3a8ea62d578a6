"""Small networks to pre-train on a CPU (``graft pretrain --arch``): a plain CNN and a small residual
network, registered with timm like any of its models, for 32 px inputs (MNIST-sized images).

They have no pretrained weights: a source model is made with ``graft pretrain``, and that run then *is*
a backbone (``graft train TARGET --backbone RUN``). Their children are named as timm's ResNet's (stem
``conv1``/``bn1``/``act1``/``maxpool``, then ``layer1`` to ``layer4``), so graft cuts them into the same
five stages (:func:`graft.image.backbones.stages.split_into_stages`) and a freeze plan counts them alike.
"""

from __future__ import annotations

import torch
from timm.models import register_model
from timm.models.resnet import BasicBlock
from torch import nn

from graft.errors import BackboneError

INPUT_SIZE = 32
PRETRAINED_CFG = {
    "input_size": (3, INPUT_SIZE, INPUT_SIZE),
    "interpolation": "bilinear",
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "crop_pct": 1.0,
}


def conv_bn_relu(inputs: int, outputs: int) -> list[nn.Module]:
    return [nn.Conv2d(inputs, outputs, 3, padding=1, bias=False), nn.BatchNorm2d(outputs), nn.ReLU(inplace=True)]


class SmallNetwork(nn.Module):
    """A stem at full resolution, then four stages halving it (32 -> 16 -> 8 -> 4 -> 2 px), then a classifier."""

    def __init__(self, layers: list[nn.Module], width: int = 32, num_classes: int = 1000, in_chans: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity()
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.num_features = 8 * width
        self.global_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        self.pretrained_cfg = dict(PRETRAINED_CFG)
        self.default_cfg = self.pretrained_cfg

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str = "avg") -> None:
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()


def _refuse_pretrained(name: str, pretrained: bool) -> None:
    if pretrained:
        raise BackboneError(
            f"'{name}' has no pretrained weights: it is an architecture to pre-train",
            hint=f"graft pretrain DATA --arch {name} makes a source model, then --backbone RUN; or --from-scratch",
        )


@register_model
def graft_cnn(pretrained: bool = False, num_classes: int = 1000, in_chans: int = 3, **_) -> SmallNetwork:
    _refuse_pretrained("graft_cnn", pretrained)
    width = 32

    def block(inputs: int, outputs: int) -> nn.Sequential:
        return nn.Sequential(*conv_bn_relu(inputs, outputs), nn.MaxPool2d(2))

    layers = [block(width, width), block(width, 2 * width), block(2 * width, 4 * width), block(4 * width, 8 * width)]
    return SmallNetwork(layers, width, num_classes, in_chans)


@register_model
def graft_resnet(pretrained: bool = False, num_classes: int = 1000, in_chans: int = 3, **_) -> SmallNetwork:
    _refuse_pretrained("graft_resnet", pretrained)
    width = 32

    def block(inputs: int, outputs: int) -> nn.Module:
        shortcut = nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride=2, bias=False), nn.BatchNorm2d(outputs))
        return BasicBlock(inputs, outputs, stride=2, downsample=shortcut)

    layers = [block(width, width), block(width, 2 * width), block(2 * width, 4 * width), block(4 * width, 8 * width)]
    return SmallNetwork(layers, width, num_classes, in_chans)
