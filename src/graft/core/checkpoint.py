"""Epoch checkpoints: everything needed to continue a killed run exactly where it stopped.

One safetensors file, written atomically after every epoch: the current weights, the best weights
so far, the objective's state (e.g. learned task weights), the optimizer's tensors and torch's
random state; its metadata holds the rest as JSON (the loop's position and history, the optimizer's
hyper-parameters, the schedule, Python's and NumPy's random state). One file means the parts can
never come from different epochs. Nothing is pickled. The format knows the one loop's
:class:`~graft.core.fit.FitState`, not any kind of run: every kind resumes the same way.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from graft.core.fit import FitState
from graft.core.objectives import Objective
from graft.core.reproducibility import restore_rng_state, rng_state
from graft.errors import RunFolderError
from graft.fileio import atomic_save_tensors

FORMAT = "graft-checkpoint-2"


def save_checkpoint(path: str | os.PathLike, state: FitState) -> None:
    """Write the loop's ``state`` (after an epoch) with the process's random state, atomically."""
    tensors = {f"model.{k}": v for k, v in state.model.state_dict().items()}
    tensors.update({f"best.{k}": v for k, v in (state.best_state or {}).items()})
    tensors.update({f"objective.{k}": v for k, v in state.objective.state_dict().items()})
    optimizer_state = state.optimizer.state_dict()
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
        "position": state.position(),
        "optimizer": {
            "param_groups": optimizer_state["param_groups"],
            "plain_state": plain_state,
            "param_ids": sorted(optimizer_state["state"]),
        },
        "scheduler": state.scheduler.state_dict(),
        "rng": randomness,
    }
    atomic_save_tensors(path, tensors, {"graft": json.dumps(metadata)})


def load_checkpoint(
    path: str | os.PathLike, model: torch.nn.Module, objective: Objective
) -> tuple[FitState, dict, dict]:
    """Load a checkpoint's weights into ``model`` and ``objective`` and restore the process's random state.
    Returns the loop's state and the optimizer's and scheduler's states, for ``fit(resume=...)``."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = json.loads(handle.metadata()["graft"])
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:
        raise RunFolderError(
            f"checkpoint '{path}' is damaged or not a graft checkpoint: {error}",
            hint="start the run again without --resume",
        ) from None
    if metadata.get("format") != FORMAT:
        raise RunFolderError(
            f"checkpoint '{path}' was written by another version of graft (format {metadata.get('format')!r}, this "
            f"one reads {FORMAT!r})",
            hint="start the run again with another --out",
        )

    def section(prefix: str) -> dict[str, torch.Tensor]:
        return {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}

    try:
        model.load_state_dict(section("model."), strict=True)
        objective.load_state_dict(section("objective."), strict=True)
        optimizer_meta = metadata["optimizer"]
        optimizer_state: dict[int, dict[str, Any]] = {}
        for param_id in optimizer_meta["param_ids"]:
            entries = dict(optimizer_meta["plain_state"].get(str(param_id), {}))
            entries.update(section(f"optimizer.{param_id}."))
            optimizer_state[int(param_id)] = entries
        state = FitState(model=model, objective=objective)
        state.restore(metadata["position"], section("best.") or None)
        restore_rng_state({**metadata["rng"], "torch": tensors["rng.torch"]})
    except (RuntimeError, KeyError, TypeError, ValueError, IndexError) as error:
        raise RunFolderError(
            f"checkpoint '{path}' does not match the run's model or is damaged: "
            f"{str(error).splitlines()[0] if str(error) else type(error).__name__}",
            hint="start the run again without --resume",
        ) from None
    return state, {"state": optimizer_state, "param_groups": optimizer_meta["param_groups"]}, metadata["scheduler"]
