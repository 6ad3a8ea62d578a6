"""The text frozen pass: tokenise, run the frozen stages in batches of texts of similar length (a
batch costs its longest text), and hand the rows back in the caller's order, padded to the run's
``max_length`` so every cached row has one shape."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from graft.console import progress_task
from graft.core.model import TransferModel
from graft.text.preprocessing import TextPreprocessing

FORWARD_BATCH = 32
# Texts sorted by length together: long enough that batches are even, short enough that a chunk's rows
# (up to 512 x max_length x hidden floats) stay small.
SORT_CHUNK = 512


def padded(rows: np.ndarray, length: int) -> np.ndarray:
    """Token rows ``(batch, tokens, channels)`` padded with zeros (mask 0) to ``length`` tokens."""
    if rows.ndim != 3 or rows.shape[1] == length:
        return rows
    out = np.zeros((rows.shape[0], length, rows.shape[2]), dtype=rows.dtype)
    out[:, : rows.shape[1]] = rows
    return out


def frozen_pass(
    model: TransferModel,
    items: Sequence[tuple[str, Any]],
    stop: int,
    preprocessing: TextPreprocessing,
    *,
    device: torch.device | None = None,
    progress: Any = None,
    description: str = "frozen stages",
) -> Iterator[np.ndarray]:
    """Activations of stages ``[0, stop)`` (pooled features past the last stage) for the texts ``items``, in order."""
    prefix = model.prefix(stop).eval()
    texts = [text for text, _ in items]
    with progress_task(progress, description, len(texts)) as advance:
        for begin in range(0, len(texts), SORT_CHUNK):
            tokens = preprocessing.encode(texts[begin : begin + SORT_CHUNK])
            order = torch.argsort(tokens[:, 1].sum(1), stable=True)
            rows: np.ndarray | None = None
            for start in range(0, len(order), FORWARD_BATCH):
                chosen = order[start : start + FORWARD_BATCH]
                batch = tokens[chosen]
                with torch.inference_mode():
                    out = prefix(batch if device is None else batch.to(device)).float().cpu().numpy()
                out = padded(out, preprocessing.max_length)
                if rows is None:
                    rows = np.empty((len(order), *out.shape[1:]), dtype=np.float32)
                rows[chosen.numpy()] = out
                advance(len(chosen))
            yield rows
