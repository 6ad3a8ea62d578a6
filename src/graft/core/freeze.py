"""The freeze plan: which stages of the backbone are frozen, which train, and at what learning rate.

A plan is data (a frozen dataclass that round-trips to JSON), printed as a table before training,
saved in the run and restored exactly on resume. Stages ``[0, trainable_from)`` are frozen, weights
*and* BatchNorm statistics; the rest train at ``lr * backbone_lr_mult``; the new head trains at ``lr``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from torch import nn

from graft.core.model import TransferModel
from graft.errors import ConfigError

BN_POLICIES = ("train", "frozen")


@dataclass(frozen=True)
class FreezePlan:
    stages: tuple[str, ...]
    trainable_from: int
    lr: float
    backbone_lr_mult: float = 0.1
    bn_policy: str = "train"

    def __post_init__(self):
        if not 0 <= self.trainable_from <= len(self.stages):
            raise ConfigError(f"trainable_from must be in [0, {len(self.stages)}]; got {self.trainable_from}")
        if self.bn_policy not in BN_POLICIES:
            raise ConfigError(f"--bn must be one of {', '.join(BN_POLICIES)}; got '{self.bn_policy}'")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be positive; got {self.lr}")

    @property
    def frozen_stages(self) -> tuple[str, ...]:
        return self.stages[: self.trainable_from]

    @property
    def trainable_stages(self) -> tuple[str, ...]:
        return self.stages[self.trainable_from :]

    @property
    def is_feature_extractor(self) -> bool:
        return self.trainable_from == len(self.stages)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["stages"] = list(self.stages)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FreezePlan:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"freeze plan has unknown keys {sorted(unknown)}")
        return cls(**{**data, "stages": tuple(data["stages"])})

    def apply(self, model: TransferModel) -> None:
        """Set ``requires_grad``: frozen stages off, trainable stages and the head on."""
        if tuple(model.stage_names) != self.stages:
            raise ConfigError(f"freeze plan stages {list(self.stages)} do not match the model's {model.stage_names}")
        for index, stage in enumerate(model.stages.values()):
            stage.requires_grad_(index >= self.trainable_from)
        model.head.requires_grad_(True)

    def train_mode(self, model: TransferModel) -> None:
        """Put the model in training mode, keeping frozen stages (and, by policy, all backbone BN) in eval mode."""
        model.train()
        for index, stage in enumerate(model.stages.values()):
            if index < self.trainable_from:
                stage.eval()
            elif self.bn_policy == "frozen":
                for module in stage.modules():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm):
                        module.eval()

    def param_groups(self, model: TransferModel, weight_decay: float = 0.0) -> list[dict[str, Any]]:
        """Optimizer parameter groups: the head at ``lr``, trainable stages at ``lr * backbone_lr_mult``."""
        backbone = [p for stage in self.trainable_stages for p in model.stages[stage].parameters() if p.requires_grad]
        groups = [
            {"name": "head", "params": list(model.head.parameters()), "lr": self.lr, "weight_decay": weight_decay}
        ]
        if backbone:
            groups.append(
                {
                    "name": "backbone",
                    "params": backbone,
                    "lr": self.lr * self.backbone_lr_mult,
                    "weight_decay": weight_decay,
                }
            )
        return groups

    def rows(self, model: TransferModel) -> list[dict[str, Any]]:
        """One row per stage plus the head: name, frozen or trains, parameter count, learning rate."""
        table = []
        for index, (name, stage) in enumerate(model.stages.items()):
            trains = index >= self.trainable_from
            table.append(
                {
                    "part": name,
                    "status": "trains" if trains else "frozen",
                    "params": sum(p.numel() for p in stage.parameters()),
                    "lr": self.lr * self.backbone_lr_mult if trains else 0.0,
                    "batchnorm": ("updates" if self.bn_policy == "train" else "frozen") if trains else "frozen",
                }
            )
        table.append(
            {
                "part": "head (new)",
                "status": "trains",
                "params": sum(p.numel() for p in model.head.parameters()),
                "lr": self.lr,
                "batchnorm": "updates",
            }
        )
        return table


def parameter_counts(model: nn.Module) -> dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "frozen": total - trainable, "total": total}
