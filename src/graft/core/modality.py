"""The seam between the core and a kind of input (images today; text and audio plug in the same way).

The core never imports an image library: everything that depends on what an example *is* goes
through a :class:`Modality`, looked up by name in a small registry (``config.json`` records the
run's modality). A modality bundles three things:

- a **backbone adapter**: loads a pretrained network (with its serialisable preprocessing and a
  load report), cuts it into stages with the pooling to a feature vector
  (:class:`~graft.core.model.TransferModel`), and knows an example input;
- a **data source**: scans a location into a :class:`~graft.core.dataset.Dataset` (files, labels,
  what was skipped and why), checks it, and expands user inputs for prediction;
- **inputs**: a torch dataset of ``(example, target)`` for the loop (augmented or not, seeded per
  example), and the *frozen pass*: the activations of the frozen stages for a list of items, batch by
  batch, which the activation cache (:mod:`graft.core.cache`) stores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from graft.core.dataset import Dataset
from graft.core.registry import Registry
from graft.errors import ConfigError, RunFolderError


class Modality(Protocol):
    name: str
    augmentation_recipe: str  # identifies the augmentation; part of the cache key of augmented views

    # backbone adapter
    def load_backbone(self, name: str, *, weights: str | None = None, pretrained: bool = True) -> Any:
        """``.model`` (nn.Module), ``.preprocessing`` (``to_dict()``), ``.report`` (``.architecture``,
        ``to_dict()``)."""

    def transfer_model(
        self, backbone: nn.Module, make_head: Callable[[int], nn.Module], input_size: int | None
    ) -> nn.Module:
        """The backbone's stages and pooling with the head ``make_head(num_features)``."""

    def preprocessing(self, saved: dict[str, Any]) -> Any:
        """Preprocessing from its ``to_dict()``."""

    def with_input_size(self, preprocessing: Any, size: int) -> Any: ...

    def example_input(self, preprocessing: Any, batch: int = 1) -> Any: ...

    # data source
    def scan(self, location: str, *, valid_fraction: float, seed: int) -> Dataset: ...

    def scan_for_evaluation(
        self, location: str, classes: Sequence[str]
    ) -> tuple[list[tuple[str, int]], list[dict[str, str]], str]:
        """Labelled items to evaluate on (a test/ split if there is one), skipped files, and where they came from."""

    def expand(self, inputs: Sequence[str]) -> list[str]:
        """Files and folders given to ``predict`` as a list of example files."""

    def unreadable(self, paths: Sequence[str]) -> dict[str, str]:
        """The files among ``paths`` that cannot be used, with the reason (``predict`` reports them and
        predicts the rest)."""

    # inputs
    def examples(
        self,
        items: Sequence[tuple[str, Any]],
        preprocessing: Any,
        *,
        augment: bool,
        seed: int | None = None,
        keys: Sequence[int] | None = None,
    ) -> torch.utils.data.Dataset:
        """``(example, target)`` per item, indexed by position or by ``(epoch, position)`` keys; augmented
        (seeded from ``(seed, epoch, key)``) when ``augment``."""

    def frozen_pass(
        self,
        model: nn.Module,
        items: Sequence[tuple[str, Any]],
        stop: int,
        preprocessing: Any,
        *,
        round_: int | None,
        seed: int | None,
        keys: Sequence[int] | None,
        workers: int | None,
        device: torch.device | None,
        progress: Any,
        description: str,
    ) -> Iterator[np.ndarray]:
        """Activations of stages ``[0, stop)`` for ``items`` in order, batch by batch: the clean view, or
        augmented view ``round_``."""

    def thumbnail(self, path: str) -> str | None:
        """A small picture of one example for the report, as a ``data:`` URI (None when there is none)."""

    # evidence for the advisor
    def probe(self, loaded: Any, items: Sequence[tuple[str, int]], batch_size: int = 16) -> Any:
        """One pass over ``items`` through the pretrained network: a :class:`graft.core.advisor.Probe`."""

    def claims(self, data: str | None, backbone: str) -> bool:
        """Whether a new run on ``data`` with ``backbone`` is of this modality (asked in registration order)."""


# Modalities, most specific first: a new modality registers before the image modality, which claims
# whatever no other one does.
MODALITIES = Registry("modality", ConfigError, {"image": "graft.image.modality:IMAGE"})
DEFAULT = "image"  # runs written before modalities were recorded


def register_modality(name: str, where: str) -> None:
    """Add a modality ("module:object"), asked before those already registered."""
    MODALITIES.register(name, where, first=True)


def modality(name: str = DEFAULT) -> Modality:
    """The modality registered as ``name``."""
    return MODALITIES.get(name)


def modality_of(saved: dict[str, Any]) -> Modality:
    """The modality a run was trained with (its ``config.json``)."""
    name = str(saved.get("modality", DEFAULT))
    try:
        return modality(name)
    except ConfigError as error:
        raise RunFolderError(f"the run was trained with {error.message}", hint=error.hint) from None


def modality_for(data: str | None, backbone: str) -> Modality:
    """The first registered modality that claims a new run on ``data`` with ``backbone``."""
    for name in MODALITIES.names():
        chosen = modality(name)
        if chosen.claims(data, backbone):
            return chosen
    raise ConfigError(f"no modality can train on '{data}' with backbone '{backbone}'")
