"""A BERT-family encoder as a transfer model: the embeddings, then one stage per transformer layer, and
mean pooling over the tokens (what sentence encoders such as all-MiniLM-L6-v2 are trained with).

Between stages a batch travels as one tensor ``(batch, tokens, hidden + 1)``: the hidden states with
the attention mask as the last channel. One tensor is what the core's stages, freeze plan and
activation cache handle, so a cached row at a freeze boundary carries its mask with it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from graft.core.model import TransferModel


def trimmed(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` and ``mask`` cut to the batch's longest text (texts are padded on the right). Not while an
    export traces the model: a traced length would be a constant, so the exported graph takes the
    padded length (the padding's result is the same, see the tests)."""
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return x, mask
    length = max(1, int(mask.sum(1).max()))
    return x[:, :length], mask[:, :length]


def with_mask(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.cat([hidden, mask.unsqueeze(-1).to(hidden.dtype)], dim=-1)


class Embeddings(nn.Module):
    """Token ids and mask ``(batch, 2, tokens)`` to hidden states with the mask."""

    def __init__(self, embeddings: nn.Module):
        super().__init__()
        self.embeddings = embeddings

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        ids, mask = trimmed(tokens[:, 0], tokens[:, 1])
        return with_mask(self.embeddings(input_ids=ids), mask)


class EncoderLayer(nn.Module):
    """One transformer layer on hidden states with the mask."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, mask = trimmed(x[..., :-1], x[..., -1])
        additive = (1.0 - mask)[:, None, None, :] * torch.finfo(hidden.dtype).min
        out = self.layer(hidden.contiguous(), attention_mask=additive.to(hidden.dtype))
        return with_mask(out[0] if isinstance(out, tuple) else out, mask)


class MeanPool(nn.Module):
    """The mean of the hidden states over the text's tokens (padding excluded)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, mask = x[..., :-1], x[..., -1:]
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def wrap_encoder(encoder: nn.Module, make_head: Callable[[int], nn.Module]) -> TransferModel:
    """The encoder's stages (``embeddings``, ``layer0`` ...) with mean pooling and the head ``make_head(hidden)``."""
    stages: OrderedDict[str, nn.Module] = OrderedDict(embeddings=Embeddings(encoder.embeddings))
    for index, layer in enumerate(encoder.encoder.layer):
        stages[f"layer{index}"] = EncoderLayer(layer)
    hidden = int(encoder.config.hidden_size)
    return TransferModel(stages, make_head(hidden), hidden, pool=MeanPool())
