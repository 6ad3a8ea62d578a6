"""Multi-task models: hard sharing (one trunk, a head per task) and soft sharing (a tower per task, tied by L2).

Both are built from :class:`graft.core.model.TransferModel` towers, so a :class:`graft.core.freeze.FreezePlan`
applies to each tower unchanged and ``forward(x, start=k)`` accepts activations cached at a frozen
boundary. ``forward`` returns ``{task name: output}``: logits for a classification task, one
standardised value for a regression task.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from graft.core.heads import make_head
from graft.core.model import TransferModel
from graft.errors import ConfigError
from graft.multitask.tasks import Task

SHARING = ("hard", "soft")


class MultiHead(nn.Module):
    """One head per task on the same pooled features; returns a dict of outputs."""

    def __init__(self, tasks: Sequence[Task], kind: str, in_features: int, dropout: float = 0.2):
        super().__init__()
        self.heads = nn.ModuleDict(
            {
                task.name: make_head(
                    kind, in_features, len(task.classes) if task.is_classification else 1, dropout=dropout
                )
                for task in tasks
            }
        )

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: head(features) for name, head in self.heads.items()}


class MultiTaskModel(nn.Module):
    """``towers``: ``{"shared": tower}`` (hard sharing) or ``{task: tower}`` (soft sharing)."""

    def __init__(self, towers: OrderedDict[str, TransferModel], sharing: str):
        super().__init__()
        self.towers = nn.ModuleDict(towers)
        self.sharing = sharing

    @property
    def stage_names(self) -> list[str]:
        return next(iter(self.towers.values())).stage_names

    def trunks(self) -> dict[str, TransferModel]:
        """The parts a freeze plan applies to: every tower."""
        return dict(self.towers.items())

    def forward(self, x: torch.Tensor, start: int = 0) -> dict[str, torch.Tensor]:
        outputs: dict[str, torch.Tensor] = {}
        for tower in self.towers.values():
            outputs.update(tower(x, start=start))
        return outputs

    def tower_distance(self, trainable_only: bool = True) -> torch.Tensor:
        """Sum over pairs of towers of the squared L2 distance between corresponding backbone parameters.

        0 for hard sharing (one tower). The soft-sharing penalty is ``tie * tower_distance()``.
        """
        towers = list(self.towers.values())
        total = next(self.parameters()).new_zeros(())
        if len(towers) < 2:
            return total
        named = [dict(tower.stages.named_parameters()) for tower in towers]
        for name, first in named[0].items():
            if trainable_only and not first.requires_grad:
                continue
            params = [n[name] for n in named]
            for i in range(len(params)):
                for j in range(i + 1, len(params)):
                    total = total + (params[i] - params[j]).pow(2).sum()
        return total

    def tied_parameter_count(self) -> int:
        first = next(iter(self.towers.values()))
        return sum(p.numel() for p in first.stages.parameters() if p.requires_grad) if len(self.towers) > 1 else 0


def build_multitask_model(
    make_backbone,
    tasks: Sequence[Task],
    sharing: str,
    head: str = "linear",
    dropout: float = 0.2,
    input_size: int | None = None,
    modality=None,
) -> MultiTaskModel:
    """``make_backbone()`` returns a fresh backbone with the pretrained weights (called once per tower);
    each tower is built like a single-task model, by ``modality`` (default: images)."""
    if modality is None:
        from graft.core.modality import modality as registered

        modality = registered("image")
    if sharing not in SHARING:
        raise ConfigError(f"--sharing must be one of {', '.join(SHARING)}; got '{sharing}'")
    if len(tasks) < 1:
        raise ConfigError("multi-task training needs at least one task")
    groups = [("shared", list(tasks))] if sharing == "hard" else [(task.name, [task]) for task in tasks]
    towers = OrderedDict()
    for name, members in groups:
        towers[name] = modality.transfer_model(
            make_backbone(), lambda features, members=members: MultiHead(members, head, features, dropout), input_size
        )
    return MultiTaskModel(towers, sharing)
