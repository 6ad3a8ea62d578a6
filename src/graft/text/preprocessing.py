"""How a text becomes the encoder's input: its tokenizer and the longest token sequence kept.

The encoder's first stage takes ``(batch, 2, max_length)`` int64: token ids and the attention mask,
padded on the right to ``max_length`` so examples batch (and cached rows have one shape); every stage
trims a batch to its longest text first, so the padding costs no compute. ``max_length`` is fitted
to the training texts (:meth:`TextPreprocessing.fitted`): short texts give short rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from typing import Any

import torch

DEFAULT_MAX_LENGTH = 128  # what all-MiniLM-L6-v2 was trained with
MIN_MAX_LENGTH = 8


@lru_cache(maxsize=4)
def _tokenizer(name: str):
    from transformers import AutoTokenizer
    from transformers.utils import logging

    from graft.text.encoders import location

    logging.set_verbosity_error()  # graft counts and reports texts longer than the encoder reads itself
    return AutoTokenizer.from_pretrained(location(name))


@dataclass(frozen=True)
class TextPreprocessing:
    tokenizer: str  # the encoder's name (resolved to its files by graft.text.encoders.location)
    max_length: int = DEFAULT_MAX_LENGTH
    limit: int = field(default=DEFAULT_MAX_LENGTH, compare=False)  # the encoder's own limit on max_length

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TextPreprocessing:
        return cls(
            tokenizer=str(data["tokenizer"]),
            max_length=int(data["max_length"]),
            limit=int(data.get("limit", data["max_length"])),
        )

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text, special tokens included, before truncation."""
        encoded = _tokenizer(self.tokenizer)(list(texts), add_special_tokens=True, truncation=False)["input_ids"]
        return [len(ids) for ids in encoded]

    def fitted(self, texts: Sequence[str]) -> TextPreprocessing:
        """``max_length`` cut to the longest of ``texts`` (rounded up to 8), never above the encoder's limit."""
        if not texts:
            return self
        longest = max(self.token_counts(texts))
        return replace(self, max_length=max(MIN_MAX_LENGTH, min(self.limit, -(-longest // 8) * 8)))

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """``(len(texts), 2, max_length)`` int64: token ids and attention mask."""
        encoded = _tokenizer(self.tokenizer)(
            list(texts), padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return torch.stack([encoded["input_ids"], encoded["attention_mask"]], dim=1)
