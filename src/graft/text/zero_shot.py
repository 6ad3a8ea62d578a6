"""A sentence encoder used as it is, with no training: zero-shot classification of texts by how close
their embedding is to each class name's (``graft classify TEXT --classes a,b,c``), the text
counterpart of using the ImageNet classifier as it is.

Each class name is embedded inside a template ("This text is about {}."), texts and classes are
compared by cosine similarity, and a softmax at the temperature sentence encoders are trained with
turns similarities into probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from graft.errors import ConfigError
from graft.text.encoders import load_encoder
from graft.text.model import wrap_encoder

TEMPLATE = "This text is about {}."
# all-MiniLM-L6-v2 was trained with a contrastive loss scaled by 20 (sentence-transformers' default).
SCALE = 20.0


def embed(model, preprocessing, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
    """Unit-length mean-pooled embeddings of ``texts``."""
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            features = model.forward_features(preprocessing.encode(list(texts[start : start + batch_size])))
            chunks.append(torch.nn.functional.normalize(features, dim=1))
    return torch.cat(chunks)


def classify_texts(
    texts: Sequence[str], classes: Sequence[str], backbone: str, top: int = 5, template: str = TEMPLATE
) -> list[dict[str, Any]]:
    """The ``top`` classes with probabilities for each text."""
    names = [name.strip() for name in classes if name.strip()]
    if len(names) < 2 or len(set(names)) != len(names):
        raise ConfigError(f"--classes needs at least two distinct class names, comma-separated; got {list(classes)}")
    loaded = load_encoder(backbone)
    model = wrap_encoder(loaded.model, lambda features: torch.nn.Identity()).eval()
    probabilities = torch.softmax(
        SCALE
        * embed(model, loaded.preprocessing, texts)
        @ embed(model, loaded.preprocessing, [template.format(n) for n in names]).T,
        dim=1,
    )
    results = []
    for text, row in zip(texts, probabilities):
        values, indices = row.topk(min(top, len(names)))
        results.append(
            {
                "text": text,
                "top": [{"label": names[int(i)], "index": int(i), "prob": float(v)} for v, i in zip(values, indices)],
            }
        )
    return results
