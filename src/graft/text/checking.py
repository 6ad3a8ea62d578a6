"""``graft check`` for text: what ``graft train`` would use, skip and warn about, naming files and lines.

Skipped (with the reason): records that are not UTF-8, empty texts, missing labels, malformed rows.
Warnings: the same text in two splits (exactly or after normalisation: leakage), one text under two
labels (noise), and texts longer than the encoder reads (how many tokens are cut). Errors: what would
stop training (fewer than two labels, a label too rare to split).
"""

from __future__ import annotations

import os
from typing import Any

from graft.core.dataset import summarise
from graft.text.data import scan_texts
from graft.text.encoders import DEFAULT_TEXT_BACKBONE, canonical, location
from graft.text.preprocessing import DEFAULT_MAX_LENGTH, TextPreprocessing


def check_report(
    data: str | os.PathLike,
    *,
    valid_fraction: float = 0.2,
    seed: int = 0,
    text_column: str | None = None,
    label_column: str | None = None,
    backbone: str | None = None,
) -> dict[str, Any]:
    """The ``graft check --json`` document for labelled texts (the token limit is ``backbone``'s tokenizer's)."""
    errors: list[str] = []
    dataset = scan_texts(
        data,
        valid_fraction=valid_fraction,
        seed=seed,
        text_column=text_column,
        label_column=label_column,
        errors=errors,
    )
    texts = [text for items in dataset.splits.values() for text, _ in items]
    name = canonical(backbone or DEFAULT_TEXT_BACKBONE)
    location(name)  # a clear error when the encoder is not installed
    preprocessing = TextPreprocessing(tokenizer=name, max_length=DEFAULT_MAX_LENGTH)
    counts = dict(zip(texts, preprocessing.token_counts(texts))) if texts else {}
    overlong = [
        {
            "file": dataset.where.get(text, "?"),
            "message": f"{count} tokens: the encoder reads the first {DEFAULT_MAX_LENGTH}",
        }
        for text, count in counts.items()
        if count > DEFAULT_MAX_LENGTH
    ]
    usable = len(texts)
    return {
        "data": str(data),
        "layout": dataset.layout,
        "classes": dataset.classes,
        "counts": {split: len(items) for split, items in dataset.splits.items()},
        "texts": usable + len(dataset.skipped),
        "usable": usable,
        "skipped": dataset.skipped,
        "skipped_by_reason": summarise(dataset.skipped),
        "warnings": dataset.warnings + overlong,
        "truncated": {"tokenizer": name, "max_tokens": DEFAULT_MAX_LENGTH, "texts": len(overlong)},
        "tokens": _quantiles(list(counts.values())),
        "errors": errors,
        "ok": not errors,
    }


def _quantiles(counts: list[int]) -> dict[str, int]:
    if not counts:
        return {}
    ordered = sorted(counts)
    return {f"p{q}": ordered[min(len(ordered) - 1, len(ordered) * q // 100)] for q in (50, 90, 99)} | {
        "max": ordered[-1]
    }
