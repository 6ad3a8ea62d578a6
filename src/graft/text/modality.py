"""Text as a modality (:class:`graft.core.modality.Modality`): sentence encoders, tables and folders of
labelled texts, and the frozen pass. An example is its text (see :mod:`graft.text.data`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from graft.core.config import HEAD_ONLY_MODES
from graft.core.modality import ModalityDefaults
from graft.text.data import TextDataset, expand_inputs, is_text_data, scan_for_evaluation, scan_texts
from graft.text.encoders import DEFAULT_TEXT_BACKBONE, TextBackbone, is_text_backbone, load_encoder
from graft.text.model import wrap_encoder
from graft.text.preprocessing import TextPreprocessing


class Tokens(torch.utils.data.Dataset):
    """``(token ids and mask, label)`` per text, tokenised once up front."""

    def __init__(self, items: Sequence[tuple[str, Any]], preprocessing: TextPreprocessing):
        self.tokens = preprocessing.encode([text for text, _ in items]) if items else torch.zeros(0, 2, 1)
        # one value per task: a tensor, so a batch's targets stack as rows (a list would collate into columns)
        self.labels = [
            torch.as_tensor(label, dtype=torch.float32) if isinstance(label, (list, tuple)) else label
            for _, label in items
        ]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.tokens[index], self.labels[index]


class TextModality(ModalityDefaults):
    name = "text"
    augmentation_recipe = None  # graft has no text augmentation (yet): training reads the clean texts
    frozen_libraries = ("torch", "transformers", "tokenizers")
    default_backbone = DEFAULT_TEXT_BACKBONE
    # Options that mean nothing for a sentence encoder: refused, not ignored.
    refuses = {
        "augment": "text has no augmentation in graft",
        "views": "text has no augmented views",
        "image_size": "is for images; a text run fits its token length to the data",
        "bn": "a transformer has LayerNorm, which has no batch statistics to freeze or update",
    }

    # Only the matrix products, as transformer int8 recipes do: quantising the inputs of LayerNorm, softmax
    # and the residual additions as well lost 5.3 points on SMS spam (97.4% -> 92.1%); matmuls alone: +0.2.
    int8_operators = ("MatMul", "Gemm")

    def defaults(self, mode: str) -> dict[str, Any]:
        """Measured on TREC-6 (BENCHMARKS.md): mean-pooled sentence embeddings are small numbers (0.18 a
        feature), so the head needs lr 1e-2 (1e-3: 79% after 10 epochs, 1e-2: 85% after 16); fine-tuned
        transformer layers want ~1e-4, the usual BERT range, hence a multiplier of 0.01, for 3 epochs
        (transformers' default: a fine-tuning epoch costs what a BERT layer costs, and 10 epochs of the top
        two layers on SMS spam took 4x a 2-epoch Trainer fine-tune of the whole encoder)."""
        if mode in HEAD_ONLY_MODES:
            return {"lr": 1e-2, "epochs": 20}
        return {"lr": 1e-2, "backbone_lr_mult": 0.01, "epochs": 3}

    def claims(self, data: str | None, backbone: str | None) -> bool:
        return is_text_backbone(backbone) or (backbone is None and is_text_data(data))

    def load_backbone(self, name: str, *, weights: str | None = None, pretrained: bool = True) -> TextBackbone:
        return load_encoder(name, weights=weights, pretrained=pretrained)

    def transfer_model(
        self, backbone: nn.Module, make_head: Callable[[int], nn.Module], input_size: int | None
    ) -> nn.Module:
        return wrap_encoder(backbone, make_head)

    def preprocessing(self, saved: dict[str, Any]) -> TextPreprocessing:
        return TextPreprocessing.from_dict(saved)

    def fit_preprocessing(self, preprocessing: TextPreprocessing, dataset: TextDataset) -> TextPreprocessing:
        return preprocessing.fitted([text for items in dataset.splits.values() for text, _ in items])

    def with_input_size(self, preprocessing: TextPreprocessing, size: int) -> TextPreprocessing:
        return dataclasses.replace(preprocessing, max_length=min(size, preprocessing.limit))

    def example_input(self, preprocessing: TextPreprocessing, batch: int = 1) -> torch.Tensor:
        return preprocessing.encode(["an example"] * batch)

    def scan(
        self, location: str, *, valid_fraction: float, seed: int, columns: tuple[str | None, str | None] = (None, None)
    ) -> TextDataset:
        return scan_texts(
            location, valid_fraction=valid_fraction, seed=seed, text_column=columns[0], label_column=columns[1]
        )

    def dataset_from_manifest(self, manifest: dict[str, Any]) -> TextDataset:
        return TextDataset.from_manifest(manifest)

    def missing(self, items: Sequence[str]) -> list[str]:
        return []  # a run's manifest holds its texts

    def scan_for_evaluation(self, location: str, classes: Sequence[str]):
        return scan_for_evaluation(location, classes)

    def expand(self, inputs: Sequence[str]) -> list[str]:
        return expand_inputs(inputs)

    def unreadable(self, paths: Sequence[str], remember: bool = False) -> dict[str, str]:
        return {text: "empty text" for text in paths if not text.strip()}

    def examples(self, items, preprocessing: TextPreprocessing, *, augment: bool, seed=None, keys=None) -> Tokens:
        if augment:
            raise ValueError("text has no augmentation")  # refused earlier (refuses): never reached by a user
        return Tokens(items, preprocessing)

    def frozen_pass(
        self, model, items, stop: int, preprocessing, *, round_, seed, keys, workers, device, progress, description
    ):
        from graft.text.frozen_pass import frozen_pass

        return frozen_pass(model, items, stop, preprocessing, device=device, progress=progress, description=description)

    def probe(self, loaded: TextBackbone, items, batch_size: int = 16):
        from graft.text.probing import probe

        return probe(loaded, items, batch_size=batch_size)


TEXT = TextModality()
