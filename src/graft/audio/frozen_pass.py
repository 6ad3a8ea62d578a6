"""The audio frozen pass: clips read in a thread pool (decoding releases the GIL), the frozen stages run
on batches of clips, rows handed back in the caller's order."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from graft.audio.backbones import AudioPreprocessing
from graft.console import progress_task
from graft.core.model import TransferModel

FORWARD_BATCH = 32  # clips: 512 embedding windows per ONNX Runtime call


def frozen_pass(
    model: TransferModel,
    items: Sequence[tuple[str, Any]],
    stop: int,
    preprocessing: AudioPreprocessing,
    *,
    progress: Any = None,
    description: str = "frozen stages",
) -> Iterator[np.ndarray]:
    """Activations of stages ``[0, stop)`` (pooled features past the last stage) for the clips ``items``, in order."""
    prefix = model.prefix(stop).eval()
    paths = [path for path, _ in items]
    with progress_task(progress, description, len(paths)) as advance, ThreadPoolExecutor(max_workers=2) as pool:
        for start in range(0, len(paths), FORWARD_BATCH):
            clips = np.stack(list(pool.map(preprocessing.load, paths[start : start + FORWARD_BATCH])))
            with torch.inference_mode():
                rows = prefix(torch.from_numpy(clips)).float().numpy()
            advance(len(clips))
            yield rows
