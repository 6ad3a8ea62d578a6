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
    augmentation_recipe: str | None  # identifies the augmentation (cache key of augmented views); None: none
    default_backbone: str  # what a run uses when no --backbone is given
    refuses: dict[str, str]  # options (RunConfig fields) that do not apply to this modality, with why
    int8_operators: tuple[str, ...] | None  # ONNX operator types ``export --int8`` quantises; None: all it can
    # the distributions whose code decodes examples and runs the frozen stages: their versions key cached rows
    frozen_libraries: tuple[str, ...]

    def refuse(self, config: Any) -> None:
        """Refuse (:class:`ConfigError`) what this modality cannot do with ``config`` beyond the options in
        ``refuses`` (e.g. a mode its backbone cannot train in)."""

    def defaults(self, mode: str) -> dict[str, Any]:
        """RunConfig values this modality's runs in ``mode`` use when the user gives none (e.g. text: lr)."""

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

    def fit_preprocessing(self, preprocessing: Any, dataset: Dataset) -> Any:
        """The preprocessing fitted to the data a run trains on (e.g. text: the longest token sequence)."""

    def with_input_size(self, preprocessing: Any, size: int) -> Any: ...

    def example_input(self, preprocessing: Any, batch: int = 1) -> Any: ...

    # data source
    def scan(
        self, location: str, *, valid_fraction: float, seed: int, columns: tuple[str | None, str | None] = (None, None)
    ) -> Dataset:
        """The labelled data at ``location``; ``columns``: a table's text and label columns (passed only when
        the user names them, and only to modalities that read tables)."""

    def dataset_from_manifest(self, manifest: dict[str, Any]) -> Dataset:
        """The data a run was trained on, from its ``manifest.json`` (for ``--resume``), or a clear error."""

    def missing(self, items: Sequence[str]) -> list[str]:
        """The examples among a run's recorded ``items`` that are gone (files deleted since)."""

    def scan_for_evaluation(
        self, location: str, classes: Sequence[str]
    ) -> tuple[list[tuple[str, int]], list[dict[str, str]], str]:
        """Labelled items to evaluate on (a test/ split if there is one), skipped files, and where they came from."""

    def expand(self, inputs: Sequence[str]) -> list[str]:
        """Files and folders given to ``predict`` as a list of example files."""

    def unreadable(self, paths: Sequence[str], remember: bool = False) -> dict[str, str]:
        """The files among ``paths`` that cannot be used, with the reason (``predict`` reports them and
        predicts the rest). ``remember``: the paths are a data folder's (an adaptation target), whose
        verdicts are kept so an unchanged file is not read again (images: :class:`CheckedFiles`)."""

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

    def pass_notes(self) -> dict[str, Any] | None:
        """What the frozen passes since the last call did their own way (images decoded during start-up, the
        runtime that ran them), for the run's metrics; None when there is nothing to say. Clears them."""

    def inference_form(self, model: Any, example: Any) -> Any:
        """A copy of ``model`` giving the same outputs (up to rounding) in the form torch runs fastest when
        nothing trains (``graft serve`` from a run folder)."""

    def export_form(self, model: Any, example: Any) -> Any:
        """A copy of ``model`` giving the same outputs (up to rounding) in the form best exported (ONNX)."""

    def onnx_graph(self, model: Any, example: Any, names: list[str], export: Callable[..., bytes]) -> bytes:
        """``model`` (input ``input``, outputs ``names``) as ONNX bytes; ``export(module, example, names)`` is
        torch's exporter as graft calls it (a modality whose model torch cannot trace composes its own).
        Nodes whose names begin with :data:`FLOAT_ONLY` stay in float when the file is quantised to int8."""

    # evidence for the advisor
    def probe(self, loaded: Any, items: Sequence[tuple[str, int]], batch_size: int = 16) -> Any:
        """One pass over ``items`` through the pretrained network: a :class:`graft.core.advisor.Probe`."""

    def claims(self, data: str | None, backbone: str) -> bool:
        """Whether a new run on ``data`` with ``backbone`` is of this modality (asked in registration order)."""


class ModalityDefaults:
    """What most modalities do for the optional parts of :class:`Modality` (inherit it and override what
    differs): no refused options or own defaults, preprocessing as the backbone gives it, examples that
    are files (a run's manifest lists them, and one is gone when its file is), no thumbnail, exported as is,
    every operator the quantiser knows quantised to int8."""

    refuses: dict[str, str] = {}
    int8_operators: tuple[str, ...] | None = None
    frozen_libraries: tuple[str, ...] = ("torch",)

    def refuse(self, config: Any) -> None:
        return None

    def defaults(self, mode: str) -> dict[str, Any]:
        return {}

    def fit_preprocessing(self, preprocessing: Any, dataset: Dataset) -> Any:
        return preprocessing

    def dataset_from_manifest(self, manifest: dict[str, Any]) -> Dataset:
        return Dataset.from_manifest(manifest)

    def missing(self, items: Sequence[str]) -> list[str]:
        from pathlib import Path

        return [path for path in items if not Path(path).is_file()]

    def thumbnail(self, path: str) -> str | None:
        return None

    def pass_notes(self) -> dict[str, Any] | None:
        return None

    def inference_form(self, model: Any, example: Any) -> Any:
        """``model`` as torch runs it fastest for inference (same outputs up to rounding); itself by default."""
        return model

    def export_form(self, model: Any, example: Any) -> Any:
        """``model`` as it is best exported (same outputs up to rounding); the model itself by default."""
        return model

    def onnx_graph(self, model: Any, example: Any, names: list[str], export: Callable[..., bytes]) -> bytes:
        """The export form of ``model`` through torch's exporter."""
        return export(self.export_form(model, example), example, names)


FLOAT_ONLY = "float_only/"  # prefix of ONNX node names ``export --int8`` leaves in float


# Modalities, most specific first: a new modality registers before the image modality, which claims
# whatever no other one does.
MODALITIES = Registry(
    "modality",
    ConfigError,
    {
        "audio": "graft.audio.modality:AUDIO",
        "text": "graft.text.modality:TEXT",
        "image": "graft.image.modality:IMAGE",
    },
)
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


def modality_for(data: str | None, backbone: str | None) -> Modality:
    """The first registered modality that claims a new run on ``data`` with ``backbone``."""
    for name in MODALITIES.names():
        chosen = modality(name)
        if chosen.claims(data, backbone):
            return chosen
    raise ConfigError(f"no modality can train on '{data}' with backbone '{backbone}'")


def refuse_inapplicable(config: Any, chosen: Modality) -> None:
    """Refuse the options ``config`` gives that mean nothing for ``chosen`` (an option is never ignored)."""
    from graft.core.config import FIELDS, describe

    for name, why in chosen.refuses.items():
        value = getattr(config, name)
        if value is not None and value is not False:
            raise ConfigError(
                f"{describe(name)} does not apply to {chosen.name} data: {why}", hint=f"drop {FIELDS[name].flag}"
            )
    chosen.refuse(config)
