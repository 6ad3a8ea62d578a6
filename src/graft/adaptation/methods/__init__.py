"""Unsupervised domain adaptation methods, one small module each, looked up by name.

A method says whether BatchNorm statistics are re-estimated per domain (AdaBN), whether target rows
take part in training, its default strength, any modules of its own (DANN's domain discriminator), and
the alignment term added to the source cross-entropy. The loop, the head and the data are shared."""

from __future__ import annotations

import dataclasses

from graft.adaptation.methods.base import Method
from graft.core.registry import Registry
from graft.errors import ConfigError

METHODS = Registry(
    "adaptation method",
    ConfigError,
    {
        "source-only": "graft.adaptation.methods.source_only:SOURCE_ONLY",
        "adabn": "graft.adaptation.methods.adabn:ADABN",
        "coral": "graft.adaptation.methods.coral:CORAL",
        "dann": "graft.adaptation.methods.dann:DANN",
        "mcc": "graft.adaptation.methods.mcc:MCC",
    },
)


COMBINED = "adabn+"  # "adabn+mcc": a training method on per-domain BatchNorm statistics


def method_named(name: str) -> Method:
    """The method ``name``; ``adabn+NAME`` is NAME with AdaBN's per-domain statistics under it."""
    if name.startswith(COMBINED):
        method = METHODS.get(name[len(COMBINED) :])
        return dataclasses.replace(method, name=name, target_bn=True, summary=f"{method.summary}, on AdaBN statistics")
    return METHODS.get(name)


__all__ = ["METHODS", "Method", "method_named"]
