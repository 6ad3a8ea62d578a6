"""Where a backbone's weights came from (:class:`LoadReport`, saved with every run) and reading a
weight file safely, for any modality: safetensors, or a ``.pth`` state dict through
``torch.load(weights_only=True)``; never an arbitrary pickle."""

from __future__ import annotations

import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from graft.errors import BackboneError
from graft.fileio import load_tensors


@dataclass
class LoadReport:
    """Where a backbone's weights came from and how they fitted."""

    backbone: str
    architecture: str
    source: str
    weights_file: str | None = None
    sha256: str | None = None
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weight file safely: safetensors, or a ``.pth`` state dict through ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"weights file '{path}' does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_tensors(path)
        except Exception as error:  # safetensors raises its own error types for bad headers
            raise BackboneError(f"weights file '{path}' is not a valid safetensors file: {error}") from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise BackboneError(
            f"refused to load '{path}': it needs to unpickle arbitrary Python objects, which could run code",
            hint=f"convert it to safetensors where you trust it; detail: {str(error).splitlines()[0]}",
        ) from None
    except Exception as error:
        raise BackboneError(f"could not read weights file '{path}': {error}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise BackboneError(f"weights file '{path}' does not hold a state dict of tensors")
    return loaded
