"""One cheap look at target texts through a pretrained encoder, for ``--mode auto``.

A transformer normalises with LayerNorm, which keeps no statistics of the source data, so there is no
BatchNorm drift to measure. The probe collects what can be measured without source texts: the mean-
pooled features after every stage (LogME by depth, :mod:`graft.core.transferability`) and how well the
tokenizer's vocabulary covers the target (word pieces per word, unknown tokens), reported as evidence.
"""

from __future__ import annotations

import numpy as np
import torch

from graft.core.advisor import Probe
from graft.text.encoders import TextBackbone
from graft.text.model import MeanPool, wrap_encoder


def probe(backbone: TextBackbone, items: list[tuple[str, int]], batch_size: int = 16) -> Probe:
    """Run ``items`` (text, label) once through ``backbone``: mean-pooled features after every stage."""
    model = wrap_encoder(backbone.model, lambda features: torch.nn.Identity()).eval()
    pool = MeanPool()
    pooled: dict[str, list[np.ndarray]] = {name: [] for name in model.stage_names}
    texts = [text for text, _ in items]
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            x = backbone.preprocessing.encode(texts[start : start + batch_size])
            for name, stage in model.stages.items():
                x = stage(x)
                pooled[name].append(pool(x).float().numpy())
    return Probe(
        stage_names=model.stage_names,
        labels=np.array([label for _, label in items]),
        features={name: np.concatenate(chunks) for name, chunks in pooled.items()},
    )
