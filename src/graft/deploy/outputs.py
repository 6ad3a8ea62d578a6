"""What a user wants out of a trained run's model, the same in every place it is deployed (the ONNX file,
the served API): class probabilities, or values in a regression task's units, one named output per task."""

from __future__ import annotations

import torch
from torch import nn

from graft.core.runs import TrainedRun


class UserOutputs(nn.Module):
    """The run's model with what a user wants out of it: probabilities, or values in the task's units."""

    def __init__(self, trained: TrainedRun, start: int = 0):
        super().__init__()
        self.trained = trained
        self.model = trained.model
        self.tasks = getattr(trained, "tasks", None)
        self.scales = getattr(trained, "scales", {})
        self.start = start

    def from_stage(self, start: int) -> UserOutputs:
        """The same outputs computed from the input of stage ``start`` (a cached or separately run prefix)."""
        return UserOutputs(self.trained, start).eval()

    def forward(self, x: torch.Tensor):
        outputs = self.model(x) if self.start == 0 else self.model(x, start=self.start)
        if self.tasks is None:
            return torch.softmax(outputs, dim=1)
        result = []
        for task in self.tasks:
            value = outputs[task.name]
            if task.is_classification:
                result.append(torch.softmax(value, dim=1))
            else:
                scale = self.scales[task.name]
                result.append(value[:, 0] * scale.std + scale.mean)
        return tuple(result)


def output_names(trained: TrainedRun) -> list[str]:
    tasks = getattr(trained, "tasks", None)
    return ["probabilities"] if tasks is None else [task.name for task in tasks]


def output_labels(trained: TrainedRun) -> dict[str, list[str]]:
    """Each output's class names (empty for a regression task's values)."""
    tasks = getattr(trained, "tasks", None)
    return {"probabilities": list(trained.classes)} if tasks is None else {t.name: list(t.classes) for t in tasks}
