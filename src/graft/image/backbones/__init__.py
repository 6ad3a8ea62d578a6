"""Pretrained backbones: a registry of offline built-ins, plus any timm model by name or weight file.

Two sides: the specs (:mod:`.registry`, with the families' modules that register them) are data and import
neither torch nor timm; the networks (:mod:`.loading`, :mod:`.stages`) import both, which takes seconds, so
they load when first asked for (``from graft.image.backbones import create_backbone`` works as usual).
"""

from __future__ import annotations

import importlib
from typing import Any

from graft.image.backbones import efficientnet_lite, mobilenet  # noqa: F401  (registers the built-ins)
from graft.image.backbones.registry import BackboneSpec, PackagedWeights, get_spec, list_backbones

_NETWORK_SIDE = {
    "Backbone": "loading",
    "LoadReport": "loading",
    "create_backbone": "loading",
    "read_state_dict": "loading",
    "stage_names": "loading",
    "split_into_stages": "stages",
}

__all__ = ["BackboneSpec", "PackagedWeights", "get_spec", "list_backbones", *_NETWORK_SIDE]


def __getattr__(name: str) -> Any:
    module = _NETWORK_SIDE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
