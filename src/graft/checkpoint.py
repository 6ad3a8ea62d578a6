"""Epoch checkpoints: everything needed to continue a killed run exactly where it stopped.

One safetensors file, written atomically after every epoch: the current weights, the best weights
so far, the optimizer's tensors and torch's random state; its metadata holds the rest as JSON (the
loop's position and history, the optimizer's hyper-parameters, the schedule, Python's and NumPy's
random state). One file means the parts can never come from different epochs. Nothing is pickled.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from graft.errors import RunFolderError
from graft.fileio import atomic_save_tensors
from graft.model import TransferModel
from graft.reproducibility import restore_rng_state, rng_state
from graft.training import FitState

FORMAT = "graft-checkpoint-1"


@dataclass
class Checkpoint:
    """What a checkpoint gives back (the model's weights are already loaded into it)."""

    position: dict[str, Any]
    best_state: dict[str, torch.Tensor] | None
    optimizer_state: dict[str, Any]
    scheduler_state: dict[str, Any]
    extra: dict[str, torch.Tensor]


def save_checkpoint(path: str | os.PathLike, state: FitState) -> None:
    """Write a single-task loop's ``state`` (after an epoch) with the process's random state, atomically."""
    write_checkpoint(path, state.model, state.best_state, state.optimizer, state.scheduler, state.position())


def write_checkpoint(path: str | os.PathLike, model: torch.nn.Module, best_state: dict[str, torch.Tensor] | None, optimizer: torch.optim.Optimizer,
                     scheduler: Any, position: dict[str, Any], extra: dict[str, torch.Tensor] | None = None) -> None:
    """Write any training loop's state atomically: weights, best weights, optimizer, schedule, random state,
    the loop's JSON-able ``position`` and ``extra`` tensors (e.g. learned loss weights, a loader's generator)."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"best.{k}": v for k, v in (best_state or {}).items()})
    tensors.update({f"extra.{k}": v for k, v in (extra or {}).items()})
    optimizer_state = optimizer.state_dict()
    plain_state: dict[str, dict[str, Any]] = {}
    for param_id, entries in optimizer_state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{param_id}.{name}"] = value
            else:
                plain_state.setdefault(str(param_id), {})[name] = value
    randomness = rng_state()
    tensors["rng.torch"] = randomness.pop("torch")
    metadata = {
        "format": FORMAT,
        "position": position,
        "optimizer": {"param_groups": optimizer_state["param_groups"], "plain_state": plain_state, "param_ids": sorted(optimizer_state["state"])},
        "scheduler": scheduler.state_dict(),
        "rng": randomness,
    }
    atomic_save_tensors(path, tensors, {"graft": json.dumps(metadata)})


def load_checkpoint(path: str | os.PathLike, model: TransferModel) -> tuple[FitState, dict, dict]:
    """Read a single-task checkpoint into ``model``; restore the random state. Returns the state and the optimizer's and scheduler's states."""
    checkpoint = read_checkpoint(path, model)
    state = FitState.from_position(model, checkpoint.position, checkpoint.best_state)
    return state, checkpoint.optimizer_state, checkpoint.scheduler_state


def read_checkpoint(path: str | os.PathLike, model: torch.nn.Module) -> Checkpoint:
    """Load the weights of a checkpoint into ``model`` and restore the process's random state from it."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = json.loads(handle.metadata()["graft"])
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        if metadata.get("format") != FORMAT:
            raise ValueError(f"unknown checkpoint format {metadata.get('format')!r}")
    except Exception as error:
        raise RunFolderError(f"checkpoint '{path}' is damaged or not a graft checkpoint: {error}",
                             hint="start the run again without --resume") from None

    def section(prefix: str) -> dict[str, torch.Tensor]:
        return {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}

    try:
        model.load_state_dict(section("model."), strict=True)
    except RuntimeError as error:
        raise RunFolderError(f"checkpoint '{path}' does not match the run's model: {str(error).splitlines()[0]}") from None
    optimizer_meta = metadata["optimizer"]
    optimizer_state: dict[int, dict[str, Any]] = {}
    for param_id in optimizer_meta["param_ids"]:
        entries = dict(optimizer_meta["plain_state"].get(str(param_id), {}))
        entries.update(section(f"optimizer.{param_id}."))
        optimizer_state[int(param_id)] = entries
    restore_rng_state({**metadata["rng"], "torch": tensors["rng.torch"]})
    return Checkpoint(position=metadata["position"], best_state=section("best.") or None,
                      optimizer_state={"state": optimizer_state, "param_groups": optimizer_meta["param_groups"]},
                      scheduler_state=metadata["scheduler"], extra=section("extra."))
