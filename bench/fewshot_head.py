"""Is graft's few-shot text result limited by its head? ``python bench/fewshot_head.py [--only movie,sms,trec]``.

For each dataset at 8 texts a class and seeds 0-2 (the draws of ``bench/text_compare.py``), one
``graft train --mode fewshot`` run, then two heads on the same contrastively tuned encoder: the run's own
(trained by graft's loop) and a converged L2 logistic regression (scikit-learn's ``LogisticRegression``,
C=1, as SetFit fits its head) on the embeddings of the same 8-a-class training texts. Test accuracy and
macro F1 of both; results: bench/results/fewshot_head.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, str(Path(__file__).resolve().parent))
import graft  # noqa: E402
import text_compare  # noqa: E402
from graft.core.evaluation import collect_outputs  # noqa: E402
from graft.core.inputs import make_loader  # noqa: E402


def embeddings(run, texts: list[str]):
    """The tuned encoder's pooled features of ``texts`` (the run's head set aside)."""
    model = run.model
    head, model.head = model.head, torch.nn.Identity()
    try:
        examples = run.modality.examples([(text, 0) for text in texts], run.preprocessing, augment=False)
        features, _ = collect_outputs(model, make_loader(examples, 32, 0))
    finally:
        model.head = head
    return features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="movie,sms,trec")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "graft-text-bench")
    parser.add_argument("--out", type=Path, default=Path("bench/results/fewshot_head.json"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    text_compare.prepare(args.data, seed=0)
    rows = []
    for name in args.only.split(","):
        for seed in (0, 1, 2):
            folder = args.data / f"{name}-8"
            text_compare.subsample(args.data / name, folder, 8, seed)
            train_texts, train_labels = text_compare.read(folder / "train.csv")
            test_texts, truth = text_compare.read(folder / "test.csv")
            with tempfile.TemporaryDirectory() as out:
                graft.train(folder, Path(out) / "run", mode="fewshot", seed=seed, quiet=True)
                own = [row["label"] for row in graft.predict(Path(out) / "run", test_texts)]
                run = graft.load(Path(out) / "run")
                classifier = LogisticRegression(max_iter=5000, random_state=seed)
                classifier.fit(embeddings(run, train_texts), train_labels)
                converged = list(classifier.predict(embeddings(run, test_texts)))
            row = {
                "dataset": name,
                "seed": seed,
                "graft_head": text_compare.scores(truth, own),
                "logistic_regression_head": text_compare.scores(truth, converged),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
