"""graft: transfer learning from pretrained networks, fast on a CPU and offline.

    import graft
    graft.classify(["coffee.jpg"])                          # the ImageNet classifier as is
    summary = graft.train("data/", "runs/signs", mode="finetune")
    model = graft.load("runs/signs")
    model.predict(["sign.jpg"]); graft.evaluate("runs/signs", "data/")

Names are imported on first use, so ``import graft`` is cheap and the ``graft`` command can set
up the process (see ``graft.perf``) before torch loads.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "DEFAULT_BACKBONE": "graft.api",
    "check": "graft.api",
    "classify": "graft.api",
    "evaluate": "graft.api",
    "export": "graft.api",
    "load": "graft.api",
    "predict": "graft.api",
    "resume": "graft.api",
    "train": "graft.api",
    "pretrain": "graft.api",
    "curve": "graft.api",
    "adapt": "graft.api",
    "train_multitask": "graft.api",
    "create_backbone": "graft.image.backbones",
    "list_backbones": "graft.image.backbones",
    "FreezePlan": "graft.core.freeze",
    "GraftError": "graft.errors",
    "ConfigError": "graft.errors",
    "DataError": "graft.errors",
    "BackboneError": "graft.errors",
    "RunFolderError": "graft.errors",
    "TrainingError": "graft.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'graft' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
