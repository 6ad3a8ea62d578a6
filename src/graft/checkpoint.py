"""Epoch checkpoints: everything needed to continue a killed run exactly where it stopped.

One safetensors file, written atomically after every epoch: the current weights, the best weights
so far, the optimizer's tensors and torch's random state; its metadata holds the rest as JSON (the
loop's position and history, the optimizer's hyper-parameters, the schedule, Python's and NumPy's
random state). One file means the parts can never come from different epochs. Nothing is pickled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from graft.errors import RunFolderError
from graft.fileio import atomic_save_tensors
from graft.model import TransferModel
from graft.reproducibility import restore_rng_state, rng_state
from graft.training import FitState

CHECKPOINT = "checkpoint.safetensors"
FORMAT = "graft-checkpoint-1"


def save_checkpoint(path: str | os.PathLike, state: FitState) -> None:
    """Write ``state`` (after an epoch) with the process's random state, atomically."""
    tensors = {f"model.{k}": v for k, v in state.model.state_dict().items()}
    tensors.update({f"best.{k}": v for k, v in (state.best_state or {}).items()})
    optimizer = state.optimizer.state_dict()
    plain_state: dict[str, dict[str, Any]] = {}
    for param_id, entries in optimizer["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{param_id}.{name}"] = value
            else:
                plain_state.setdefault(str(param_id), {})[name] = value
    randomness = rng_state()
    tensors["rng.torch"] = randomness.pop("torch")
    metadata = {
        "format": FORMAT,
        "position": state.position(),
        "optimizer": {"param_groups": optimizer["param_groups"], "plain_state": plain_state, "param_ids": sorted(optimizer["state"])},
        "scheduler": state.scheduler.state_dict(),
        "rng": randomness,
    }
    atomic_save_tensors(path, tensors, {"graft": json.dumps(metadata)})


def load_checkpoint(path: str | os.PathLike, model: TransferModel) -> tuple[FitState, dict, dict]:
    """Read a checkpoint into ``model``; restore the random state. Returns the state and the optimizer's and scheduler's states."""
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
    state = FitState.from_position(model, metadata["position"], section("best.") or None)
    return state, {"state": optimizer_state, "param_groups": optimizer_meta["param_groups"]}, metadata["scheduler"]
