"""Which head for few-shot text? ``python bench/fewshot_head.py [--only movie,sms,trec] [--seeds 0,1,2]``.

For each dataset at 8 training + 4 validation texts a class (the draws of ``bench/text_compare.py``), one
``graft train --mode fewshot`` run, then several heads on the same contrastively tuned encoder, scored on the
test split: the run's own head, and L2 logistic regressions (scikit-learn's, C = 0.1, 1, 10; SetFit's head
is C=1) on the raw or L2-normalised features, and a nearest-centroid head (cosine), each fitted on the
training texts alone (``_tr``) or on training and validation texts (``_trva``). Results (test accuracy and
macro F1 of every head): bench/results/fewshot_head.json.

The rows committed were measured before graft's own head became the refit (``lr1.0_trva``); "own" there is
the loop's head (AdamW, best epoch on validation).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, str(Path(__file__).resolve().parent))
import graft  # noqa: E402
import text_compare  # noqa: E402
from graft.core.evaluation import collect_outputs  # noqa: E402
from graft.core.inputs import make_loader  # noqa: E402


def embeddings(run, texts: list[str]) -> np.ndarray:
    """The tuned encoder's pooled features of ``texts`` (the run's head set aside)."""
    model = run.model
    head, model.head = model.head, torch.nn.Identity()
    try:
        examples = run.modality.examples([(text, 0) for text in texts], run.preprocessing, augment=False)
        features, _ = collect_outputs(model, make_loader(examples, 32, 0))
    finally:
        model.head = head
    return np.asarray(features)


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def heads(train, valid, test, seed: int) -> dict[str, list[str]]:
    """Every head's test predictions, from (features, labels) of train and valid and test features."""
    predictions = {}
    for tag, (features, labels) in {
        "tr": train,
        "trva": (np.vstack([train[0], valid[0]]), list(train[1]) + list(valid[1])),
    }.items():
        for c in (0.1, 1.0, 10.0):
            raw = LogisticRegression(max_iter=5000, C=c, random_state=seed).fit(features, labels)
            predictions[f"lr{c}_{tag}"] = list(raw.predict(test))
            normalised = LogisticRegression(max_iter=5000, C=c, random_state=seed).fit(unit(features), labels)
            predictions[f"lrn{c}_{tag}"] = list(normalised.predict(unit(test)))
        classes = sorted(set(labels))
        centroids = np.stack([unit(features)[np.array(labels) == c].mean(0) for c in classes])
        predictions[f"cent_{tag}"] = list(np.array(classes)[np.argmax(unit(test) @ unit(centroids).T, axis=1)])
    return predictions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="movie,sms,trec")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "graft-text-bench")
    parser.add_argument("--out", type=Path, default=Path("bench/results/fewshot_head.json"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    text_compare.prepare(args.data, seed=0)
    rows = []
    for name in args.only.split(","):
        for seed in (int(seed) for seed in args.seeds.split(",")):
            folder = args.data / f"{name}-8-s{seed}"
            text_compare.subsample(args.data / name, folder, 8, seed)
            train_texts, train_labels = text_compare.read(folder / "train.csv")
            valid_texts, valid_labels = text_compare.read(folder / "valid.csv")
            test_texts, truth = text_compare.read(folder / "test.csv")
            with tempfile.TemporaryDirectory() as out:
                graft.train(folder, Path(out) / "run", mode="fewshot", seed=seed, quiet=True)
                own = [row["label"] for row in graft.predict(Path(out) / "run", test_texts)]
                run = graft.load(Path(out) / "run")
                train, valid, test = (embeddings(run, texts) for texts in (train_texts, valid_texts, test_texts))
            row = {"dataset": name, "seed": seed, "own": text_compare.scores(truth, own)}
            for head, predicted in heads((train, train_labels), (valid, valid_labels), test, seed).items():
                row[head] = text_compare.scores(truth, predicted)
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
