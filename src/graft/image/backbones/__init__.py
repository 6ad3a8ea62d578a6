"""Pretrained backbones: a registry of offline built-ins, plus any timm model by name or weight file."""

from graft.image.backbones import efficientnet_lite, mobilenet, small  # noqa: F401  (registers the built-ins)
from graft.image.backbones.loading import Backbone, LoadReport, create_backbone, read_state_dict, stage_names
from graft.image.backbones.registry import BackboneSpec, PackagedWeights, get_spec, list_backbones
from graft.image.backbones.stages import split_into_stages

__all__ = [
    "Backbone",
    "BackboneSpec",
    "LoadReport",
    "PackagedWeights",
    "create_backbone",
    "get_spec",
    "list_backbones",
    "read_state_dict",
    "split_into_stages",
    "stage_names",
]
